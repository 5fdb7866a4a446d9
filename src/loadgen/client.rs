//! A lean MQTT client on the crate's codec, for the load tool: one task owns
//! one connection, encodes many packets into one buffer and writes it with
//! one call, so that the tool costs little next to the broker it measures.

use crate::codec::{self, Connect, Packet, Properties, Protocol};
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
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
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
    pub async fn connect(target: &Target, client_id: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let io: Box<dyn Io> = match &target.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = ServerName::from(target.addr.ip());
                Box::new(
                    tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
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
        c.flush().await?;
        match c.next().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            Packet::ConnAck(a) => Err(format!("CONNECT refused: {:#04x}", a.code)),
            other => Err(format!(
                "expected CONNACK, got type {}",
                other.type_number()
            )),
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
        if !self.wbuf.is_empty() {
            self.io
                .write_all(&self.wbuf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.io.flush().await.map_err(|e| format!("write: {e}"))?;
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
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(0) => Err("closed by the broker".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}
