//! A lean MQTT client on the crate's codec, for the load tool: one task owns
//! one connection, encodes many packets into one buffer and writes it with
//! one call, so that the tool costs little next to the broker it measures.

use crate::codec::{self, Connect, Packet, Properties, Protocol};
use crate::transport::ws::{Role, WsStream};
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet the tool accepts.
const MAX_PACKET: usize = 1024 * 1024;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Broker address (loopback only).
    pub addr: std::net::SocketAddr,
    /// TLS, with a client certificate; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT version.
    pub protocol: Protocol,
    /// MQTT over WebSockets (`/mqtt`), over TLS or not.
    pub websocket: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("websocket", &self.websocket)
            .finish()
    }
}

/// Why a connection was not made, so that a run can say how its
/// connections failed and count them by kind.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP: {0}")]
    Tcp(std::io::Error),
    /// The handshake, or a read before CONNACK that brought a TLS alert.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket upgrade: {0}")]
    Upgrade(String),
    #[error("CONNECT refused: CONNACK {0:#04x}")]
    Refused(u8),
    #[error("no CONNACK: {0}")]
    NoConnAck(String),
}

impl ConnectError {
    /// The failure's kind, what a run counts: `connack 0x87`, `tls alert
    /// BadCertificate`, `tcp ConnectionRefused`, `upgrade 403`.
    pub fn kind(&self) -> String {
        match self {
            Self::Tcp(e) => format!("tcp {:?}", e.kind()),
            Self::Tls(e) => tls_kind(e),
            Self::Upgrade(status) => format!("upgrade {status}"),
            Self::Refused(code) => format!("connack {code:#04x}"),
            Self::NoConnAck(_) => "no connack".to_owned(),
        }
    }
}

/// A TLS failure by what rustls says of it: the alert the broker sent, the
/// certificate problem found, or the error's variant without its details.
fn tls_kind(e: &std::io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return format!("tls {:?}", e.kind());
    };
    match tls {
        rustls::Error::AlertReceived(alert) => format!("tls alert {alert:?}"),
        rustls::Error::InvalidCertificate(why) => format!("tls certificate {why:?}"),
        other => {
            let name = format!("{other:?}");
            let end = name.find(['(', '{', ' ']).unwrap_or(name.len());
            format!("tls {}", &name[..end])
        }
    }
}

/// An IO error after the TLS handshake: under TLS 1.3 the broker judges the
/// client's certificate once the client's handshake is done, so its alert
/// comes with the first read; anything else is what `or` makes of it.
fn after_handshake(e: std::io::Error, or: fn(String) -> ConnectError) -> ConnectError {
    match e.get_ref() {
        Some(inner) if inner.is::<rustls::Error>() => ConnectError::Tls(e),
        _ => or(e.to_string()),
    }
}

/// One connection.
pub struct Client {
    io: Box<dyn Io>,
    protocol: Protocol,
    rbuf: BytesMut,
    /// Packets waiting to be written.
    pub wbuf: BytesMut,
}

impl Client {
    /// TCP (no Nagle), TLS if configured, CONNECT and CONNACK.
    pub async fn connect(target: &Target, client_id: &str) -> Result<Self, ConnectError> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let io: Box<dyn Io> = match &target.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = ServerName::from(target.addr.ip());
                Box::new(
                    tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(ConnectError::Tls)?,
                )
            }
        };
        let io = if target.websocket {
            upgrade(io, target.addr).await?
        } else {
            io
        };
        let mut c = Self {
            io,
            protocol: target.protocol,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
        };
        c.queue(&Packet::Connect(Box::new(Connect {
            protocol: target.protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        let io_failure = |e| after_handshake(e, ConnectError::NoConnAck);
        c.write().await.map_err(io_failure)?;
        let packet = loop {
            if let Some(p) = c.try_next().map_err(ConnectError::NoConnAck)? {
                break p;
            }
            if c.read_some().await.map_err(io_failure)? == 0 {
                return Err(ConnectError::NoConnAck("closed by the broker".into()));
            }
        };
        match packet {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            Packet::ConnAck(a) => Err(ConnectError::Refused(a.code)),
            other => Err(ConnectError::NoConnAck(format!(
                "got packet type {}",
                other.type_number()
            ))),
        }
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.wbuf);
    }

    /// Writes the buffer.
    pub async fn flush(&mut self) -> Result<(), String> {
        self.write().await.map_err(|e| format!("write: {e}"))
    }

    async fn write(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next packet, reading as needed.
    pub async fn next(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(p);
            }
            self.read().await?;
        }
    }

    /// A packet already in the read buffer, if any.
    pub fn try_next(&mut self) -> Result<Option<Packet>, String> {
        codec::decode(&mut self.rbuf, self.protocol, MAX_PACKET).map_err(|e| e.to_string())
    }

    /// Reads what the socket has (at least one byte).
    pub async fn read(&mut self) -> Result<(), String> {
        match self.read_some().await {
            Ok(0) => Err("closed by the broker".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Reads what the socket has; 0 at its end.
    async fn read_some(&mut self) -> std::io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.rbuf).await
    }
}

/// Opens MQTT over WebSockets on `io`: the upgrade request, and the
/// stream once the broker switched protocols.
async fn upgrade(
    mut io: Box<dyn Io>,
    addr: std::net::SocketAddr,
) -> Result<Box<dyn Io>, ConnectError> {
    // The tool is no browser: one fixed key serves, checked all the same.
    const KEY: &str = "ZWRnZWdhdGUgYmVuY2ggIQ==";
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    let io_failure = |e| after_handshake(e, ConnectError::Upgrade);
    io.write_all(request.as_bytes()).await.map_err(io_failure)?;
    io.flush().await.map_err(io_failure)?;
    let mut head = Vec::new();
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 8 * 1024 {
            return Err(ConnectError::Upgrade(
                "the answer's head is too long".into(),
            ));
        }
        if io.read_buf(&mut head).await.map_err(io_failure)? == 0 {
            return Err(ConnectError::Upgrade("closed by the broker".into()));
        }
    };
    let answer = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let accept = crate::http::upgrade::accept_key(KEY).to_ascii_lowercase();
    if !answer.starts_with("http/1.1 101") || !answer.contains(&accept) {
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        return Err(ConnectError::Upgrade(format!("HTTP {status}")));
    }
    let early = head[end..].to_vec();
    Ok(Box::new(WsStream::new(
        io,
        Role::Client([0x5a, 0x17, 0xc3, 0x08]),
        early,
        MAX_PACKET,
    )))
}

/// The scenarios report failures as text.
impl From<ConnectError> for String {
    fn from(e: ConnectError) -> Self {
        e.to_string()
    }
}
