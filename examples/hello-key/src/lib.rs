//! hello-key: prints the greeting given as a boot argument (`--hello`)
//! four times, a second apart.
#![no_std]

use mirage_devices::console::Console;
use mirage_devices::time::{Duration, Sleep};

/// The unikernel.
pub async fn start(console: impl Console, time: impl Sleep, hello: &str) -> Result<(), mirage_devices::console::Error> {
    for _ in 0..4 {
        console.log(hello).await?;
        time.sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
