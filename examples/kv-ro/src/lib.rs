//! kv-ro: reads files from a read-only key-value store (a directory
//! compiled into the image) and prints them, with the store's listing.
#![no_std]

extern crate alloc;

use alloc::format;

use mirage_devices::console::Console;
use mirage_devices::kv::{Key, Kind, KvRo};

/// Why the example failed.
#[derive(Debug)]
pub enum Failure {
    /// A store operation failed.
    Kv(mirage_devices::kv::Error),
    /// The console failed.
    Console(mirage_devices::console::Error),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Kv(e) => write!(f, "key-value store: {e}"),
            Failure::Console(e) => write!(f, "console: {e}"),
        }
    }
}

/// The unikernel.
pub async fn start(console: impl Console, kv: impl KvRo) -> Result<(), Failure> {
    let key = |s: &str| Key::parse(s).map_err(Failure::Kv);
    let secret = kv.get(&key("secret")?).await.map_err(Failure::Kv)?;
    let text = core::str::from_utf8(&secret).unwrap_or("<not UTF-8>");
    console.log(&format!("secret: {}", text.trim_end())).await.map_err(Failure::Console)?;
    for (k, kind) in kv.list(&Key::root()).await.map_err(Failure::Kv)? {
        let line = match kind {
            Kind::Value => format!(
                "{k}: {} bytes, sha256 {}",
                kv.size(&k).await.map_err(Failure::Kv)?,
                kv.digest(&k).await.map_err(Failure::Kv)?
            ),
            Kind::Dictionary => format!("{k}/"),
        };
        console.log(&line).await.map_err(Failure::Console)?;
    }
    let mut head = [0u8; 5];
    let n = kv.get_partial(&key("sub/hello.txt")?, 0, &mut head).await.map_err(Failure::Kv)?;
    console
        .log(&format!("sub/hello.txt begins with {:?}", core::str::from_utf8(&head[..n]).unwrap_or("?")))
        .await
        .map_err(Failure::Console)
}
