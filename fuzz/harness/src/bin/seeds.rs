//! Writes the seed corpus: `seeds DIR` replaces the files of
//! `DIR/TARGET/` with what `harness::seeds::all` makes.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: seeds CORPUS_DIR"));
    let seeds = mirage_fuzz_harness::seeds::all();
    for (target, _) in mirage_fuzz_harness::TARGETS {
        let d = dir.join(target);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
    }
    for (target, name, bytes) in &seeds {
        std::fs::write(dir.join(target).join(name), bytes)?;
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
    Ok(())
}
