//! The listeners: accepting connections within the gateway's limits, the
//! TLS handshake, and routing each connection to what it speaks, as AWS
//! IoT's port 443 does.
//!
//! Every TLS listener serves everything: ALPN `x-amzn-mqtt-ca` or `mqtt`
//! is MQTT; any other protocol, or none, is decided by the first byte the
//! client sends (an MQTT CONNECT begins with 0x10, an HTTP request with a
//! method name). HTTP is an upgrade to MQTT over WebSockets on `/mqtt`, or
//! a request for the device HTTPS endpoint, handed to its server whole. So
//! an MQTT listener without ALPN speaks MQTT and the HTTPS listener HTTPS,
//! as before, and one port can serve all three. The plaintext listener
//! serves MQTT and, for an upgrade, MQTT over `ws://`.
//!
//! One deadline covers TLS, the upgrade and CONNECT.

use crate::authorizers::Asked;
use crate::authorizers::request::{Connection, Presented};
use crate::config::{Cidr, ClientCert};
use crate::http::operators::Operators;
use crate::http::upgrade::{self, Opening};
use crate::http::{device, sigv4};
use crate::metrics::{HandshakeFailure, LimitKind, Metrics, Refused, Transport};
use crate::registry::ClientIdentity;
use crate::session::admission;
use crate::session::authz::Grant;
use crate::session::conn::{self, Credentials, Shared};
use crate::transport::proxy;
use crate::transport::stream::{self, TlsStream};
use crate::transport::tls::{self, Acceptor};
use crate::transport::ws::{Role, WsStream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// The first byte of an MQTT CONNECT (packet type 1, no flags).
const CONNECT: u8 = 0x10;

/// Where connections go once their transport is up.
#[derive(Debug, Clone)]
pub(super) struct Routes {
    /// Sessions, the registry, configuration and metrics.
    pub(super) shared: Arc<Shared>,
    /// The device HTTPS endpoint's queue of connections.
    pub(super) https: mpsc::Sender<(device::Conn, device::Peer)>,
    /// Who may sign a WebSocket upgrade.
    pub(super) operators: Arc<Operators>,
}

/// Accepts connections and spawns `serve` for each in a task of its own,
/// with one of the connection permits and the connection's deadline; past
/// the limit a connection is refused and counted. Behind trusted proxies
/// (`proxies`), the PROXY header is read first, within the deadline, and
/// the address it names is the client's from then on.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    (permits, proxies): (Arc<Semaphore>, Option<Arc<[Cidr]>>),
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit, Instant) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let timeout = shared.config.tls.handshake_timeout();
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if proxies.is_none() && !arrival(&shared, peer) {
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared
                .metrics
                .handshake_failed(HandshakeFailure::ConnectionLimit);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + timeout;
        let Some(proxies) = proxies.clone() else {
            tracker.spawn(serve(stream, peer, permit, deadline));
            continue;
        };
        let (shared, serve) = (shared.clone(), serve.clone());
        tracker.spawn(async move {
            let Some(client) =
                proxied(&mut stream, peer, &proxies, &shared.metrics, deadline).await
            else {
                return;
            };
            if arrival(&shared, client) {
                serve(stream, client, permit, deadline).await;
            }
        });
    }
}

/// Whether a new connection from `peer` is within its address's rate; a
/// refusal is counted and logged.
fn arrival(shared: &Shared, peer: SocketAddr) -> bool {
    let limits = &shared.config.limits;
    let address = || peer.ip().to_canonical().to_string();
    if limits.connections_per_second_per_address == 0
        || shared.arrivals.lock().admit(
            Instant::now(),
            &address(),
            limits.connections_per_second_per_address,
            limits.connection_burst_per_address,
        )
    {
        return true;
    }
    shared.metrics.refused(LimitKind::ConnectionRate);
    crate::refusal!(
        &address(),
        "connection_rate",
        %peer,
        "too many new connections a second from this address"
    );
    false
}

/// The client's address from the PROXY header of a connection from a
/// trusted proxy, by `deadline`; a connection from anywhere else, or
/// without a good header, is counted, logged and closed.
async fn proxied(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[Cidr],
    metrics: &Metrics,
    deadline: Instant,
) -> Option<SocketAddr> {
    let refused = |failure: HandshakeFailure, why: &dyn std::fmt::Display| {
        metrics.handshake_failed(failure);
        crate::refusal!(&peer.ip().to_string(), failure.label(), %peer, why = %why, "PROXY header refused");
    };
    if !trusted.iter().any(|c| c.contains(peer.ip())) {
        refused(HandshakeFailure::UntrustedProxy, &"not a trusted proxy");
        return None;
    }
    match tokio::time::timeout_at(deadline, proxy::read(stream)).await {
        Ok(Ok(client)) => Some(client.unwrap_or(peer)),
        Ok(Err(e)) => {
            refused(HandshakeFailure::BadProxyHeader, &e);
            None
        }
        Err(_) => {
            refused(HandshakeFailure::Timeout, &"no PROXY header in time");
            None
        }
    }
}

/// Serves a TLS listener: each connection's handshake and routing run in
/// its own task.
pub(super) async fn tls_listener(
    listener: TcpListener,
    (acceptor, client_cert): (Arc<Acceptor>, ClientCert),
    routes: Routes,
    (permits, proxies): (Arc<Semaphore>, Option<Arc<[Cidr]>>),
    tracker: TaskTracker,
) {
    let shared = routes.shared.clone();
    accept_loop(
        listener,
        shared,
        (permits, proxies),
        tracker,
        move |stream, peer, permit, deadline| {
            let (acceptor, routes) = (acceptor.clone(), routes.clone());
            async move {
                let metrics = &routes.shared.metrics;
                let config = acceptor.current(client_cert);
                let Some((mut tls, identity, domain_name, mqtt_alpn)) =
                    tls_accept(stream, peer, config, metrics, deadline).await
                else {
                    return;
                };
                let mqtt = if mqtt_alpn {
                    true
                } else {
                    // Boxed, apart from its await: the connection's task
                    // would otherwise keep room for this read all its life.
                    let first = Box::pin(first_byte(&mut tls, peer, metrics, deadline));
                    let Some(b) = first.await else {
                        return;
                    };
                    tls.unread(&[b]);
                    b == CONNECT
                };
                let origin = conn::Peer {
                    addr: peer,
                    credentials: identity
                        .map_or(Credentials::Unauthenticated, Credentials::Certificate),
                    domain_name,
                };
                if mqtt {
                    metrics.routed(Transport::Mqtt);
                    conn::serve(tls, origin, routes.shared, deadline).await;
                    return;
                }
                // Boxed, apart from its await: an MQTT connection's task,
                // which lives long, then has no room for the larger futures
                // of HTTP's paths.
                let served = Box::pin(http(tls, origin, permit, &routes, deadline));
                served.await;
            }
        },
    )
    .await;
}

/// Serves a TLS connection that opened with HTTP: a WebSocket upgrade, or
/// a request to the device HTTPS endpoint.
async fn http(
    tls: Box<TlsStream>,
    origin: conn::Peer,
    permit: OwnedSemaphorePermit,
    routes: &Routes,
    deadline: Instant,
) {
    let Some((opening, tls)) = open(tls, origin.addr, &routes.shared.metrics, deadline).await
    else {
        return;
    };
    match opening {
        Opening::Http(read) => https(tls, read, origin, permit, routes, deadline).await,
        opening => websocket(tls, opening, origin, routes, deadline).await,
    }
}

/// Serves the plaintext listener: MQTT, or MQTT over `ws://`.
pub(super) async fn plaintext_listener(
    listener: TcpListener,
    routes: Routes,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let shared = routes.shared.clone();
    accept_loop(
        listener,
        shared,
        (permits, None),
        tracker,
        move |stream, peer, permit, deadline| {
            let routes = routes.clone();
            async move {
                let _permit = permit;
                let mut first = [0; 1];
                let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
                let origin = conn::Peer::plain(peer);
                match peeked {
                    Ok(Ok(1)) if first[0] != CONNECT => {
                        // Boxed apart from its await, as on the TLS listeners.
                        let served = Box::pin(async {
                            let metrics = &routes.shared.metrics;
                            if let Some((opening, stream)) =
                                open(stream, peer, metrics, deadline).await
                            {
                                websocket(stream, opening, origin, &routes, deadline).await;
                            }
                        });
                        served.await;
                    }
                    _ => {
                        routes.shared.metrics.routed(Transport::Mqtt);
                        conn::serve(stream, origin, routes.shared, deadline).await;
                    }
                }
            }
        },
    )
    .await;
}

/// The client's first byte, read by `deadline`; a failure is counted.
async fn first_byte(
    tls: &mut TlsStream,
    peer: SocketAddr,
    metrics: &Metrics,
    deadline: Instant,
) -> Option<u8> {
    let mut b = [0; 1];
    let read = async { Ok((tls.read(&mut b).await? == 1).then_some(b[0])) };
    in_time(read, peer, metrics, deadline).await
}

/// Reads the first HTTP request's head by `deadline`; a failure is counted.
async fn open<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    metrics: &Metrics,
    deadline: Instant,
) -> Option<(Opening, S)> {
    let opening = in_time(upgrade::open(&mut stream), peer, metrics, deadline).await?;
    Some((opening, stream))
}

/// What `read` gives by `deadline`; a connection that fails or ends
/// before is counted, one too slow logged as well.
async fn in_time<T>(
    read: impl Future<Output = std::io::Result<Option<T>>>,
    peer: SocketAddr,
    metrics: &Metrics,
    deadline: Instant,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(Some(v))) => Some(v),
        Ok(_) => {
            metrics.handshake_failed(HandshakeFailure::Io);
            None
        }
        Err(_) => {
            metrics.handshake_failed(HandshakeFailure::Timeout);
            refused_handshake(peer, HandshakeFailure::Timeout, &"");
            None
        }
    }
}

/// Serves MQTT over a WebSocket upgrade, or answers a refused request. An
/// upgrade carrying a custom authorizer's token, or signed with SigV4 in
/// its URL, is authenticated first, and refused with 403 before any MQTT.
async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    opening: Opening,
    mut origin: conn::Peer,
    routes: &Routes,
    deadline: Instant,
) {
    let shared = &routes.shared;
    let metrics = &shared.metrics;
    let peer = origin.addr;
    let (request, early) = match opening {
        Opening::WebSocket { request, early } => (request, early),
        Opening::Refused { status, why } => {
            return bad_upgrade(stream, peer, metrics, (status, why), deadline).await;
        }
        Opening::Http(_) => {
            let why = "only MQTT over WebSockets is served here";
            return bad_upgrade(stream, peer, metrics, (404, why), deadline).await;
        }
    };
    match upgrade_grant(&request, &origin, routes, deadline).await {
        Ok(Some(grant)) => origin.credentials = Credentials::Granted(Box::new(grant)),
        Ok(None) => {}
        Err((label, why)) => return refuse_http(stream, peer, label, (403, &why), deadline).await,
    }
    let answered = tokio::time::timeout_at(deadline, upgrade::accept(&mut stream, &request));
    if !matches!(answered.await, Ok(Ok(()))) {
        metrics.handshake_failed(HandshakeFailure::Io);
        return;
    }
    metrics.routed(Transport::WebSocket);
    let max = shared.config.limits.max_packet_bytes;
    let ws = WsStream::new(stream, Role::Server, early, max);
    conn::serve(ws, origin, shared.clone(), deadline).await;
}

/// What an upgrade's credentials grant, if it carries any: a custom
/// authorizer's token (for a client without a certificate) or a SigV4
/// signature. A refusal is counted, and its log label and why returned.
async fn upgrade_grant(
    request: &upgrade::Upgrade,
    origin: &conn::Peer,
    routes: &Routes,
    deadline: Instant,
) -> Result<Option<Grant>, (&'static str, String)> {
    let presented = Presented::from_http(&request.headers, &request.query);
    if matches!(origin.credentials, Credentials::Unauthenticated)
        && presented.authorizer().is_some()
    {
        let asked = Asked {
            presented,
            connection: Connection {
                server_name: origin.domain_name.as_deref().map(str::to_owned),
                http: Some((request.headers.clone(), request.query.clone())),
                mqtt: None,
                id: crate::registry::identity::uuid_v4(),
            },
        };
        // Counted and logged there.
        return admission::custom(&routes.shared, asked, origin.addr, deadline)
            .await
            .map(Some)
            .map_err(|why| ("custom_auth", why));
    }
    if !sigv4::is_presigned(&request.query) {
        return Ok(None);
    }
    presigned(request, &routes.operators)
        .map(Some)
        .map_err(|e| {
            let failure = HandshakeFailure::BadSignature;
            routes.shared.metrics.handshake_failed(failure);
            let key = sigv4::presigned_key(&request.query).unwrap_or_default();
            (failure.label(), format!("{e} (access key `{key}`)"))
        })
}

/// Answers an HTTP request that is no upgrade to serve, counted as such.
async fn bad_upgrade<S: AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    metrics: &Metrics,
    refused: (u16, &str),
    deadline: Instant,
) {
    let failure = HandshakeFailure::BadUpgrade;
    metrics.handshake_failed(failure);
    refuse_http(stream, peer, failure.label(), refused, deadline).await;
}

/// Answers a request that cannot be served with `status`, logged with
/// `label` and why, and closes.
async fn refuse_http<S: AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    label: &'static str,
    (status, why): (u16, &str),
    deadline: Instant,
) {
    crate::refusal!(&peer.ip().to_string(), label, %peer, status, why, "HTTP request refused");
    let refused = upgrade::refuse(&mut stream, status, why);
    let _ = tokio::time::timeout_at(deadline, refused).await;
}

/// The grant of a presigned upgrade, checked against the operators' keys.
fn presigned(request: &upgrade::Upgrade, operators: &Operators) -> Result<Grant, sigv4::SigError> {
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let signed = sigv4::Request {
        method: "GET",
        path: &request.path,
        query: &request.query,
        headers: &headers,
        body: b"",
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    operators.grant(&signed, now)
}

/// Hands an HTTP connection to the device HTTPS endpoint, with what was
/// read of it, once its certificate is admitted.
async fn https(
    mut tls: Box<TlsStream>,
    read: Vec<u8>,
    origin: conn::Peer,
    permit: OwnedSemaphorePermit,
    routes: &Routes,
    deadline: Instant,
) {
    let shared = &routes.shared;
    let Credentials::Certificate(identity) = origin.credentials else {
        shared.metrics.principal_refused(Refused::Unauthenticated);
        let why = "the device HTTPS endpoint needs a client certificate";
        return refuse_http(tls, origin.addr, "unauthenticated", (403, why), deadline).await;
    };
    if admission::admit(shared, &identity, "").is_none() {
        return;
    }
    shared.metrics.routed(Transport::Https);
    tls.unread(&read);
    let peer = device::Peer {
        addr: origin.addr,
        identity: Some(Arc::from(identity)),
        domain_name: origin.domain_name.map(Arc::from),
    };
    let idle = Duration::from_secs(shared.config.https.idle_timeout_secs);
    let _ = routes
        .https
        .send((device::Conn::new(tls, permit, idle), peer))
        .await;
}

/// The TLS handshake, the client certificate's identity, the server name
/// the client asked for and whether it chose MQTT by ALPN, by `deadline`;
/// a failure is counted and logged.
async fn tls_accept(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    metrics: &Metrics,
    deadline: Instant,
) -> Option<(
    Box<TlsStream>,
    Option<Box<ClientIdentity>>,
    Option<Box<str>>,
    bool,
)> {
    // Boxed, and the stream after it: the handshake's state is freed once it
    // is done, and the connection's future holds a pointer to the stream.
    let accept = Box::pin(stream::accept(stream, config));
    let (tls, handshake) = match tokio::time::timeout_at(deadline, accept).await {
        Err(_) => {
            metrics.handshake_failed(HandshakeFailure::Timeout);
            refused_handshake(peer, HandshakeFailure::Timeout, &"");
            return None;
        }
        Ok(Err(e)) => {
            let reason = tls::classify(&e);
            metrics.handshake_failed(reason);
            refused_handshake(peer, reason, &e);
            return None;
        }
        Ok(Ok((s, handshake))) => (Box::new(s), handshake),
    };
    let domain_name = handshake.server_name;
    let mqtt_alpn = handshake.alpn.as_deref().is_some_and(tls::is_mqtt_alpn);
    // None only where certificates are optional: rustls verified the rest.
    let Some(leaf) = handshake.certificates.first() else {
        return Some((tls, None, domain_name, mqtt_alpn));
    };
    let Some(identity) = ClientIdentity::from_der(leaf) else {
        metrics.handshake_failed(HandshakeFailure::BadCertificate);
        refused_handshake(
            peer,
            HandshakeFailure::BadCertificate,
            &"unreadable certificate",
        );
        return None;
    };
    Some((tls, Some(Box::new(identity)), domain_name, mqtt_alpn))
}

/// The operator's line for a refused handshake: the source address, the
/// reason in words, and what TLS said.
fn refused_handshake(peer: SocketAddr, failure: HandshakeFailure, detail: &dyn std::fmt::Display) {
    let who = peer.ip().to_string();
    crate::refusal!(
        &who,
        failure.label(),
        %peer,
        why = tls::in_words(failure),
        detail = %detail,
        "TLS handshake refused"
    );
}
