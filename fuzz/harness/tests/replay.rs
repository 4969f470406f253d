//! Replays the committed corpus and the regression inputs through each
//! target's checks, without a fuzzer, and checks that the corpus is what
//! the seed program makes.

use std::path::{Path, PathBuf};

use mirage_fuzz_harness::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/").to_path_buf()
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.expect("a directory entry").path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn corpus_is_what_the_seed_program_makes() {
    let corpus = fuzz_dir().join("corpus");
    let seeds = seeds::all();
    for (target, _) in TARGETS {
        let mut want: Vec<(String, &[u8])> =
            seeds.iter().filter(|s| s.0 == *target).map(|s| (s.1.to_string(), s.2.as_slice())).collect();
        want.sort();
        let have: Vec<(String, Vec<u8>)> = files(&corpus.join(target))
            .iter()
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap()))
            .collect();
        let have: Vec<(String, &[u8])> = have.iter().map(|(n, b)| (n.clone(), b.as_slice())).collect();
        assert!(!want.is_empty(), "{target} has no seeds");
        assert!(have == want, "fuzz/corpus/{target} differs from the seeds: run `fuzz/run seeds`");
    }
}

#[test]
fn corpus_and_regressions_pass_every_check() {
    let mut n = 0;
    for (target, run) in TARGETS {
        for dir in ["corpus", "regressions"] {
            for input in files(&fuzz_dir().join(dir).join(target)) {
                let bytes = std::fs::read(&input).unwrap();
                if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                    panic!("{} fails the {target} checks", input.display());
                }
                n += 1;
            }
        }
    }
    println!("{n} inputs replayed");
}
