//! Crash trials of the store on a block device: the `kv-writer` example
//! is killed with SIGKILL at a random moment, then the disk image is
//! opened on the host and must hold every change the writer acknowledged
//! on its console, with no torn value: exactly the first M changes of the
//! writer's run, for some M no smaller than the number acknowledged. (An
//! acknowledgement can reach the host after its change, or not at all:
//! on hvt the guest collects console output until it yields.) The trials
//! follow one another on one image, so each also opens what the crashes
//! before it left.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kv_writer::{Change, change, value};
use mirage_devices::kv::{Key, Kind, KvRo};
use mirage_kv::BlockStore;
use mirage_unix::{FileBlock, WallClock};

use crate::{Background, tender};

/// What a run of trials found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Trials run.
    pub trials: usize,
    /// Changes acknowledged, over all trials.
    pub acknowledged: u64,
    /// Changes found made beyond those acknowledged (acknowledgements not
    /// yet out, and the change in flight), over all trials.
    pub beyond: u64,
    /// Trials killed before the writer had acknowledged anything.
    pub before_any: usize,
    /// Openings that reported a repair (a torn newest generation).
    pub repairs: usize,
    /// The longest time to open the image after a kill.
    pub max_open: Duration,
    /// The median time to open the image after a kill.
    pub median_open: Duration,
    /// Seconds the trials took.
    pub seconds: f64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} trials, {} acknowledged changes, all found, no torn value; {} more changes found made than \
             acknowledged; {} killed before the first acknowledgement; {} openings repaired a torn generation; \
             longest open {:.1} ms; {:.0} s",
            self.trials,
            self.acknowledged,
            self.beyond,
            self.before_any,
            self.repairs,
            self.max_open.as_secs_f64() * 1e3,
            self.seconds
        )
    }
}

/// Runs a future of the store on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    mirage_runtime::run(&mut mirage_unix::UnixPlatform::new(), f)
}

type Contents = BTreeMap<String, Vec<u8>>;

/// Every value of the store on `disk`, each read through `get` (which
/// checks its SHA-256: a torn value is an error); whether opening
/// repaired anything; how long opening took.
fn contents(disk: &Path) -> Result<(Contents, bool, Duration), String> {
    let t0 = Instant::now();
    let block = FileBlock::open(disk, 512, true).map_err(|e| format!("{}: {e}", disk.display()))?;
    let store = block_on(BlockStore::open(block, WallClock)).map_err(|e| format!("opening after a kill: {e}"))?;
    let opened = t0.elapsed();
    let mut out = BTreeMap::new();
    let mut pending = vec![Key::root()];
    while let Some(dir) = pending.pop() {
        for (k, kind) in block_on(store.list(&dir)).map_err(|e| format!("listing {dir}: {e}"))? {
            match kind {
                Kind::Dictionary => pending.push(k),
                Kind::Value => {
                    let v = block_on(store.get(&k)).map_err(|e| format!("{k} is torn or unreadable: {e}"))?;
                    out.insert(k.as_str().to_string(), v);
                }
            }
        }
    }
    Ok((out, store.recovery().is_some(), opened))
}

/// What the store should hold: each key's value as the seed and length
/// it is made from.
type Model = BTreeMap<String, (u64, usize)>;

fn apply(model: &mut Model, c: &Change) {
    match c {
        Change::Set { key, len, seed } => {
            model.insert(key.clone(), (*seed, *len));
        }
        Change::Remove { key } => {
            model.remove(key);
        }
    }
}

/// Whether the store holds exactly what `model` says.
fn holds(found: &Contents, model: &Model) -> bool {
    found.len() == model.len()
        && found.iter().zip(model).all(|((fk, fv), (mk, (_, len)))| fk == mk && fv.len() == *len)
        && found.iter().zip(model).all(|((_, fv), (_, (seed, len)))| *fv == value(*seed, *len))
}

/// A short description of how the store differs from `model`.
fn diff(found: &Contents, model: &Model) -> String {
    let mut d = Vec::new();
    for (k, (seed, len)) in model {
        match found.get(k) {
            None => d.push(format!("{k} missing")),
            Some(f) if *f != value(*seed, *len) => {
                d.push(format!("{k} holds {} bytes, not the {len} written", f.len()))
            }
            _ => {}
        }
    }
    for k in found.keys().filter(|k| !model.contains_key(*k)) {
        d.push(format!("{k} present, removed"));
    }
    d.join("; ")
}

/// The most changes a writer makes in one trial, far above what it can.
const MOST: u64 = 1_000_000;

/// Runs `trials` crash trials of `image` (the kv-writer built for
/// `target`) on the store `disk` (formatted) attached with `attach`
/// (`--block`, or `--block-dsync` on hvt and spt: the path of flushes),
/// each killed at a random moment up to `max_delay` after it starts.
/// `progress` sees each trial's line.
pub fn run(
    target: &str,
    image: &Path,
    disk: &Path,
    attach: &str,
    trials: usize,
    max_delay: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut out = Outcome::default();
    if !contents(disk)?.0.is_empty() {
        return Err(format!("{}: the trials start from an empty store", disk.display()));
    }
    let mut model = Model::new();
    let mut opens = Vec::with_capacity(trials);
    let mut rng = 0x5eed_u64 ^ trials as u64;
    for trial in 0..trials {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let seed = (trial as u64) << 32 | (rng >> 40);
        let delay = Duration::from_micros((rng >> 20) % (max_delay.as_micros() as u64).max(1));
        let block = format!("{attach}:data={}", disk.display());
        let mut cmd = if target == "unix" {
            let mut c = Command::new(image);
            c.arg(&block);
            c
        } else {
            let mut c = Command::new(tender(target));
            c.arg(&block).arg(image).arg("--solo5:quiet");
            c
        };
        cmd.arg(format!("--seed={seed}"));
        let mut bg = Background::start(cmd)?;
        std::thread::sleep(delay);
        if let Ok(Some(status)) = bg.child.try_wait() {
            return Err(format!("trial {trial}: the writer ended by itself ({status}):\n{}", bg.output()));
        }
        // SIGKILL: the writer gets no chance to finish anything.
        let _ = bg.child.kill();
        let _ = bg.child.wait();
        let log = bg.output();
        let acked = log.lines().filter(|l| l.starts_with("kv-writer: ack ")).count() as u64;
        for n in 0..acked {
            apply(&mut model, &change(seed, n));
        }
        let (found, repaired, opened) = contents(disk).map_err(|e| format!("trial {trial}: {e}"))?;
        // The first `made` changes, no fewer than were acknowledged.
        let mut made = acked;
        let at_acked = model.clone();
        while !holds(&found, &model) {
            if made == MOST {
                return Err(format!(
                    "trial {trial} (seed {seed}, {acked} acknowledged, killed after {delay:?}): the store holds no \
                     prefix of the changes that keeps the acknowledged ones; against the acknowledged: {}\n\
                     the writer's console:\n{}",
                    diff(&found, &at_acked),
                    log.chars().take(2000).collect::<String>()
                ));
            }
            apply(&mut model, &change(seed, made));
            made += 1;
        }
        if acked == 0 {
            out.before_any += 1;
        }
        out.trials += 1;
        out.acknowledged += acked;
        out.beyond += made - acked;
        out.repairs += usize::from(repaired);
        out.max_open = out.max_open.max(opened);
        opens.push(opened);
        progress(&format!(
            "trial {trial}: killed after {:.1} ms, {acked} acknowledged, all found; {made} made{}",
            delay.as_secs_f64() * 1e3,
            if repaired { "; opening repaired a torn generation" } else { "" }
        ));
    }
    out.seconds = start.elapsed().as_secs_f64();
    opens.sort();
    out.median_open = opens.get(opens.len() / 2).copied().unwrap_or_default();
    Ok(out)
}
