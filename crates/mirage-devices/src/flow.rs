//! Flows (`Mirage_flow`): ordered, reliable byte streams, such as a TCP
//! connection.

use core::fmt;

/// Why a flow operation failed. The end of the stream is not an error: a
/// read returns 0 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The peer reset the connection.
    Reset,
    /// The peer stopped answering in time.
    TimedOut,
    /// This side has shut down writing, or closed the flow.
    Closed,
    /// The host or the stack failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Reset => "connection reset by peer",
            Error::TimedOut => "connection timed out",
            Error::Closed => "flow closed for writing",
            Error::Io => "flow I/O failed",
        })
    }
}

/// A count a flow keeps current of the bytes it buffers on its peer's
/// behalf beyond what the stack holds ([`Flow::meter`]).
pub type Meter = alloc::rc::Rc<core::cell::Cell<usize>>;

/// A bidirectional byte stream.
pub trait Flow {
    /// Reads into `buf`; the number of bytes read, 0 at the end of the
    /// stream (the peer shut down its side).
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error>;

    /// Writes some of `data`; the number of bytes taken (at least 1 for
    /// non-empty `data`).
    async fn write(&mut self, data: &[u8]) -> Result<usize, Error>;

    /// Writes all of `data`.
    async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads until `buf` is full; [`Error::Reset`] if the stream ends first.
    async fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.read(buf).await?;
            if n == 0 {
                return Err(Error::Reset);
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// From now on keeps `meter` at the bytes this flow holds in buffers
    /// of its own on its peer's behalf (a TLS connection's records read
    /// and not yet decrypted, or encrypted and not yet sent), even while a
    /// read or write waits: a server that accounts for what each
    /// connection holds, and sheds the largest when memory runs short,
    /// then counts them too. A flow that keeps no buffers of its own
    /// leaves it at 0.
    fn meter(&mut self, meter: Meter) {
        let _ = meter;
    }

    /// Sends what is buffered.
    async fn flush(&mut self) -> Result<(), Error>;

    /// Shuts down writing: the peer reads the end of the stream; reading
    /// goes on.
    async fn shutdown(&mut self) -> Result<(), Error>;

    /// Closes both directions and releases the flow.
    async fn close(self) -> Result<(), Error>
    where
        Self: Sized;

    /// Ends the flow at once, dropping what is not yet sent: the peer sees
    /// a reset where the flow has one (TCP's RST). For a flow whose data
    /// can no longer be delivered whole (a response cut short), so that
    /// nothing is held for a peer that may never read it. By default, a
    /// [`Flow::close`].
    async fn abort(self)
    where
        Self: Sized,
    {
        let _ = self.close().await;
    }
}
