//! Consoles: where a unikernel's text output goes.

/// Why a console write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The console is gone (its reader closed it).
    Closed,
    /// The host failed to write.
    Io,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::Closed => "console closed",
            Error::Io => "console write failed",
        })
    }
}

/// A text console (`Mirage_console`).
pub trait Console {
    /// Writes `bytes`, all of them.
    async fn write(&self, bytes: &[u8]) -> Result<(), Error>;

    /// Writes a line: `text` and a newline.
    async fn log(&self, text: &str) -> Result<(), Error> {
        self.write(text.as_bytes()).await?;
        self.write(b"\n").await
    }
}

impl<C: Console> Console for &C {
    async fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        (**self).write(bytes).await
    }
}

impl<C: Console> Console for alloc::rc::Rc<C> {
    async fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        (**self).write(bytes).await
    }
}
