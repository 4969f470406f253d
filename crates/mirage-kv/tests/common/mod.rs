//! What the tests over real files share.

use std::path::PathBuf;

use mirage_unix::UnixPlatform;

/// Runs a future of a store on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    mirage_runtime::run(&mut UnixPlatform::new(), f)
}

/// A scratch directory, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `mirage-kv-TAG-PID` in the temporary directory, empty.
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("mirage-kv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
