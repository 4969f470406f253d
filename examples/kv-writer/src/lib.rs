//! kv-writer: changes a read-write store without end and reports each
//! acknowledged change on the console, for the crash tests. The changes
//! are a function of the seed and their number ([`change`]), so that the
//! test knows, from the acknowledgements alone, what the store must hold.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mirage_devices::console::Console;
use mirage_devices::kv::{self, Key, KvRw};
use mirage_devices::time::{Duration, Sleep};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Stores [`value`]`(seed, len)` at `key` (a new value or an
    /// overwrite).
    Set {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
        /// What the value's bytes are drawn from.
        seed: u64,
    },
    /// Removes `key` (nothing if it is absent).
    Remove {
        /// The key.
        key: String,
    },
}

/// SplitMix64: a good 64-bit mix of its input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Change `n` of the run of `seed`: a quarter removals, the rest values
/// of 0 bytes (a tenth), up to 128 bytes (kept in the index), up to 64 KiB,
/// or up to 1 MiB (a tenth), on 24 keys in two dictionaries.
pub fn change(seed: u64, n: u64) -> Change {
    let r = mix(mix(seed) ^ n);
    let slot = r % 24;
    let key = if slot < 16 { format!("/k{slot}") } else { format!("/d/k{slot}") };
    if (r >> 8).is_multiple_of(4) {
        return Change::Remove { key };
    }
    let size = r >> 16;
    let len = match (r >> 12) % 10 {
        0 => 0,
        1..=4 => (size % 129) as usize,
        5..=8 => (size % (64 << 10)) as usize,
        _ => (size % (1 << 20)) as usize,
    };
    Change::Set { key, len, seed: r }
}

/// The bytes of a value: a torn or misplaced one does not match.
pub fn value(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed;
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Applies `c` to `store`.
pub async fn apply(store: &impl KvRw, c: &Change) -> Result<(), kv::Error> {
    match c {
        Change::Set { key, len, seed } => store.set(&Key::parse(key)?, &value(*seed, *len)).await,
        Change::Remove { key } => match store.remove(&Key::parse(key)?).await {
            Ok(()) | Err(kv::Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// How often a writer without pauses lets its console output go out.
const SHOW_EVERY: Duration = Duration::from_millis(20);

/// The unikernel: makes the changes of `seed` one after another (each a
/// set of `len` bytes if `len` is not 0), each acknowledged on the console
/// once done, until it is killed or a change fails. With `reads`, it reads
/// instead (see `read_forever`).
pub async fn start(
    console: impl Console,
    data: impl KvRw,
    time: impl Sleep,
    seed: u64,
    len: u64,
    pause_us: u32,
    reads: u32,
) -> Result<(), kv::Error> {
    if reads > 0 {
        return read_forever(&console, &data, seed, if len == 0 { 100 } else { len as usize }, reads).await;
    }
    let _ = console.log("kv-writer: ready").await;
    let mut shown = time.now();
    for n in 0.. {
        let c = match change(seed, n) {
            Change::Set { key, .. } | Change::Remove { key } if len > 0 => {
                Change::Set { key, len: len as usize, seed: mix(seed ^ n) }
            }
            c => c,
        };
        apply(&data, &c).await?;
        let _ = console.log(&format!("kv-writer: ack {n}")).await;
        if pause_us > 0 {
            // Waiting lets the platform run (a deadline already past when
            // the executor looks would not): on hvt that sends the console
            // output collected in the guest to the host, so that the
            // acknowledgement is out before the next change begins.
            time.sleep(Duration::from_micros(pause_us.into())).await;
        } else if time.now().saturating_duration_since(shown) >= SHOW_EVERY {
            // Without pauses, hvt's console would send the acknowledgements
            // only when its 8 KiB buffer fills: a benchmark counting them
            // when it kills the writer would miss up to 400, a quarter of a
            // 5-second run of 1 MiB values. One short wait every 20 ms (one
            // exit) sends them.
            time.sleep(Duration::from_micros(1)).await;
            shown = time.now();
        }
    }
    Ok(())
}

/// The benchmark of reads: stores a `len`-byte value at each of the 24
/// keys, then reads them in turn without end, checking each one's length
/// and printing `kv-writer: read N` after every `every` reads.
async fn read_forever(
    console: &impl Console,
    store: &impl KvRw,
    seed: u64,
    len: usize,
    every: u32,
) -> Result<(), kv::Error> {
    let keys: Vec<Key> = (0..24).map(|i| Key::parse(&format!("/k{i}"))).collect::<Result<_, _>>()?;
    for (i, k) in keys.iter().enumerate() {
        store.set(k, &value(mix(seed ^ i as u64), len)).await?;
    }
    let _ = console.log("kv-writer: ready").await;
    let mut n: u64 = 0;
    loop {
        for k in &keys {
            if store.get(k).await?.len() != len {
                let _ = console.log(&format!("kv-writer: {k} has the wrong length")).await;
                return Err(kv::Error::Io);
            }
            n += 1;
            if n.is_multiple_of(every.into()) {
                let _ = console.log(&format!("kv-writer: read {n}")).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_a_function_of_seed_and_number() {
        assert_eq!(change(3, 7), change(3, 7));
        assert_ne!(change(3, 7), change(4, 7));
        let sets = (0..1000).filter(|n| matches!(change(1, *n), Change::Set { .. })).count();
        assert!((650..850).contains(&sets), "{sets}");
        assert_eq!(value(9, 13), value(9, 13));
        assert_eq!(value(9, 13).len(), 13);
        assert_ne!(value(9, 13), value(10, 13));
    }
}
