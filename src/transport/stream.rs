//! The server side of a TLS connection: rustls's unbuffered connection over
//! a TCP socket, holding buffers only while they hold bytes.
//!
//! rustls's buffered connection keeps a 4 KiB record buffer, and queues of
//! plaintext and records, for the connection's whole life. A gateway holds
//! thousands of device connections that are idle almost all the time, so
//! that was the largest part of what each cost. Here received records are
//! decrypted where they were read and go straight into the reader's buffer;
//! records to send are encrypted into a per-thread buffer and go straight to
//! the socket. The connection keeps only what could not move on: a partial
//! record, plaintext its reader had no room for, bytes the socket would not
//! take. Each is freed once empty.
//!
//! Once a TLS 1.3 handshake is done, rustls itself goes too: its sequence
//! numbers, and the traffic secrets it notes on the way (see
//! [`NotesTrafficSecrets`]), move to `transport::record`, which is all a
//! connection needs from then on. TLS 1.2 connections keep rustls.

use crate::transport::record::{self, Content, MAX_PLAINTEXT, Records, Secret, Suite};
use rustls::pki_types::CertificateDer;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{KeyLog, ProtocolVersion, ServerConfig};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most ciphertext taken from the socket per read.
const READ_CHUNK: usize = 32 * 1024;

/// Most plaintext encrypted per write call: what one turn of a connection
/// batches, as a handful of records.
const WRITE_CHUNK: usize = 64 * 1024;

/// A bound on what a record adds to its plaintext under any suite
/// (header, explicit nonce, content type, tag), to size the output before
/// rustls encrypts; it says how much it needs if that was too little.
const RECORD_OVERHEAD: usize = 64;

thread_local! {
    /// Where received ciphertext is decrypted when the connection kept
    /// nothing from its last read (else it is read after what was kept).
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Where records are encrypted before they go to the socket.
    static WRITE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// What rustls showed of the handshake this thread just processed,
    /// from [`NotesServerName`] and [`NotesTrafficSecrets`] to the stream
    /// that called rustls.
    static NOTES: Cell<Notes> = const { Cell::new(Notes::NONE) };
}

/// What rustls shows of a handshake only to the configuration's hooks, on
/// the thread and inside the `process_tls_records` call of the stream being
/// handshaken; the stream clears the notes before each call and takes them
/// after it.
#[derive(Default)]
struct Notes {
    server_name: Option<Box<str>>,
    client_secret: Option<Secret>,
    server_secret: Option<Secret>,
}

impl Notes {
    const NONE: Self = Self {
        server_name: None,
        client_secret: None,
        server_secret: None,
    };

    /// Changes this thread's notes with `note`.
    fn note(note: impl FnOnce(&mut Self)) {
        let mut notes = NOTES.take();
        note(&mut notes);
        NOTES.set(notes);
    }

    /// Keeps what `later` noted, and what it did not from before.
    fn update(&mut self, later: Self) {
        self.server_name = later.server_name.or(self.server_name.take());
        self.client_secret = later.client_secret.or(self.client_secret.take());
        self.server_secret = later.server_secret.or(self.server_secret.take());
    }
}

/// Notes a TLS 1.3 handshake's application traffic secrets for its stream.
///
/// rustls hands over its sequence numbers and keys once the handshake is
/// done (`dangerous_into_kernel_connection`), but not the secrets the keys
/// came from, which a key update rolls forward. rustls shows those to
/// one thing only, the configuration's key log, which notes them for the
/// stream ([`Notes`]). Nothing is written anywhere.
#[derive(Debug)]
pub struct NotesTrafficSecrets;

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl KeyLog for NotesTrafficSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let secret = Secret::new(secret);
        match label {
            CLIENT_TRAFFIC_SECRET => Notes::note(|n| n.client_secret = secret),
            SERVER_TRAFFIC_SECRET => Notes::note(|n| n.server_secret = secret),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, CLIENT_TRAFFIC_SECRET | SERVER_TRAFFIC_SECRET)
    }
}

/// Has streams accepted with `config` leave rustls behind once a TLS 1.3
/// handshake is done.
pub fn records_after_handshake(config: &mut ServerConfig) {
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(NotesTrafficSecrets);
}

/// The gateway's one certificate, resolved for every handshake, which
/// notes the client's server name (SNI) on the way.
///
/// rustls's unbuffered connection does not say which name the client asked
/// for, and `iot:DomainName` needs it. Certificate resolution is the one
/// place rustls hands out the ClientHello, for every full or resumed
/// handshake; it notes the name for the stream ([`Notes`]).
#[derive(Debug)]
pub struct NotesServerName(Arc<CertifiedKey>);

impl NotesServerName {
    /// Resolves to `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self(Arc::new(key))
    }
}

impl ResolvesServerCert for NotesServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(Box::from);
        Notes::note(|n| n.server_name = name);
        Some(self.0.clone())
    }
}

/// A server-side TLS stream over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    tls: Tls,
    /// Received bytes not yet consumed: a partial record, or the records
    /// of a handshake message still being joined.
    incoming: Vec<u8>,
    /// Records the socket has not taken yet, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
}

/// What the handshake settled about the client, for the listener to use
/// once: the stream itself keeps none of it.
#[derive(Debug)]
pub struct Handshake {
    /// The client's certificate chain, leaf first (empty if it sent none).
    pub certificates: Vec<CertificateDer<'static>>,
    /// The application protocol agreed (ALPN), if any.
    pub alpn: Option<Vec<u8>>,
    /// The name the client asked for in its ClientHello (SNI), if it sent
    /// one and the configuration resolves its certificate with
    /// [`NotesServerName`].
    pub server_name: Option<Box<str>>,
}

/// The TLS state and its decrypted output, apart from the buffers so both
/// can be borrowed at once.
struct Tls {
    engine: Engine,
    data: Data,
    /// The socket reached its end (without close_notify, a truncation).
    eof: bool,
    /// The records were refused: the engine is not called again (after an
    /// error its state no longer matches the bytes kept), and the stream
    /// only sends what is queued (the alert) and closes.
    failed: bool,
}

/// What protects the records.
#[expect(
    clippy::large_enum_variant,
    reason = "a connection's stream is boxed once whole; its records live there, not in a box of their own"
)]
enum Engine {
    /// rustls: the handshake, and a TLS 1.2 connection's whole life.
    Rustls(Box<Handshaking>),
    /// A TLS 1.3 connection once its handshake is done.
    Records(Records),
}

struct Handshaking {
    conn: UnbufferedServerConnection,
    notes: Notes,
}

/// The application's side of the records.
#[derive(Default)]
struct Data {
    received: Received,
    /// The peer sent close_notify.
    read_closed: bool,
    /// close_notify is queued; nothing more may be written.
    write_closed: bool,
}

/// Decrypted bytes the reader had no room for, from `taken` on.
#[derive(Default)]
struct Received {
    plain: Vec<u8>,
    taken: usize,
}

/// Where the connection stands once rustls has done what it can with the
/// bytes it was given.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Established: application data may flow.
    Open,
    /// The handshake needs more bytes from the peer.
    Blocked,
    /// Both sides have sent close_notify.
    Closed,
}

/// What to do once the connection is open.
#[derive(Clone, Copy)]
enum Act<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.tcp.peer_addr().ok())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish_non_exhaustive()
    }
}

/// Runs the server handshake on `tcp`. A failure carries the
/// `rustls::Error` inside the `io::Error` (see `tls::classify`); the alert
/// that says why is sent when the socket takes it at once.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<(TlsStream, Handshake)> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        tcp,
        tls: Tls {
            engine: Engine::Rustls(Box::new(Handshaking {
                conn,
                notes: Notes::NONE,
            })),
            data: Data::default(),
            eof: false,
            failed: false,
        },
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
    };
    match std::future::poll_fn(|cx| stream.poll_handshake(cx)).await {
        Ok(()) => stream.settle(),
        Err(e) => {
            let _ = std::future::poll_fn(|cx| Poll::Ready(stream.poll_send(cx))).await;
            Err(e)
        }
    }
}

impl TlsStream {
    /// What the client settled in the handshake, and the stream with
    /// rustls left behind where the protocol allows (TLS 1.3 with one of
    /// [`Suite`]'s suites and its secrets noted).
    fn settle(self) -> io::Result<(Self, Handshake)> {
        let Self {
            tcp,
            tls,
            mut incoming,
            mut outgoing,
            sent,
        } = self;
        let Engine::Rustls(mut hs) = tls.engine else {
            return Err(io::Error::other("the TLS handshake was settled twice"));
        };
        let handshake = Handshake {
            certificates: hs
                .conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
            alpn: hs.conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: hs.notes.server_name.take(),
        };
        let suite = hs.conn.negotiated_cipher_suite().and_then(Suite::of);
        let secrets = (hs.notes.client_secret.take(), hs.notes.server_secret.take());
        let engine = match (suite, secrets) {
            (Some(suite), (Some(client), Some(server)))
                if hs.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) =>
            {
                // Only the sequence numbers are taken: the keys are the
                // secrets', derived again as a key update derives them.
                let (secrets, _) = hs
                    .conn
                    .dangerous_into_kernel_connection()
                    .map_err(tls_error)?;
                let (rx, tx) = ((secrets.rx.0, client), (secrets.tx.0, server));
                Engine::Records(Records::new(suite, rx, tx).map_err(tls_error)?)
            }
            _ => Engine::Rustls(hs),
        };
        let mut tls = Tls { engine, ..tls };
        // What came after the client's Finished was left for this engine,
        // and the client may send nothing more until it is answered. A
        // refused record fails the stream; its alert goes out on shutdown.
        if let Ok((consumed, _)) = tls.process(&mut incoming, None, &mut outgoing, Act::Nothing) {
            incoming.drain(..consumed);
        }
        let stream = Self {
            tcp,
            tls,
            incoming,
            outgoing,
            sent,
        };
        Ok((stream, handshake))
    }

    /// Puts `bytes` back in front of what is still to be read: a listener
    /// that read the start of a connection to route it hands it on whole.
    pub fn unread(&mut self, bytes: &[u8]) {
        let r = &mut self.tls.data.received;
        // In place of what was taken: no new buffer when it has the room.
        r.plain.splice(..r.taken, bytes.iter().copied());
        r.taken = 0;
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            let Engine::Rustls(hs) = &self.tls.engine else {
                return Poll::Ready(Ok(()));
            };
            if !hs.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.tls.data.read_closed || self.tls.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Cleared before and taken after, whatever the outcome, so no
            // note outlives the call that made it.
            NOTES.take();
            let read = self.poll_read_tls(cx, None);
            let noted = NOTES.take();
            if let Engine::Rustls(hs) = &mut self.tls.engine {
                hs.notes.update(noted);
            }
            if ready!(read)? == Step::Closed {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads once from the socket and has rustls process everything kept
    /// and read: decrypted data goes to `sink` while it has room, the rest
    /// to `plain`; records rustls wants sent go to `outgoing`.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        sink: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<Step>> {
        let step = if self.incoming.is_empty() {
            // The usual case: whole records arrive, are decrypted in the
            // per-thread buffer, and only a partial record is kept.
            READ_SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                if ready!(poll_fill(&mut self.tcp, cx, scratch))? == 0 {
                    self.tls.eof = true;
                }
                let processed = self
                    .tls
                    .process(scratch, sink, &mut self.outgoing, Act::Nothing);
                let (consumed, step) = processed?;
                self.incoming.extend_from_slice(&scratch[consumed..]);
                Poll::Ready(Ok(step))
            })
        } else {
            // A partial record (or handshake message) waits: what comes is
            // read after it, in place, so a peer sending a byte at a time
            // costs no copying of what was kept.
            let Poll::Ready(filled) = poll_fill(&mut self.tcp, cx, &mut self.incoming) else {
                // While it waits, a connection keeps no more room than its
                // partial record needs.
                self.incoming.shrink_to_fit();
                return Poll::Pending;
            };
            if filled? == 0 {
                self.tls.eof = true;
            }
            self.tls
                .process(&mut self.incoming, sink, &mut self.outgoing, Act::Nothing)
                .map(|(consumed, step)| {
                    self.incoming.drain(..consumed);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    step
                })
                .into()
        };
        // Whatever the records asked to send (a key update, an alert) goes
        // out now if the socket takes it, or before the next write.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        step
    }

    /// Writes what `outgoing` holds; ready once all of it is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `records` as far as the socket takes them now, and keeps the rest.
    fn emit(&mut self, cx: &mut Context<'_>, records: &[u8]) -> io::Result<()> {
        let mut at = 0;
        if self.sent == self.outgoing.len() {
            while at < records.len() {
                match Pin::new(&mut self.tcp).poll_write(cx, &records[at..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.outgoing.extend_from_slice(&records[at..]);
        Ok(())
    }

    /// Has rustls act on the open connection with nothing new received, and
    /// sends what that produced.
    fn act(&mut self, cx: &mut Context<'_>, act: Act<'_>) -> io::Result<()> {
        WRITE_SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let encrypts = matches!(act, Act::Encrypt(_));
            let processed = self.tls.process(&mut self.incoming, None, scratch, act);
            let (consumed, step) = processed?;
            self.incoming.drain(..consumed);
            self.emit(cx, scratch)?;
            if encrypts && step != Step::Open {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS connection is not open",
                ));
            }
            Ok(())
        })
    }
}

impl Tls {
    /// Opens the records in `buf` until it holds no whole one, then
    /// performs `act` if the connection is open. Returns how many bytes of
    /// `buf` are done with. After an error, fails at once.
    fn process(
        &mut self,
        buf: &mut [u8],
        sink: Option<&mut ReadBuf<'_>>,
        out: &mut Vec<u8>,
        act: Act<'_>,
    ) -> io::Result<(usize, Step)> {
        if self.failed {
            return Err(failed());
        }
        let processed = match &mut self.engine {
            Engine::Rustls(hs) => hs.process(&mut self.data, buf, sink, out, act),
            Engine::Records(records) => traffic(records, &mut self.data, buf, sink, out, act),
        };
        self.failed = processed.is_err();
        processed
    }
}

impl Handshaking {
    /// Runs rustls over `buf` until it has nothing more to do with it.
    ///
    /// While the handshake runs, rustls is given one more record at a time,
    /// so that it stops at the client's Finished: in the call that takes
    /// the Finished it would go on to whatever follows (a key update, say),
    /// and what follows is for the engine that takes over
    /// ([`TlsStream::settle`]).
    fn process(
        &mut self,
        data: &mut Data,
        buf: &mut [u8],
        mut sink: Option<&mut ReadBuf<'_>>,
        out: &mut Vec<u8>,
        act: Act<'_>,
    ) -> io::Result<(usize, Step)> {
        let conn = &mut self.conn;
        let mut at = 0;
        let mut end = if conn.is_handshaking() {
            record_end(buf, 0)
        } else {
            buf.len()
        };
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[at..end]);
            let step = match state {
                Err(e) => {
                    at += discard;
                    queue_alert(conn, &mut buf[at..], out);
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        data.received.deliver(record.payload, sink.as_deref_mut());
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, out)?;
                    None
                }
                // `out` is sent by the caller, in order with what follows.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    data.read_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => Some(Step::Closed),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Act::CloseNotify = act {
                        data.write_closed = true;
                    }
                    perform(&mut traffic, act, out)?;
                    Some(Step::Open)
                }
                Ok(_) => Some(Step::Blocked),
            };
            at += discard;
            match step {
                Some(Step::Blocked) if end < buf.len() => end = record_end(buf, end),
                Some(step) => return Ok((at, step)),
                None => {}
            }
        }
    }
}

/// Where the record that starts at `from` in `buf` ends, or the end of
/// `buf` if it is not whole there.
fn record_end(buf: &[u8], from: usize) -> usize {
    buf[from..].first_chunk().map_or(buf.len(), |header| {
        (from + record::HEADER + record::payload_len(header)).min(buf.len())
    })
}

/// Opens the whole records in `buf` (what the peer must hear goes to
/// `out`), then performs `act`. What follows the peer's close_notify is
/// dropped unread.
fn traffic(
    records: &mut Records,
    data: &mut Data,
    buf: &mut [u8],
    mut sink: Option<&mut ReadBuf<'_>>,
    out: &mut Vec<u8>,
    act: Act<'_>,
) -> io::Result<(usize, Step)> {
    let mut at = 0;
    while !data.read_closed {
        let Some((taken, content)) = records.open(&mut buf[at..], out).map_err(tls_error)? else {
            break;
        };
        at += taken;
        match content {
            Content::Data(plain) => data.received.deliver(plain, sink.as_deref_mut()),
            Content::Closed => data.read_closed = true,
            Content::Nothing => {}
        }
    }
    if data.read_closed {
        at = buf.len();
    }
    match act {
        Act::Nothing => {}
        Act::Encrypt(plain) => records.seal(plain, out).map_err(tls_error)?,
        Act::CloseNotify => {
            data.write_closed = true;
            records.seal_close_notify(out).map_err(tls_error)?;
        }
    }
    Ok((at, Step::Open))
}

/// Encrypts what `act` says into `out`.
fn perform(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    act: Act<'_>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let need = match act {
        Act::Nothing => return Ok(()),
        Act::Encrypt(data) => data.len() + (data.len() / MAX_PLAINTEXT + 1) * RECORD_OVERHEAD,
        Act::CloseNotify => RECORD_OVERHEAD,
    };
    append(out, need, |buf| {
        let encrypted = match act {
            Act::Encrypt(data) => traffic.encrypt(data, buf),
            _ => traffic.queue_close_notify(buf),
        };
        match encrypted {
            Ok(n) => Ok(Ok(n)),
            Err(EncryptError::InsufficientSize(s)) => Err(s.required_size),
            Err(e @ EncryptError::EncryptExhausted) => Ok(Err(tls_error(e))),
        }
    })
}

/// Appends the records rustls has ready to send to `out`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) -> io::Result<()> {
    append(out, 0, |buf| match data.encode(buf) {
        Ok(n) => Ok(Ok(n)),
        Err(EncodeError::InsufficientSize(s)) => Err(s.required_size),
        Err(e @ EncodeError::AlreadyEncoded) => Ok(Err(tls_error(e))),
    })
}

/// After an error, the fatal alert rustls queued (if any) goes to `out`.
fn queue_alert(conn: &mut UnbufferedServerConnection, buf: &mut [u8], out: &mut Vec<u8>) {
    let UnbufferedStatus { state, .. } = conn.process_tls_records(buf);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
        let _ = encode(&mut data, out);
    }
}

impl Received {
    /// Gives decrypted bytes to the reader, keeping what does not fit.
    fn deliver(&mut self, payload: &[u8], sink: Option<&mut ReadBuf<'_>>) {
        let fits = match sink {
            Some(sink) if self.taken == self.plain.len() => {
                let n = payload.len().min(sink.remaining());
                sink.put_slice(&payload[..n]);
                n
            }
            _ => 0,
        };
        self.plain.extend_from_slice(&payload[fits..]);
    }

    /// Moves kept plaintext to the reader; true if any was there.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.taken == self.plain.len() {
            return false;
        }
        let n = (self.plain.len() - self.taken).min(buf.remaining());
        buf.put_slice(&self.plain[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plain.len() {
            self.plain = Vec::new();
            self.taken = 0;
        }
        true
    }
}

/// Appends what `fill` writes to `out`, sized `need` at first and then as
/// rustls asks (`Err(required)`); `Ok(result)` is the outcome.
fn append(
    out: &mut Vec<u8>,
    mut need: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<io::Result<usize>, usize>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + need, 0);
        match fill(&mut out[start..]) {
            Ok(Ok(n)) => {
                out.truncate(start + n);
                return Ok(());
            }
            Ok(Err(e)) => {
                out.truncate(start);
                return Err(e);
            }
            Err(required) if required > need => need = required,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS output did not fit"));
            }
        }
    }
}

fn tls_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the TLS connection failed")
}

/// Reads what the socket has into `buf`'s spare room (made once the socket
/// is readable), without initializing that room; 0 at the socket's end.
fn poll_fill(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        buf.reserve(READ_CHUNK);
        match tcp.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            read => return Poll::Ready(read),
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.tls.failed {
                return Poll::Ready(Err(failed()));
            }
            if this.tls.data.received.take_plain(buf) || this.tls.data.read_closed {
                return Poll::Ready(Ok(()));
            }
            if this.tls.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            let before = buf.filled().len();
            if ready!(this.poll_read_tls(cx, Some(buf)))? == Step::Closed
                || buf.filled().len() > before
            {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.data.write_closed || this.tls.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_send(cx))?;
        let data = &data[..data.len().min(WRITE_CHUNK)];
        this.act(cx, Act::Encrypt(data))?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.data.write_closed && !this.tls.failed {
            ready!(this.poll_send(cx))?;
            this.act(cx, Act::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::pki::{Ca, KeyKind, Pem};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn certs(pem: &Pem) -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut pem.cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificates")
    }

    fn key(pem: &Pem) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut pem.key.as_bytes())
            .expect("key")
            .expect("a key")
    }

    /// A server configuration requiring a client certificate from `ca`, and
    /// a client configuration presenting one, at `version`.
    fn configs(version: &'static SupportedProtocolVersion) -> (Arc<ServerConfig>, ClientConfig) {
        configs_presenting(version, true)
    }

    /// As [`configs`], with a client that presents a certificate or none.
    fn configs_presenting(
        version: &'static SupportedProtocolVersion,
        present: bool,
    ) -> (Arc<ServerConfig>, ClientConfig) {
        configs_offering(version, present, rustls::crypto::ring::default_provider())
    }

    /// As [`configs_presenting`], with a client that offers only the cipher
    /// suites of `client_provider`.
    fn configs_offering(
        version: &'static SupportedProtocolVersion,
        present: bool,
        client_provider: rustls::crypto::CryptoProvider,
    ) -> (Arc<ServerConfig>, ClientConfig) {
        let ca = Ca::generate("stream test CA").expect("ca");
        let server = ca.issue_server(&["localhost"]).expect("server");
        let device = ca
            .issue_device("device-1", KeyKind::EcdsaP256)
            .expect("device");
        let mut roots = RootCertStore::empty();
        roots.add(certs(&ca.pem)[0].clone()).expect("root");
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .expect("verifier");
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&server), key(&server))
            .expect("server config");
        server.send_tls13_tickets = 0;
        records_after_handshake(&mut server);
        let client = ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots.as_ref().clone());
        let client = if present {
            client
                .with_client_auth_cert(certs(&device), key(&device))
                .expect("client config")
        } else {
            client.with_no_client_auth()
        };
        (Arc::new(server), client)
    }

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// Both sides of one handshake on 127.0.0.1, within the test's wait.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
    ) -> (io::Result<Client>, io::Result<(TlsStream, Handshake)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
        };
        let serve = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(tcp, server).await
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(connect, serve)
        })
        .await
        .expect("handshake in time")
    }

    async fn pair(version: &'static SupportedProtocolVersion) -> (TlsStream, Handshake, Client) {
        let (server, client) = configs(version);
        let (client, server) = handshake(server, client).await;
        let (server, handshake) = server.expect("server handshake");
        (server, handshake, client.expect("client handshake"))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Everything sent arrives intact both ways, whatever the sizes of the
    /// writes (many records) and of the reader's buffer (smaller than a
    /// record, so decrypted bytes wait in the stream), and each side's
    /// close_notify ends the other's reading cleanly.
    async fn round_trip(version: &'static SupportedProtocolVersion) {
        let (mut server, handshake, mut client) = pair(version).await;
        assert_eq!(
            handshake.certificates.len(),
            1,
            "the client's certificate is known"
        );
        assert_eq!(
            matches!(server.tls.engine, Engine::Records(_)),
            version == &rustls::version::TLS13,
            "rustls is left behind once a TLS 1.3 handshake is done"
        );
        let up = pattern(200_000, 1);
        let down = pattern(300_000, 7);
        let client_side = async {
            client.write_all(&up).await.expect("client write");
            let mut got = vec![0; down.len()];
            client.read_exact(&mut got).await.expect("client read");
            client.shutdown().await.expect("client close");
            let mut rest = Vec::new();
            client
                .read_to_end(&mut rest)
                .await
                .expect("server's close_notify");
            (got, rest)
        };
        let server_side = async {
            let mut got = Vec::new();
            let mut small = [0u8; 100];
            while got.len() < up.len() {
                let n = server.read(&mut small).await.expect("server read");
                assert!(n > 0, "early end after {} bytes", got.len());
                got.extend_from_slice(&small[..n]);
            }
            server.write_all(&down).await.expect("server write");
            server.flush().await.expect("flush");
            let end = server
                .read(&mut small)
                .await
                .expect("client's close_notify");
            server.shutdown().await.expect("server close");
            (got, end)
        };
        let ((client_got, rest), (server_got, end)) =
            tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(client_side, server_side)
            })
            .await
            .expect("round trip in time");
        assert!(server_got == up, "the server read what the client sent");
        assert!(client_got == down, "the client read what the server sent");
        assert_eq!(end, 0, "the client's close ends the server's reading");
        assert!(rest.is_empty());
    }

    use std::time::Duration;

    #[tokio::test]
    async fn data_and_close_travel_intact_over_tls13() {
        round_trip(&rustls::version::TLS13).await;
    }

    #[tokio::test]
    async fn data_and_close_travel_intact_over_tls12() {
        round_trip(&rustls::version::TLS12).await;
    }

    /// Bytes that are not TLS records fail the read with the rustls error
    /// (which the handshake metrics classify) and tell the peer with an alert.
    #[tokio::test]
    async fn garbage_fails_the_read_and_the_peer_hears_why() {
        let (mut server, _, client) = pair(&rustls::version::TLS13).await;
        let (mut tcp, _) = client.into_inner();
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20])
            .await
            .expect("write");
        tcp.write_all(&[0xAA; 32]).await.expect("write");
        let mut buf = [0u8; 64];
        let err = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("a record that does not decrypt");
        assert!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some(),
            "{err:?}"
        );
        // Failed for good: nothing more is written, closing still works.
        assert!(server.write_all(b"more").await.is_err());
        let _ = server.shutdown().await;
        drop(server);
        let mut alert = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut alert))
            .await
            .expect("in time")
            .expect("read");
        // One encrypted record: header, the two alert bytes, content type, tag.
        assert_eq!(alert.len(), 5 + 2 + 1 + 16, "one alert record: {alert:?}");
        assert_eq!(alert[0], 0x17, "encrypted: {alert:?}");
    }

    /// A client that rolls its keys (TLS 1.3 KeyUpdate, asking for ours too)
    /// goes on talking both ways under each TLS 1.3 suite: the update is
    /// answered on the read path, and both sides' next keys agree.
    #[tokio::test]
    async fn a_key_update_from_the_client_keeps_the_connection_going() {
        for suite in rustls::crypto::ring::DEFAULT_CIPHER_SUITES
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
        {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![*suite],
                ..rustls::crypto::ring::default_provider()
            };
            let (server, client) = configs_offering(&rustls::version::TLS13, true, provider);
            let (client, server) = handshake(server, client).await;
            let (server, _) = server.expect("server handshake");
            let client = client.expect("client handshake");
            assert!(
                matches!(server.tls.engine, Engine::Records(_)),
                "{suite:?}: rustls left behind"
            );
            talk_across_key_updates(server, client).await;
        }
    }

    async fn talk_across_key_updates(mut server: TlsStream, mut client: Client) {
        for round in 0..3u8 {
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            client.write_all(&[round; 100]).await.expect("client write");
            client.flush().await.expect("flush");
            let mut got = [0u8; 100];
            server.read_exact(&mut got).await.expect("server read");
            assert_eq!(got, [round; 100]);
            server
                .write_all(&[round + 10; 50])
                .await
                .expect("server write");
            server.flush().await.expect("flush");
            let mut back = [0u8; 50];
            client.read_exact(&mut back).await.expect("client read");
            assert_eq!(back, [round + 10; 50]);
        }
    }

    /// A client may roll its keys, and ask for ours to roll, in the very
    /// flight that ends its handshake. rustls is stopped at the Finished,
    /// so the key update and the data after it reach the engine that takes
    /// over, which opens them under the client's next keys.
    #[tokio::test]
    async fn a_key_update_in_the_flight_that_ends_the_handshake_is_followed() {
        use std::io::{Read, Write};
        let (server_config, client_config) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = async {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls =
                rustls::ClientConnection::new(Arc::new(client_config), name).expect("client");
            let mut buf = vec![0; 64 * 1024];
            let mut wire = Vec::new();
            // Until the client has read the server's Finished; its own last
            // flight waits.
            while tls.is_handshaking() {
                wire.clear();
                while tls.wants_write() {
                    tls.write_tls(&mut wire).expect("flight");
                }
                tcp.write_all(&wire).await.expect("send");
                let n = tcp.read(&mut buf).await.expect("read");
                assert!(n > 0, "the server's flight");
                tls.read_tls(&mut &buf[..n]).expect("to client");
                tls.process_new_packets().expect("client");
            }
            tls.refresh_traffic_keys().expect("key update");
            tls.writer().write_all(b"right after").expect("data");
            wire.clear();
            while tls.wants_write() {
                tls.write_tls(&mut wire).expect("last flight");
            }
            // Certificate, CertificateVerify, Finished, KeyUpdate and data
            // in one write; then more data once answered.
            tcp.write_all(&wire).await.expect("send");
            let mut got = Vec::new();
            for (want, next) in [(5, Some(&b"again"[..])), (7, None)] {
                while got.len() < want {
                    let n = tcp.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the server's answer");
                    tls.read_tls(&mut &buf[..n]).expect("to client");
                    tls.process_new_packets().expect("client");
                    let mut plain = [0u8; 64];
                    while let Ok(n @ 1..) = tls.reader().read(&mut plain) {
                        got.extend_from_slice(&plain[..n]);
                    }
                }
                if let Some(next) = next {
                    tls.writer().write_all(next).expect("data");
                    wire.clear();
                    tls.write_tls(&mut wire).expect("record");
                    tcp.write_all(&wire).await.expect("send");
                }
            }
            got
        };
        let server = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (mut server, _) = accept(tcp, server_config).await.expect("handshake");
            assert!(matches!(server.tls.engine, Engine::Records(_)));
            let mut got = [0u8; 16];
            server.read_exact(&mut got[..11]).await.expect("read");
            server.write_all(b"back!").await.expect("write");
            server.flush().await.expect("flush");
            server.read_exact(&mut got[11..]).await.expect("read more");
            server.write_all(b"ok").await.expect("write");
            server.flush().await.expect("flush");
            (server, got)
        };
        let (back, (_server, got)) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(client, server)
        })
        .await
        .expect("in time");
        assert_eq!(&got, b"right afteragain");
        assert_eq!(back, b"back!ok");
    }

    /// A connection that ends without close_notify is a truncation, not an
    /// end of data: the read fails, after the data that came before it.
    #[tokio::test]
    async fn an_end_without_close_notify_is_an_error() {
        let (mut server, _, mut client) = pair(&rustls::version::TLS13).await;
        client.write_all(b"last words").await.expect("write");
        client.flush().await.expect("flush");
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.expect("close");
        let mut got = vec![0; 10];
        server.read_exact(&mut got).await.expect("what came first");
        assert_eq!(got, b"last words");
        let err = server.read(&mut got).await.expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// What a scanner or a broken client sends instead of a handshake ends
    /// it with an error, never a panic or a hang: garbage, a record longer
    /// than TLS allows, a hello cut short by the end of the connection.
    #[tokio::test]
    async fn malformed_handshakes_fail_cleanly() {
        let (server, _) = configs(&rustls::version::TLS13);
        let cases: [(&str, &[u8]); 4] = [
            ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("oversize record", &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01]),
            ("cut short", &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00]),
            ("nothing", &[]),
        ];
        for (what, bytes) in cases {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = async {
                let mut tcp = TcpStream::connect(addr).await.expect("connect");
                tcp.write_all(bytes).await.expect("write");
                tcp.shutdown().await.expect("close");
                tcp
            };
            let serve = async {
                let (tcp, _) = listener.accept().await.expect("accept");
                accept(tcp, server.clone()).await
            };
            let (_tcp, served) = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(client, serve)
            })
            .await
            .unwrap_or_else(|_| panic!("{what}: the handshake ends in time"));
            let err = served.err().unwrap_or_else(|| panic!("{what}: refused"));
            let tls = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some();
            let eof = err.kind() == io::ErrorKind::UnexpectedEof;
            assert!(tls || eof, "{what}: {err:?}");
        }
    }

    /// A client that trusts the server but presents no certificate is
    /// refused with the error the metrics call `no_certificate`, at both
    /// protocol versions.
    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_as_such() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server, client) = configs_presenting(version, false);
            let (_, server) = handshake(server, client).await;
            let err = server.expect_err("refused");
            assert_eq!(
                crate::transport::tls::classify(&err),
                crate::metrics::HandshakeFailure::NoCertificate,
                "{version:?}: {err:?}"
            );
        }
    }
}
