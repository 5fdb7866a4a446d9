//! The device HTTPS endpoint: the `iot-data` API over mutual TLS with the
//! client certificate as the principal, as AWS IoT serves it on port 8443.
//!
//! - Handshakes run in tasks of their own, under the same deadline and
//!   connection permits as MQTT; finished connections reach axum through
//!   [`Handshaken`], so a slow handshake never holds the listener up, and
//!   a connection keeps its permit for as long as it is open.
//! - A certificate is admitted as for MQTT (registration mode, status)
//!   once its handshake is done and again at every request, so a refused
//!   one never holds a permit and a revoked one is refused at once.
//! - A connection that reads or writes nothing for `https.idle_timeout_secs`
//!   is closed: an idle keep-alive connection, or a request trickled in,
//!   cannot keep a permit that MQTT devices need.
//! - Every request is authorized by its principal's policies with the
//!   actions of spec/aws-iot-auth.md §1.2. HTTPS has no client id, so
//!   `${iot:ClientId}` and the `${iot:Connection.Thing.*}` names do not
//!   resolve (§1.3), but for `IsAttached`, which is false; certificate
//!   variables do.

use super::aws::{AwsError, segments};
use super::data::{self, DataPlane};
use crate::registry::ClientIdentity;
use crate::session::admission;
use crate::session::authz::{Authz, ConnectFacts};
use crate::session::conn::Shared;
use crate::transport::stream::TlsStream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, Sleep};

/// What the endpoint works with.
#[derive(Debug)]
pub struct Device {
    /// The `iot-data` API.
    pub data: DataPlane,
    /// The `iot-jobs-data` API.
    pub jobs: Arc<crate::jobs::service::Service>,
    /// The registry, policies, configuration and metrics MQTT uses.
    pub shared: Arc<Shared>,
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's certificate; `None` only for the listener's own address.
    pub identity: Option<Arc<ClientIdentity>>,
    /// The server name the client asked for in its ClientHello (SNI).
    pub domain_name: Option<Arc<str>>,
}

impl Connected<IncomingStream<'_, Handshaken>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Handshaken>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TLS connection that holds one of the gateway's connection permits,
/// and ends when it has read and written nothing for its idle time.
#[derive(Debug)]
pub struct Conn {
    tls: Box<TlsStream>,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Wraps a finished handshake with its permit, to end after `idle_for`
    /// without traffic.
    pub fn new(tls: Box<TlsStream>, permit: OwnedSemaphorePermit, idle_for: Duration) -> Self {
        Self {
            tls,
            idle_for,
            idle: Box::pin(tokio::time::sleep(idle_for)),
            _permit: permit,
        }
    }

    /// Counts `progress` as activity, or fails a wait that has lasted the idle time.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match &progress {
            Poll::Ready(_) => {
                let at = Instant::now() + self.idle_for;
                self.idle.as_mut().reset(at);
            }
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
            }
        }
        progress
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut *self.tls).poll_read(cx, buf);
        self.watch(cx, read)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut *self.tls).poll_write(cx, buf);
        self.watch(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.tls).poll_shutdown(cx)
    }
}

/// Connections whose handshake is done, as axum takes them.
#[derive(Debug)]
pub struct Handshaken {
    rx: mpsc::Receiver<(Conn, Peer)>,
    local: SocketAddr,
}

impl Handshaken {
    /// Connections handed over on `rx`, for a listener bound to `local`.
    pub fn new(rx: mpsc::Receiver<(Conn, Peer)>, local: SocketAddr) -> Self {
        Self { rx, local }
    }
}

impl Listener for Handshaken {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop has stopped: shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            identity: None,
            domain_name: None,
        })
    }
}

/// The endpoint's routes.
pub fn router(device: Arc<Device>) -> Router {
    Router::new().fallback(handle).with_state(device)
}

async fn handle(
    State(device): State<Arc<Device>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    match serve(&device, peer, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(device: &Device, peer: Peer, req: Request) -> Result<Response, AwsError> {
    let shared = &device.shared;
    let identity = peer.identity.ok_or_else(data::forbidden)?;
    let principal = admission::admit(shared, &identity, "").ok_or_else(data::forbidden)?;
    let facts = ConnectFacts {
        client_id: None,
        peer: Some(peer.addr.ip()),
        persistent: false,
        will_topic: None,
        domain_name: peer.domain_name.as_deref(),
        vars: &[],
    };
    let mut authz = Authz::new(
        Some(&identity),
        principal,
        facts,
        shared.policies.clone(),
        &shared.arn_head,
    )
    .ok_or_else(data::forbidden)?;
    let (parts, body) = req.into_parts();
    let limit = device.data.max_payload.max(64 * 1024);
    let body: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!("the body exceeds {limit} bytes"),
        )
    })?;
    let segments = segments(parts.uri.path());
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let metrics = shared.metrics.clone();
    let mut allows = |action, ty, name: &str| authz.allows(&metrics, "", action, ty, name);
    if let Some(answer) = super::jobs_data::handle(
        &device.jobs,
        &parts.method,
        &seg,
        parts.uri.query().unwrap_or_default(),
        &body,
        &mut allows,
    )
    .await
    {
        return answer;
    }
    data::handle(
        &device.data,
        &parts.method,
        &seg,
        parts.uri.query().unwrap_or_default(),
        &parts.headers,
        body,
        data::Caller {
            principal: &identity.certificate_id,
            allows: &mut allows,
        },
    )
    .await
    .unwrap_or_else(|| {
        Err(AwsError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!(
                "{} {} is not an operation of this endpoint",
                parts.method,
                parts.uri.path()
            ),
        ))
    })
}
