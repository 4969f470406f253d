//! [`TlsFlow`]: a TLS connection over any [`Flow`], itself a [`Flow`].
//!
//! rustls' `no_std` API is its unbuffered state machine: it is handed the
//! bytes read so far and answers what it needs (more input, records to
//! send, plaintext to take). This module drives it over an async flow.
//!
//! Memory is bounded by the peer's framing, never by its will: the input
//! buffer grows only to hold one record or one handshake message (at most
//! [`MAX_INCOMING`]), the plaintext buffer at most the payloads of the
//! records the input holds, a write is cut to one record's worth (its encoded record keeps
//! its room while writes follow each other), and the buffers shrink back
//! when a connection waits for its peer. Every growth is a fallible
//! allocation, and the input, the plaintext and the encoded records grow
//! only within the memory budget of `mirage_runtime::memory` (beyond it,
//! [`Error::OutOfMemory`]). The handshake runs on the first read or write (or an
//! explicit [`TlsFlow::handshake`]), inside whatever timeout the caller
//! puts around that read: a half-open handshake costs the caller's
//! deadline, never a task of its own.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::DerefMut;

use mirage_devices::flow::{self, Flow};
use pki_types::ServerName;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, ServerConfig};

/// The largest input held at once: a handshake message of the largest size
/// rustls accepts (64 KiB) plus one more record (2^14 + 2048 + header).
pub const MAX_INCOMING: usize = 0xffff + 4 + 18_437;

/// How long [`TlsFlow::close_tls`] waits for the peer to take what is
/// pending and the close_notify alert.
pub const CLOSE_NOTIFY_WAIT: mirage_runtime::time::Duration = mirage_runtime::time::Duration::from_secs(5);

/// A connection's input buffer when idle, and its first size.
const IDLE_INCOMING: usize = 2048;

/// The most plaintext one write encrypts: one full record.
const MAX_WRITE: usize = 16 * 1024;

/// Why a TLS connection failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The TLS protocol failed: a certificate refused, a handshake the
    /// peer got wrong, a record that does not decrypt, an alert received.
    Tls(rustls::Error),
    /// The flow underneath failed.
    Flow(flow::Error),
    /// The peer closed the flow before the handshake completed.
    Eof,
    /// The peer sent a handshake message larger than [`MAX_INCOMING`].
    TooLarge,
    /// No memory for the connection's buffers.
    OutOfMemory,
    /// The TCP connection could not be made.
    Connect(mirage_devices::stack::Error),
    /// The server name is neither a DNS name nor an IP address.
    Name(alloc::string::String),
    /// The server did not complete the handshake in this long
    /// ([`crate::Client::handshake_wait`]).
    HandshakeTimeout(mirage_runtime::time::Duration),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Tls(rustls::Error::InvalidCertificate(e)) => {
                f.write_str("TLS: the peer's certificate is refused: ")?;
                certificate_error(f, e)
            }
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Flow(e) => write!(f, "TLS: {e}"),
            Error::Eof => f.write_str("TLS: the peer closed the connection during the handshake"),
            Error::TooLarge => write!(f, "TLS: the peer sent a message larger than {MAX_INCOMING} bytes"),
            Error::OutOfMemory => f.write_str("TLS: out of memory for the connection's buffers"),
            Error::Connect(e) => write!(f, "TLS: cannot connect: {e}"),
            Error::Name(n) => write!(f, "TLS: {n:?} is neither a DNS name nor an IP address"),
            Error::HandshakeTimeout(d) => write!(
                f,
                "TLS: the server did not complete the handshake within {} ms (Client::handshake_wait sets how long)",
                d.as_millis()
            ),
        }
    }
}

/// Why a certificate was refused, in words an operator can act on.
fn certificate_error(f: &mut fmt::Formatter<'_>, e: &rustls::CertificateError) -> fmt::Result {
    use rustls::CertificateError as C;
    match e {
        C::Expired => f.write_str("it has expired"),
        C::ExpiredContext { time, not_after } => write!(
            f,
            "it has expired: valid until {} s after the epoch, and the clock says {}",
            not_after.as_secs(),
            time.as_secs()
        ),
        C::NotValidYet => f.write_str("it is not valid yet (is the clock right?)"),
        C::NotValidYetContext { time, not_before } => write!(
            f,
            "it is not valid yet: valid from {} s after the epoch, and the clock says {} (is the clock right?)",
            not_before.as_secs(),
            time.as_secs()
        ),
        C::UnknownIssuer => f.write_str("it is not signed by a trusted CA (unknown issuer)"),
        C::BadSignature => f.write_str("a signature in its chain does not verify"),
        C::NotValidForName => f.write_str("it is not valid for the name asked for"),
        C::NotValidForNameContext { expected, presented } => {
            write!(f, "it is not valid for the name {expected:?}; it names {}", presented.join(", "))
        }
        C::Revoked => f.write_str("it has been revoked"),
        other => write!(f, "{other:?}"),
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Error {
        Error::Tls(e)
    }
}

impl From<flow::Error> for Error {
    fn from(e: flow::Error) -> Error {
        Error::Flow(e)
    }
}

impl From<Error> for flow::Error {
    fn from(e: Error) -> flow::Error {
        match e {
            Error::Flow(e) => e,
            Error::Eof => flow::Error::Reset,
            _ => flow::Error::Io,
        }
    }
}

/// A side of a connection: rustls' server or client state machine.
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    /// rustls' per-side data.
    type Data;
    /// Processes `incoming` until the state machine has something to say.
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        (**self).process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        (**self).process_tls_records(incoming)
    }
}

/// What the caller wants of the state machine.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// Plaintext, or to learn that the handshake is done.
    Read,
    /// To encrypt this.
    Write(&'a [u8]),
    /// To send close_notify.
    Close,
}

/// What the state machine answered.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// Plaintext arrived (in `plain`).
    Plaintext,
    /// It needs more bytes from the peer.
    NeedInput,
    /// The handshake is done and nothing is to be read from what is held.
    Ready,
    /// The `Write` or `Close` was encrypted into `outgoing`.
    Done,
    /// Both sides have closed.
    Closed,
}

/// A TLS connection over the flow `F`, on the side `S` (server or client).
pub struct TlsFlow<F, S> {
    flow: F,
    conn: S,
    /// Bytes read from the peer, `filled` of them valid.
    incoming: Vec<u8>,
    filled: usize,
    /// Records encoded, not yet written to the flow.
    outgoing: Outgoing,
    /// Decrypted bytes not yet read, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    peer_closed: bool,
    /// The first failure; every later operation answers it.
    failed: Option<Error>,
    /// A write of records to the flow is under way: still set when one
    /// was cancelled part-way (a timeout around it), after which the
    /// record stream is cut and nothing more may follow it.
    sending: bool,
    /// Kept at [`TlsFlow::buffered_capacity`] where the owner asked
    /// ([`Flow::meter`]).
    meter: Option<flow::Meter>,
}

/// A server-side TLS connection.
pub type TlsServer<F> = TlsFlow<F, UnbufferedServerConnection>;
/// A client-side TLS connection.
pub type TlsClient<F> = TlsFlow<F, UnbufferedClientConnection>;

impl<F, S> fmt::Debug for TlsFlow<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFlow")
            .field("filled", &self.filled)
            .field("outgoing", &self.outgoing.len)
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("peer_closed", &self.peer_closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<F: Flow> TlsServer<F> {
    /// The server side of a connection accepted on `flow`. Nothing is sent
    /// or read yet: the handshake runs on the first read or write.
    pub fn server(flow: F, config: Arc<ServerConfig>) -> Result<Self, Error> {
        Ok(TlsFlow::new(flow, UnbufferedServerConnection::new(config)?))
    }
}

impl<F: Flow> TlsClient<F> {
    /// The client side of a connection to `name` over `flow`; the server's
    /// certificate must be valid for `name`.
    pub fn client(flow: F, config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, Error> {
        Ok(TlsFlow::new(flow, UnbufferedClientConnection::new(config, name)?))
    }
}

impl<F: Flow, S: Side> TlsFlow<F, S> {
    fn new(flow: F, conn: S) -> Self {
        TlsFlow {
            flow,
            conn,
            incoming: Vec::new(),
            filled: 0,
            outgoing: Outgoing::default(),
            plain: Vec::new(),
            plain_at: 0,
            peer_closed: false,
            failed: None,
            sending: false,
            meter: None,
        }
    }

    /// Runs the handshake to its end (a no-op once done).
    pub async fn handshake(&mut self) -> Result<(), Error> {
        while self.conn.is_handshaking() {
            let got = self.step(Want::Read);
            self.note();
            let got = match got {
                Ok(g) => g,
                Err(e) => return Err(self.failed(e).await),
            };
            match got {
                Got::Plaintext | Got::Done => {}
                Got::NeedInput | Got::Ready => {
                    self.send().await?;
                    if self.conn.is_handshaking() {
                        self.fill().await?;
                    }
                }
                Got::Closed => return Err(Error::Eof),
            }
        }
        self.send().await
    }

    /// The protocol agreed by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The protocol version, once agreed.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The cipher suite, once agreed.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        self.conn.negotiated_cipher_suite().map(|s| s.suite())
    }

    /// Whether the handshake was full or resumed a session.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// The peer's certificate chain, end entity first.
    pub fn peer_certificates(&self) -> Option<&[pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The flow underneath.
    pub fn get_ref(&self) -> &F {
        &self.flow
    }

    /// The flow underneath, without the TLS state (nothing is sent: no
    /// close_notify).
    pub fn into_flow(self) -> F {
        self.flow
    }

    /// The first failure of this connection, if any.
    pub fn error(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    /// Bytes this connection holds in its own buffers now (not counting
    /// rustls' state or the flow's).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.buf.capacity() + self.plain.capacity()
    }

    /// Brings the meter up to date, after the buffers grew or shrank.
    fn note(&self) {
        if let Some(m) = &self.meter {
            m.set(self.buffered_capacity());
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Drives the state machine until it answers `want`, or needs input.
    fn step(&mut self, want: Want<'_>) -> Result<Got, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process(&mut self.incoming[..self.filled]);
            let got = match state {
                Err(e) => {
                    self.discard(discard);
                    self.encode_alert();
                    return Err(self.fail(Error::Tls(e)));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(Some(Got::Plaintext));
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(r) => {
                                // Within the budget, as the input is: the
                                // records of a full input buffer decrypt
                                // into up to 32 KiB.
                                let grows = r.payload.len().saturating_sub(self.plain.capacity() - self.plain.len());
                                if (grows > 0 && !mirage_runtime::memory::may_hold(grows))
                                    || self.plain.try_reserve(r.payload.len()).is_err()
                                {
                                    result = Err(Error::OutOfMemory);
                                    break;
                                }
                                self.plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                result = Err(Error::Tls(e));
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // Early data (0-RTT, replayable) is never enabled: the
                    // configs keep max_early_data_size at 0.
                    Err(Error::Tls(rustls::Error::General("unexpected early data".into())))
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    self.outgoing.encode(|buf| encode.encode(buf).map_err(EncodeOrEncrypt::Encode)).map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The records are in `outgoing`; they are written before
                    // the next read from the peer.
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Got::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match want {
                    Want::Read => Ok(Some(Got::Ready)),
                    Want::Write(data) => self
                        .outgoing
                        .encode(|buf| traffic.encrypt(data, buf).map_err(EncodeOrEncrypt::Encrypt))
                        .map(|()| Some(Got::Done)),
                    Want::Close => self
                        .outgoing
                        .encode(|buf| traffic.queue_close_notify(buf).map_err(EncodeOrEncrypt::Encrypt))
                        .map(|()| Some(Got::Done)),
                },
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Got::Closed))
                }
                Ok(_) => Err(Error::Tls(rustls::Error::General("unexpected TLS connection state".into()))),
            };
            self.discard(discard);
            match got {
                Ok(Some(g)) => return Ok(g),
                Ok(None) => {}
                Err(e) => {
                    self.encode_alert();
                    return Err(self.fail(e));
                }
            }
        }
    }

    /// Encrypts close_notify into `outgoing`; false if it could not be
    /// (the connection is closed already, or still in its handshake).
    /// Records the peer sent before it are decrypted first, into `plain`,
    /// as rustls hands them out before it takes the close: one each time
    /// round, as many as the input holds.
    fn queue_close(&mut self) -> Result<bool, Error> {
        // Each record takes bytes of the input: no more rounds than bytes.
        for _ in 0..=self.filled {
            match self.step(Want::Close)? {
                Got::Plaintext => {}
                Got::Done => return Ok(true),
                Got::NeedInput | Got::Ready | Got::Closed => return Ok(false),
            }
        }
        Ok(false)
    }

    /// After a failure, encodes the alert rustls queued for the peer, so
    /// that it learns why (an unknown CA, a bad record) before the close.
    fn encode_alert(&mut self) {
        // One call: rustls hands out what it queued before it looks at
        // the input again (looking again would fail again, and send a
        // second alert).
        let UnbufferedStatus { discard, state } = self.conn.process(&mut self.incoming[..self.filled]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = self.outgoing.encode(|buf| encode.encode(buf).map_err(EncodeOrEncrypt::Encode));
        }
        self.discard(discard);
    }

    /// Sends what is encoded (the alert that says why, if any) and
    /// returns the failure.
    async fn failed(&mut self, e: Error) -> Error {
        if self.outgoing.len > 0 {
            let _ = self.flow.write_all(self.outgoing.pending()).await;
            let _ = self.flow.flush().await;
            self.outgoing = Outgoing::default();
        }
        e
    }

    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.incoming.copy_within(n..self.filled, 0);
        self.filled -= n;
        if self.filled == 0 && self.incoming.len() > IDLE_INCOMING {
            // Idle again: give back what a large record took.
            self.incoming = Vec::new();
            self.note();
        }
    }

    /// Writes what is encoded to the flow.
    async fn send(&mut self) -> Result<(), Error> {
        if self.sending {
            // The last write was cancelled with part of a record sent:
            // the peer would take what follows as that record's rest.
            return Err(self.fail(Error::Flow(flow::Error::Io)));
        }
        if self.outgoing.len == 0 {
            return Ok(());
        }
        self.sending = true;
        let r = self.flow.write_all(self.outgoing.pending()).await;
        self.sending = false;
        // The room stays for the next record (a bulk write encrypts into
        // it again at once); it is given back when the connection waits
        // for its peer (`fill`).
        self.outgoing.len = 0;
        r.map_err(|e| self.fail(Error::Flow(e)))
    }

    /// Reads more bytes from the peer; `Eof` if it has closed.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.outgoing.len == 0 && self.outgoing.buf.len() > IDLE_INCOMING {
            // Waiting for the peer: give back a large record's room.
            self.outgoing = Outgoing::default();
        }
        if self.filled == self.incoming.len() {
            let len = self.incoming.len();
            if len >= MAX_INCOMING {
                self.encode_alert();
                let _ = self.send().await;
                return Err(self.fail(Error::TooLarge));
            }
            let to = (len * 2).clamp(IDLE_INCOMING, MAX_INCOMING);
            // Input grows on the peer's behalf: within the unikernel's
            // memory budget (which the TCP stack and the HTTP server keep
            // too), so that many peers sending large handshake messages
            // are refused before the heap runs out.
            if !mirage_runtime::memory::may_hold(to - len) || self.incoming.try_reserve_exact(to - len).is_err() {
                return Err(self.fail(Error::OutOfMemory));
            }
            self.incoming.resize(to, 0);
        }
        // Before the wait: a peer that sends part of a large record and
        // holds it is seen holding the room it took.
        self.note();
        match self.flow.read(&mut self.incoming[self.filled..]).await {
            Ok(0) => Err(self.fail(Error::Eof)),
            Ok(n) => {
                self.filled += n;
                Ok(())
            }
            Err(e) => Err(self.fail(Error::Flow(e))),
        }
    }

    /// Sends what is pending, then ends the connection: close_notify, then
    /// the flow's own close. A peer that does not take them within
    /// [`CLOSE_NOTIFY_WAIT`] (it stopped reading, its window shut) gets
    /// the flow's close without them: closing never waits on the peer.
    pub async fn close_tls(mut self) -> Result<(), Error> {
        if self.failed.is_none() && !self.conn.is_handshaking() && self.queue_close().is_ok_and(|q| q) {
            let _ = mirage_runtime::time::timeout(CLOSE_NOTIFY_WAIT, self.send()).await;
        }
        self.flow.close().await.map_err(Error::Flow)
    }
}

enum EncodeOrEncrypt {
    Encode(EncodeError),
    Encrypt(EncryptError),
}

/// Encoded records waiting to be written: `buf[..len]`. The rest of `buf`
/// is room, zeroed once when it grew, so that encoding a record does not
/// clear its room again.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    len: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Runs `encode` on the room after what is pending, growing the room as
    /// rustls asks.
    fn encode(&mut self, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeOrEncrypt>) -> Result<(), Error> {
        let mut room = 1024;
        loop {
            let need = self.len + room;
            if self.buf.len() < need {
                // Within the budget: a record waits here while the peer
                // does not read.
                let grows = need - self.buf.len();
                if !mirage_runtime::memory::may_hold(grows) || self.buf.try_reserve_exact(grows).is_err() {
                    return Err(Error::OutOfMemory);
                }
                self.buf.resize(need, 0);
            }
            match encode(&mut self.buf[self.len..]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(
                    EncodeOrEncrypt::Encode(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                    | EncodeOrEncrypt::Encrypt(EncryptError::InsufficientSize(InsufficientSizeError { required_size })),
                ) if required_size > self.buf.len() - self.len => room = required_size,
                Err(EncodeOrEncrypt::Encrypt(EncryptError::EncryptExhausted)) => {
                    return Err(Error::Tls(rustls::Error::EncryptError));
                }
                Err(_) => return Err(Error::Tls(rustls::Error::General("TLS record encoding failed".into()))),
            }
        }
    }
}

impl<F: Flow, S: Side> Flow for TlsFlow<F, S> {
    fn meter(&mut self, meter: flow::Meter) {
        meter.set(self.buffered_capacity());
        self.meter = Some(meter);
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_at);
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain.clear();
                    self.plain_at = 0;
                    if self.plain.capacity() > IDLE_INCOMING {
                        self.plain = Vec::new();
                        self.note();
                    }
                }
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            let got = self.step(Want::Read);
            self.note();
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    let e = self.failed(e).await;
                    return Err(self.report(e));
                }
            };
            match got {
                Got::Plaintext | Got::Done => {}
                Got::Closed => return Ok(0),
                Got::Ready if self.peer_closed => return Ok(0),
                Got::NeedInput | Got::Ready => {
                    self.send().await.map_err(|e| self.report(e))?;
                    self.fill().await.map_err(|e| self.report(e))?;
                }
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        if data.is_empty() {
            return Ok(0);
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        loop {
            let got = self.step(Want::Write(data));
            self.note();
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    let e = self.failed(e).await;
                    return Err(self.report(e));
                }
            };
            match got {
                Got::Done => break,
                Got::Closed => return Err(flow::Error::Closed),
                Got::Plaintext => {}
                Got::NeedInput | Got::Ready => {
                    self.send().await.map_err(|e| self.report(e))?;
                    self.fill().await.map_err(|e| self.report(e))?;
                }
            }
        }
        self.send().await.map_err(|e| self.report(e))?;
        Ok(data.len())
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        self.send().await.map_err(|e| self.report(e))?;
        self.flow.flush().await
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        if !self.conn.is_handshaking() {
            self.queue_close().map_err(|e| self.report(e))?;
            self.send().await.map_err(|e| self.report(e))?;
        }
        self.flow.shutdown().await
    }

    async fn close(self) -> Result<(), flow::Error> {
        self.close_tls().await.map_err(flow::Error::from)
    }

    /// No close_notify: the transport is reset, so the peer cannot take a
    /// cut stream for a whole one.
    async fn abort(self) {
        self.flow.abort().await;
    }
}

impl<F: Flow, S: Side> TlsFlow<F, S> {
    /// A failure as a flow error, logged once with its reason: the flow
    /// interface has no room for it, and an operator needs it.
    fn report(&mut self, e: Error) -> flow::Error {
        if !matches!(e, Error::Flow(_) | Error::Eof) {
            log::info!(target: "tls", "{e}");
        }
        flow::Error::from(e)
    }
}
