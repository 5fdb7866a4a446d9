//! The connection task: one per client, from CONNECT to the end.
//!
//! One `select!` loop owns the socket and waits on shutdown, the session
//! table's control channel, the socket, the mailbox, the commit of the
//! oldest unacknowledged publish, and the keepalive deadline. Everything it
//! owes the client is encoded into one write buffer and written with one
//! call per loop turn, so a burst of deliveries costs one syscall.
//!
//! Acknowledgements of QoS 1/2 publishes go out in the order the publishes
//! arrived [MQTT-4.6.0-2], each only after the store has committed what the
//! publish made durable.

use super::admission;
use super::authz::{Authz, Custom, Grant};
use super::state::connect::Refused;
use super::state::end::End;
use super::state::inbound::{self, Admission};
use super::state::keep_alive::{self, KeepAlive};
use super::state::outbound::{self, Acked, ClientAck};
use super::state::subscribe::{self, Decision};
use super::state::{self, Judge};
use super::{Control, SessionData, Sessions};
use crate::authorizers::request::{Connection, Presented};
use crate::authorizers::{Asked, Authorizers, Refusal, Verdict};
use crate::codec::{
    self, Ack, ConnAck, Connect, Packet, Properties, Protocol, ProtocolError, Publish, QoS, SubAck,
    Subscribe, UnsubAck, Unsubscribe, reason,
};
use crate::config::Config;
use crate::events::{self, Events};
#[cfg(feature = "stage-timing")]
use crate::metrics::Stage;
use crate::metrics::{HandshakeFailure, LimitKind, Metrics, PacketType, QosLabel};
use crate::policy::PolicyStore;
use crate::policy::compile::ArnHead;
use crate::policy::eval::{Action, ResourceType};
use crate::registry::{ClientIdentity, Registry};
use crate::router::flow::Held;
use crate::router::{Delivery, Message, Origin, Router, Subscriber};
use crate::store::{Commit, Op, Store};
use crate::topic::Subscription;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a single write to a client may take before it is dropped as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection the gateway closes keeps reading so its last words arrive.
const LINGER: Duration = Duration::from_millis(500);

/// Most bytes taken from a connection per read.
const READ_CHUNK: usize = 32 * 1024;

thread_local! {
    /// Where reads land before what they brought is appended to the
    /// connection's own buffer: a connection waiting for its client holds no
    /// read buffer, and one read's bytes are kept in one allocation of their
    /// size (shared by the payloads decoded from it).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Reads what the stream has (at least a byte, or 0 at its end) and appends
/// it to `rbuf`.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = tokio::io::ReadBuf::new(scratch);
            std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            rbuf.extend_from_slice(buf.filled());
            std::task::Poll::Ready(Ok(buf.filled().len()))
        })
    })
    .await
}

/// Bytes of deliveries encoded per loop turn before the buffer is written.
const WRITE_BATCH: usize = 64 * 1024;

/// Tells every connection to look again at what it was admitted under:
/// the policies or the registry changed, or the gateway is shutting down.
///
/// One wait per connection for all three, where a wait on each source would
/// cost every connection several hundred bytes more: a connection re-checks
/// everything on any notice, which is cheap and rare.
#[derive(Debug, Default)]
pub struct Bulletin {
    notify: tokio::sync::Notify,
    posted: AtomicU64,
}

impl Bulletin {
    /// Wakes every connection, including those between admission and
    /// their first wait (they compare [`Bulletin::posted`]).
    pub fn post(&self) {
        self.posted.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// How many notices were posted so far.
    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::SeqCst)
    }

    /// Resolves at the next notice posted after this call.
    pub fn notice(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Posts a notice whenever the policies or the registry change, and
    /// once more when `shutdown` is cancelled; ends then.
    pub async fn relay(
        &self,
        mut policies: watch::Receiver<u64>,
        mut registry: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Ok(()) = policies.changed() => self.post(),
                Ok(()) = registry.changed() => self.post(),
            }
        }
        self.post();
    }
}

/// Everything a connection task shares with the rest of the gateway.
#[derive(Debug)]
pub struct Shared {
    /// Configuration in force.
    pub config: Arc<Config>,
    /// Subscriptions and retained messages.
    pub router: Arc<Router>,
    /// The session table.
    pub sessions: Arc<Sessions>,
    /// Durable state.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Connection ids.
    pub next_conn: AtomicU64,
    /// Certificates and things.
    pub registry: Arc<Registry>,
    /// The policies in force.
    pub policies: Arc<PolicyStore>,
    /// Posted when policies or the registry change, or on shutdown.
    pub bulletin: Bulletin,
    /// This gateway's partition, region and account, for ARNs.
    pub arn_head: ArnHead,
    /// CONNECT attempts by client id.
    pub connects: parking_lot::Mutex<state::rate::Table>,
    /// New connections by source address.
    pub arrivals: parking_lot::Mutex<state::rate::Table>,
    /// The lifecycle events service.
    pub events: Arc<Events>,
    /// Custom authorizers.
    pub authorizers: Arc<Authorizers>,
}

/// Client ids, and source addresses, whose rates are tracked at once.
pub const RATE_KEYS: usize = 65_536;

/// Resolves when the acknowledgement at the front may move: its commit is
/// done, or the subscriber it waits for drained (or the hold ran out). A
/// poll function, not an async fn: it is part of every connection's
/// future, and an idle connection should not pay for a wait it is not in.
fn front_ready(mut front: Option<&mut PendingAck>) -> impl Future<Output = Event> + '_ {
    std::future::poll_fn(move |cx| match front.as_deref_mut() {
        Some(PendingAck {
            commit: Some(c), ..
        }) => Pin::new(c)
            .poll(cx)
            .map(|r| Event::Committed(inbound::commit_failure(r.as_ref().ok()))),
        Some(PendingAck { held: Some(h), .. }) => h.poll_wait(cx).map(|()| Event::Turn),
        _ => Poll::Pending,
    })
}

/// Resolves when a throttled client may be read again (never if it is not).
fn wait_throttle(
    mut sleep: Option<&mut Pin<Box<tokio::time::Sleep>>>,
) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match sleep.as_deref_mut() {
        Some(s) => s.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Resolves when a held publisher may go on (never if nothing is held).
fn wait_held(mut held: Option<&mut Held>) -> impl Future<Output = Event> + '_ {
    std::future::poll_fn(move |cx| match held.as_deref_mut() {
        Some(h) => h.poll_wait(cx).map(|()| Event::Turn),
        None => Poll::Pending,
    })
}

/// Who is at the other end of a connection, as its transport established.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// How it authenticated.
    pub credentials: Credentials,
    /// The server name the client asked for in its ClientHello
    /// (`iot:DomainName`).
    pub domain_name: Option<Box<str>>,
}

/// How a client authenticated before CONNECT.
#[derive(Debug)]
pub enum Credentials {
    /// A verified client certificate.
    Certificate(Box<ClientIdentity>),
    /// A client of the plaintext listener: the anonymous policies.
    Anonymous,
    /// Policies granted another way (a SigV4-signed WebSocket upgrade).
    Granted(Box<Grant>),
    /// No certificate, on a listener where it is optional, and no other
    /// way: refused at CONNECT.
    Unauthenticated,
}

impl Peer {
    /// A client of a plaintext listener: an address and nothing more.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            credentials: Credentials::Anonymous,
            domain_name: None,
        }
    }
}

/// Reads CONNECT (within `deadline`), then serves the session until it ends.
pub async fn serve<S>(mut stream: S, from: Peer, shared: Arc<Shared>, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Each phase boxed: admission's state is freed once the session runs,
    // and the connection's task, which lives as long as the session, holds
    // a pointer to the session's future instead of room for every phase.
    // Each is boxed in a statement of its own: a future made in the
    // statement that awaits it keeps room in the caller's future too.
    let admission = Box::pin(admit(&mut stream, from, &shared, deadline));
    let Some((mut conn, connack, rbuf)) = admission.await else {
        return;
    };
    let session = Box::pin(conn.run(stream, rbuf, connack));
    session.await;
}

/// Reads CONNECT (within `deadline`) and decides on it; a refused client
/// is told why, and counted.
async fn admit<S>(
    stream: &mut S,
    mut from: Peer,
    shared: &Arc<Shared>,
    deadline: Instant,
) -> Option<(Box<Conn>, Box<ConnAck>, BytesMut)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = from.addr;
    let limits = &shared.config.limits;
    let mut rbuf = BytesMut::new();
    let connect = match tokio::time::timeout_at(
        deadline,
        read_connect(stream, &mut rbuf, limits.max_packet_bytes, &shared.metrics),
    )
    .await
    {
        Err(_) => {
            shared.metrics.handshake_failed(HandshakeFailure::Timeout);
            crate::refusal!(&peer.ip().to_string(), "connect_timeout", %peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(e)) => {
            shared
                .metrics
                .handshake_failed(HandshakeFailure::BadConnect);
            crate::refusal!(&peer.ip().to_string(), "bad_connect", %peer, error = %e, "bad CONNECT");
            if let ProtocolError::UnsupportedProtocol(_) = e {
                let (proto, code) = state::connect::UNKNOWN_LEVEL;
                let _ = refuse(stream, proto, code).await;
            }
            return None;
        }
        Ok(Ok(None)) => {
            shared.metrics.handshake_failed(HandshakeFailure::Io);
            return None;
        }
        Ok(Ok(Some(c))) => c,
    };
    if matches!(from.credentials, Credentials::Unauthenticated)
        && let Some(asked) = for_authorizer(shared, &connect, &from)
    {
        match admission::custom(shared, asked, peer, deadline).await {
            Ok(grant) => from.credentials = Credentials::Granted(Box::new(grant)),
            Err(_) => {
                let code = reason::BAD_USER_NAME_OR_PASSWORD;
                let _ = refuse(stream, connect.protocol, code).await;
                return None;
            }
        }
    }
    match Conn::accept(shared, connect, from) {
        Ok((conn, connack)) => Some((conn, connack, rbuf)),
        Err((proto, code)) => {
            shared.metrics.handshake_failed(HandshakeFailure::Refused);
            crate::refusal!(
                &peer.ip().to_string(),
                "connect_refused",
                %peer,
                code = format_args!("{code:#04x}"),
                "CONNECT refused"
            );
            let _ = refuse(stream, proto, code).await;
            None
        }
    }
}

/// What a custom authorizer is to be asked about a client without a
/// certificate or a signature; none if no authorizer is for it (its
/// username names none, and there is no default).
fn for_authorizer(shared: &Shared, c: &codec::Connect, from: &Peer) -> Option<Asked> {
    let username = c.username.as_deref();
    let presented = Presented::from_username(username.unwrap_or_default());
    if !shared.authorizers.applies(&presented) {
        return None;
    }
    Some(Asked {
        presented,
        connection: Connection {
            server_name: from.domain_name.as_deref().map(str::to_owned),
            http: None,
            mqtt: Some((
                username.map(str::to_owned),
                c.password.as_ref().map(|p| p.to_vec()),
                c.client_id.clone(),
            )),
            id: crate::registry::identity::uuid_v4(),
        },
    })
}

async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    proto: Protocol,
    code: u8,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }),
        proto,
        &mut buf,
    );
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
    metrics: &Metrics,
) -> Result<Option<Box<Connect>>, ProtocolError> {
    loop {
        if let Some(packet) = codec::decode(rbuf, Protocol::V5, max)? {
            metrics.packet_in(PacketType::Connect);
            return match packet {
                Packet::Connect(c) => Ok(Some(c)),
                _ => Err(ProtocolError::Violation(
                    "first packet is not CONNECT [MQTT-3.1.0-1]",
                )),
            };
        }
        match read_some(stream, rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => metrics.bytes_in.increment(n as u64),
        }
    }
}

/// An inbound QoS 1/2 publish whose acknowledgement is not sent yet.
struct PendingAck {
    pkid: u16,
    qos2: bool,
    code: u8,
    commit: Option<Commit>,
    /// A subscriber the message found falling behind: the acknowledgement
    /// waits until it drains or [`HOLD`](crate::router::flow::HOLD) passes.
    held: Option<Held>,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    protocol: Protocol,
    client_id: Arc<str>,
    clean_start: bool,
    expiry: u32,
    keep_alive_secs: u16,
    /// Boxed: most clients have none, and the connection lives long.
    will: Option<Box<codec::Will>>,
    /// Largest packet the client accepts.
    client_max_packet: usize,
    /// Outbound window: the client's Receive Maximum capped by our limit.
    send_window: usize,
    /// Topic aliases the client set up.
    aliases: state::aliases::Inbound,
    /// Topic aliases the gateway set up, at most the client's Topic Alias Maximum.
    out_aliases: state::aliases::Outbound,
    /// Whether reason strings may be sent (MQTT 5 Request Problem Information).
    problem_info: bool,
    acks: VecDeque<PendingAck>,
    /// A subscriber a QoS 0 publish found falling behind: the client's
    /// socket is not read until it drains or [`HOLD`](crate::router::flow::HOLD) passes.
    paced: Option<Held>,
    /// Packet identifiers in flight from an earlier connection and not yet
    /// sent again on this one, oldest first: they wait for room in the
    /// client's Receive Maximum like any other message [MQTT-3.3.4-9].
    resend: VecDeque<u16>,
    wbuf: BytesMut,
    peer: SocketAddr,
    authz: Authz,
    /// Who this connection's messages come from; made at its first publish.
    origin: Option<Arc<Origin>>,
    /// The bulletin notices posted before this connection last looked
    /// again at what it was admitted under.
    notices_seen: u64,
    /// Where the session goes when another connection takes it over.
    takeover: Option<oneshot::Sender<Box<SessionData>>>,
    /// Publish and subscribe rates, from the first publish or subscribe on.
    rates: Option<Box<state::rate::Rates>>,
    /// Over a rate that slows rather than refuses: nothing is read from the
    /// client until this sleep ends.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What was read since the last turn queued messages for subscribers.
    handed_off: bool,
    /// A custom authorizer's terms: when to ask it again, when to end.
    lifetime: Option<Box<Lifetime>>,
}

/// The life of a connection a grant bounds: one a custom authorizer
/// admitted is refreshed every `refreshAfterInSeconds` (the connection goes
/// on while the authorizer is asked) and ended after
/// `disconnectAfterInSeconds`; one over a signed WebSocket URL is ended
/// after 24 hours.
struct Lifetime {
    /// The authorizer's terms; none for a signed URL, which only ends.
    terms: Option<Box<Custom>>,
    ends_at: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    asking: Option<Asking>,
}

/// A refresh under way: the authorizer's answer to come.
type Asking = Pin<Box<dyn Future<Output = Result<Arc<Verdict>, Refusal>> + Send>>;

impl Lifetime {
    /// The lifetime a grant gives, if it bounds one.
    fn of(grant: &Grant, now: Instant) -> Option<Box<Self>> {
        let terms = grant.custom.clone();
        let ends_at = now + grant.lasts?;
        let next = terms
            .as_ref()
            .map_or(ends_at, |t| (now + t.refresh_after).min(ends_at));
        Some(Box::new(Self {
            terms,
            ends_at,
            timer: Box::pin(tokio::time::sleep_until(next)),
            asking: None,
        }))
    }
}

/// Resolves when a custom authorizer's refresh is answered or the
/// connection's time is up (never for a connection without a lifetime).
fn lifetime_event<'a>(
    lifetime: Option<&'a mut Box<Lifetime>>,
    authorizers: &'a Arc<Authorizers>,
) -> impl Future<Output = Event> + 'a {
    let mut lifetime = lifetime;
    std::future::poll_fn(move |cx| {
        let Some(l) = lifetime.as_deref_mut() else {
            return Poll::Pending;
        };
        if let Some(asking) = l.asking.as_mut()
            && let Poll::Ready(answer) = asking.as_mut().poll(cx)
        {
            l.asking = None;
            return Poll::Ready(Event::Refreshed(answer));
        }
        if l.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now();
        let Some(terms) = l.terms.as_ref().filter(|_| now < l.ends_at) else {
            return Poll::Ready(Event::Expired(if l.terms.is_some() {
                End::AuthExpired
            } else {
                End::WebSocketExpired
            }));
        };
        let (authorizers, asked) = (authorizers.clone(), terms.asked.clone());
        l.asking = Some(Box::pin(async move {
            authorizers
                .authorize(&asked.presented, &asked.connection)
                .await
        }));
        let next = (now + terms.refresh_after).min(l.ends_at);
        l.timer.as_mut().reset(next);
        // The new call and timer are polled on the next turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

impl Conn {
    /// Validates CONNECT and gives the connection with its CONNACK; on
    /// refusal returns the protocol and reason code for CONNACK.
    ///
    /// The connection (here), its CONNACK and its TLS stream (by the
    /// handshake) are boxed so that the task's future holds pointers to
    /// them, not copies at every await.
    fn accept(
        shared: &Arc<Shared>,
        c: Box<Connect>,
        from: Peer,
    ) -> Result<(Box<Self>, Box<ConnAck>), (Protocol, u8)> {
        // Unboxed here, so the CONNECT's allocation is not kept for the
        // life of the connection.
        let c = *c;
        // Every refusal before the policies are asked: counted by its limit.
        let refuse = |refused: Refused| {
            if let Some(limit) = refused.limit {
                shared.metrics.refused(limit);
            }
            (c.protocol, refused.code)
        };
        let n =
            state::connect::negotiate(&c, &shared.config, assigned_client_id).map_err(refuse)?;
        let limits = &shared.config.limits;
        if !shared.connects.lock().admit(
            Instant::now(),
            &n.client_id,
            limits.connects_per_second_per_client_id,
            limits.connect_burst_per_client_id,
        ) {
            return Err(refuse(Refused::CONNECT_RATE));
        }
        if n.expiry > 0
            && limits.max_sessions > 0
            && shared.sessions.len() >= limits.max_sessions
            && !shared.sessions.holds(&n.client_id)
        {
            return Err(refuse(Refused::SESSIONS));
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = n.client_id.into();
        let expiry = n.expiry;
        // Count notices before deciding, so that a change made meanwhile is
        // acted on by the serving loop.
        let notices_seen = shared.bulletin.posted();
        let authz = admission::connect(
            shared,
            &from.credentials,
            from.domain_name.as_deref(),
            &client_id,
            from.addr,
            expiry > 0,
            c.will.as_ref(),
        )
        .map_err(|r| (c.protocol, r.code))?;
        let lifetime = match &from.credentials {
            Credentials::Granted(g) => Lifetime::of(g, Instant::now()),
            _ => None,
        };
        let connack = Box::new(ConnAck {
            session_present: false,
            code: reason::SUCCESS,
            properties: n.connack,
        });
        let conn = Box::new(Self {
            shared: shared.clone(),
            id,
            protocol: c.protocol,
            client_id,
            clean_start: c.clean_start,
            expiry,
            keep_alive_secs: n.keep_alive_secs,
            will: c.will.map(Box::new),
            client_max_packet: n.client_max_packet,
            send_window: n.send_window,
            aliases: state::aliases::Inbound::default(),
            out_aliases: state::aliases::Outbound::new(n.out_alias_max),
            problem_info: n.problem_info,
            acks: VecDeque::new(),
            paced: None,
            resend: VecDeque::new(),
            wbuf: BytesMut::new(),
            peer: from.addr,
            authz,
            origin: None,
            notices_seen,
            takeover: None,
            rates: None,
            throttle: None,
            handed_off: false,
            lifetime,
        });
        Ok((conn, connack))
    }

    /// Checks a request against the connection's policies (recompiled first
    /// if they changed); denials are counted and logged.
    fn allows(&mut self, action: Action, ty: ResourceType, name: &str) -> bool {
        self.authz.refresh(&self.shared.arn_head);
        self.authz
            .allows(&self.shared.metrics, &self.client_id, action, ty, name)
    }

    /// The connection's rates, made at its first publish or subscribe.
    fn rates(&mut self, limits: &crate::config::Limits, now: Instant) -> &mut state::rate::Rates {
        self.rates
            .get_or_insert_with(|| Box::new(state::rate::Rates::new(limits, now)))
    }

    /// Who this connection is, for the operator's log.
    fn who(&self) -> &str {
        self.authz.principal_id().unwrap_or(&self.client_id)
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.wbuf);
        self.shared
            .metrics
            .packet_out(PacketType::numbered(p.type_number()));
    }

    fn reason(&self, text: &str) -> Option<String> {
        (self.protocol == Protocol::V5 && self.problem_info).then(|| text.to_owned())
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        mut rbuf: BytesMut,
        mut connack: Box<ConnAck>,
    ) {
        let shared = self.shared.clone();
        let metrics = shared.metrics.clone();
        let (control_tx, mut control_rx) = oneshot::channel();
        let opened = shared
            .sessions
            .open(
                self.client_id.clone(),
                self.clean_start,
                self.expiry,
                self.protocol,
                self.id,
                control_tx,
            )
            .await;
        let mut data = opened.data;
        connack.session_present = opened.present;
        self.send(&Packet::ConnAck(*connack));
        // Routed before the client's first packet is read: `connected`
        // comes before anything the client publishes.
        if shared.events.presence() {
            let event = events::Event::Connected(self.described());
            // Boxed, apart from its await: the connection's future has no
            // room for it.
            let announced = Box::pin(shared.events.announce(event));
            announced.await;
        }
        metrics.connections.increment(1.0);
        metrics.connections_total.increment(1);
        tracing::debug!(
            client_id = %self.client_id,
            conn = self.id,
            peer = %self.peer,
            principal = self.authz.principal_id(),
            "session started"
        );
        // Resend what was in flight when the client went away [MQTT-4.4.0-1].
        self.resend = data.inflight.iter().map(|p| p.pkid).collect();
        self.resend_some(&mut data);
        let end = self
            .serve(&mut stream, &mut rbuf, &mut data, &mut control_rx)
            .await;
        metrics.connections.decrement(1.0);
        self.finish(stream, end, data, &mut control_rx).await;
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        data: &mut SessionData,
        control: &mut oneshot::Receiver<Control>,
    ) -> End {
        let shared = self.shared.clone();
        let metrics = shared.metrics.clone();
        let max_packet = shared.config.limits.max_packet_bytes;
        let mailbox = data.mailbox.clone();
        let mut idle = KeepAlive::new(self.keep_alive_secs, Instant::now());
        let mut batch = Vec::new();
        let mut mail_ready = true;
        // What the connection waits for its whole life is registered once,
        // not on every turn of the loop, and the keep-alive timer moves only
        // when it fires.
        let notice = shared.bulletin.notice();
        let keep_alive = tokio::time::sleep_until(idle.deadline());
        let kicked = mailbox.kicked();
        tokio::pin!(notice, keep_alive, kicked);
        // Created before this check, the notice wait sees whatever is posted after it.
        let mut noticed =
            shared.bulletin.posted() != self.notices_seen || shared.shutdown.is_cancelled();
        loop {
            if std::mem::take(&mut noticed) {
                if let Err(end) = self.look_again(&shared) {
                    return end;
                }
            }
            if self
                .paced
                .as_ref()
                .is_some_and(|h| h.is_over(Instant::now()))
            {
                self.paced = None;
            }
            // Decode and handle every whole packet already read, unless a
            // subscriber of this client's QoS 0 messages is to catch up first:
            // then what is read waits, and the subscriber's mailbox outgrows
            // its watermark by one message per publisher at most. The clock
            // is read once for all the packets one read brought.
            let mut read_at = None;
            while self.paced.is_none() && self.throttle.is_none() {
                match codec::decode(rbuf, self.protocol, max_packet) {
                    Ok(Some(p)) => {
                        let now = *read_at.get_or_insert_with(Instant::now);
                        idle.heard(now);
                        #[cfg(feature = "stage-timing")]
                        let publish = matches!(p, Packet::Publish(_));
                        if let Err(end) = self.handle(&shared, p, data, now) {
                            return end;
                        }
                        #[cfg(feature = "stage-timing")]
                        if publish {
                            metrics.stage(Stage::Route, now.elapsed());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, ProtocolError::PacketTooLarge { .. }) {
                            metrics.refused(LimitKind::Packet);
                        }
                        return e.into();
                    }
                }
            }
            // The subscribers these publishes were queued for run first: on
            // the same worker thread they would otherwise wait for this
            // connection to write its acknowledgements (a socket write each)
            // and to read again, which at low rates is most of a message's
            // time in the gateway. Once per read, however many it brought.
            if std::mem::take(&mut self.handed_off) {
                tokio::task::yield_now().await;
            }
            // Move mail into the write buffer while the window has room,
            // up to a buffer's worth per turn so reads are not starved.
            #[cfg(feature = "stage-timing")]
            let mut taken_at = None;
            if mail_ready {
                while self.wbuf.len() < WRITE_BATCH {
                    let room = data.inflight.room(self.send_window);
                    #[cfg(feature = "stage-timing")]
                    let since = mailbox.waiting_since();
                    mailbox.drain(&mut batch, room);
                    if batch.is_empty() {
                        break;
                    }
                    let now = Instant::now();
                    #[cfg(feature = "stage-timing")]
                    {
                        if let Some(since) = since {
                            metrics.stage(Stage::Handoff, now - since);
                        }
                        taken_at.get_or_insert(now);
                    }
                    for d in batch.drain(..) {
                        self.deliver(d, data, now);
                    }
                }
                // Whatever is left waits for the window or the next turn.
                mail_ready = !mailbox.is_empty();
            }
            if let Err(end) = self.flush_ready_acks(&mut data.qos2_in) {
                return end;
            }
            if !self.wbuf.is_empty() {
                let n = self.wbuf.len();
                let write = tokio::time::timeout(WRITE_TIMEOUT, async {
                    stream.write_all(&self.wbuf).await?;
                    stream.flush().await
                });
                tokio::pin!(write);
                let written = loop {
                    tokio::select! {
                        biased;
                        r = &mut write => break r,
                        () = &mut kicked => {
                            kicked.set(mailbox.kicked());
                            if mailbox.take_slow() {
                                return End::SlowConsumer;
                            }
                        }
                        // A stuck write must not keep a takeover or a shutdown waiting.
                        Ok(Control::TakeOver(reply)) = &mut *control, if !control.is_terminated() => {
                            self.takeover = Some(reply);
                            return End::TakenOver;
                        }
                        () = &mut notice => {
                            notice.set(shared.bulletin.notice());
                            if shared.shutdown.is_cancelled() {
                                return End::Shutdown;
                            }
                            noticed = true;
                        }
                    }
                };
                match written {
                    Ok(Ok(())) => {
                        metrics.bytes_out.increment(n as u64);
                        #[cfg(feature = "stage-timing")]
                        if let Some(taken_at) = taken_at {
                            metrics.stage(Stage::Write, taken_at.elapsed());
                        }
                    }
                    _ => return End::Io,
                }
                self.wbuf.clear();
            }
            let window_open = data.inflight.room(self.send_window) > 0;
            // Stop reading while too many acknowledgements wait for the
            // store, or while a subscriber of this client's QoS 0 messages
            // catches up.
            let reading = self.acks.len() < usize::from(shared.config.limits.max_inflight) * 2
                && self.paced.is_none()
                && self.throttle.is_none();
            // While it waits, a connection holds no buffer it does not need:
            // idle connections cost little, however many there are.
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                *rbuf = BytesMut::new();
            }
            if !mail_ready && self.wbuf.capacity() > 0 {
                self.wbuf = BytesMut::new();
            }
            let front = self.acks.front_mut();
            let event = tokio::select! {
                biased;
                () = &mut notice => {
                    notice.set(shared.bulletin.notice());
                    Event::Notice
                }
                Ok(Control::TakeOver(reply)) = &mut *control, if !control.is_terminated() => {
                    Event::TakeOver(reply)
                }
                ev = front_ready(front) => ev,
                ev = wait_held(self.paced.as_mut()) => ev,
                () = wait_throttle(self.throttle.as_mut()) => {
                    self.throttle = None;
                    Event::Turn
                }
                ev = lifetime_event(self.lifetime.as_mut(), &shared.authorizers) => ev,
                res = read_some(stream, rbuf), if reading => Event::Read(res),
                _ = mailbox.notified(), if !mail_ready => Event::Mail,
                _ = std::future::ready(()), if window_open && mail_ready => Event::Mail,
                () = &mut kicked => {
                    kicked.set(mailbox.kicked());
                    Event::Slow
                }
                () = &mut keep_alive => match idle.check(Instant::now(), reading) {
                    keep_alive::Check::Later(at) => {
                        keep_alive.as_mut().reset(at);
                        Event::Turn
                    }
                    keep_alive::Check::Expired => Event::KeepAlive,
                }
            };
            match event {
                Event::TakeOver(reply) => {
                    self.takeover = Some(reply);
                    return End::TakenOver;
                }
                Event::Committed(code) => {
                    if let Some(front) = self.acks.front_mut() {
                        front.commit = None;
                        if let Some(code) = code {
                            front.code = code;
                        }
                    }
                }
                // The loop's next turn sends what is no longer held, or
                // waits again.
                Event::Turn => {}
                Event::Read(Ok(0) | Err(_)) => return End::Io,
                Event::Read(Ok(n)) => metrics.bytes_in.increment(n as u64),
                Event::Mail => mail_ready = true,
                Event::KeepAlive => return End::KeepAlive,
                Event::Slow => {
                    if mailbox.take_slow() {
                        return End::SlowConsumer;
                    }
                }
                Event::Notice => noticed = true,
                Event::Expired(end) => return end,
                Event::Refreshed(Ok(verdict)) => {
                    self.authz.regrant(&verdict, &shared.arn_head);
                    // Its new policies must still allow the connection.
                    noticed = true;
                }
                Event::Refreshed(Err(refusal)) => {
                    crate::refusal!(
                        self.who(),
                        "custom_auth",
                        client_id = %self.client_id,
                        why = %refusal,
                        "custom authorizer refused on refresh"
                    );
                    return End::NotAuthorized("the custom authorizer refused on refresh");
                }
            }
        }
    }

    /// Acts on bulletin notices: the connection ends if the gateway is
    /// shutting down, its certificate was revoked or deactivated, or its
    /// iot:Connect is no longer allowed; otherwise it takes its changed
    /// attachments (policies are refreshed by the check itself).
    fn look_again(&mut self, shared: &Shared) -> Result<(), End> {
        self.notices_seen = shared.bulletin.posted();
        if shared.shutdown.is_cancelled() {
            return Err(End::Shutdown);
        }
        if let Some(cert) = self.authz.certificate_id().map(str::to_owned) {
            match shared.registry.principal(&cert, &self.client_id) {
                Ok(p) => {
                    if !self.authz.set_principal(p, &shared.arn_head) {
                        return Err(End::NotAuthorized("policy context too long"));
                    }
                }
                Err(_) => return Err(End::Revoked),
            }
        }
        let id = self.client_id.clone();
        if !self.allows(Action::Connect, ResourceType::Client, &id) {
            return Err(End::NotAuthorized("connect no longer authorized"));
        }
        Ok(())
    }

    /// Sends every acknowledgement at the front whose commit is done.
    ///
    /// A publish the store could not make durable is refused: MQTT 5 says so
    /// in the ack; MQTT 3.1.1 has no failure ack, so the connection is closed
    /// unacknowledged and the client sends the message again.
    fn flush_ready_acks(&mut self, received: &mut inbound::Received) -> Result<(), End> {
        while let Some(front) = self.acks.front_mut() {
            if let Some(commit) = front.commit.as_mut() {
                let code = match commit.try_recv() {
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Ok(()),
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        inbound::commit_failure(None)
                    }
                    Ok(r) => inbound::commit_failure(Some(&r)),
                };
                if let Some(code) = code {
                    front.code = code;
                }
                front.commit = None;
            }
            if let Some(h) = &front.held {
                if !h.is_over(Instant::now()) {
                    return Ok(());
                }
                front.held = None;
            }
            let ack = inbound::acknowledgement(
                front.pkid,
                front.qos2,
                front.code,
                self.protocol,
                received,
            )?;
            self.acks.pop_front();
            self.send(&ack);
        }
        Ok(())
    }

    /// Takes `shared` from the caller's own handle so that no packet pays
    /// for reference counting on state every connection shares.
    fn handle(
        &mut self,
        shared: &Shared,
        p: Packet,
        data: &mut SessionData,
        now: Instant,
    ) -> Result<(), End> {
        let metrics = &shared.metrics;
        metrics.packet_in(PacketType::numbered(p.type_number()));
        match p {
            Packet::Publish(p) => self.publish(shared, p, data, now),
            Packet::PubAck(a) => {
                self.client_ack(ClientAck::PubAck, &a, data);
                Ok(())
            }
            Packet::PubRec(a) => {
                self.client_ack(ClientAck::PubRec, &a, data);
                Ok(())
            }
            Packet::PubComp(a) => {
                self.client_ack(ClientAck::PubComp, &a, data);
                Ok(())
            }
            Packet::PubRel(a) => {
                let comp = data.qos2_in.release(a.pkid);
                self.send(&comp);
                Ok(())
            }
            Packet::Subscribe(s) => self.subscribe(shared, s, data, now),
            Packet::Unsubscribe(u) => {
                self.unsubscribe(shared, u, data);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                let max = shared.config.mqtt.max_session_expiry_secs;
                let (end, expiry) = End::client_disconnect(&d, self.expiry, max)?;
                if let Some(e) = expiry {
                    data.expiry = e;
                    data.mailbox.set_persistent(e > 0);
                }
                Err(end)
            }
            p => Err(End::unexpected(&p)),
        }
    }

    /// The client acknowledged a message of the gateway's: the store
    /// forgets a completed message and its room in the window goes to the
    /// next message waiting to be resent.
    fn client_ack(&mut self, kind: ClientAck, a: &Ack, data: &mut SessionData) {
        let (acked, reply) = data.inflight.acknowledged(kind, a);
        if let Some(reply) = reply {
            self.send(&reply);
        }
        if !self.resend.is_empty() {
            // The client may acknowledge what it got before it reconnected.
            self.resend.retain(|&p| p != a.pkid);
        }
        if let Acked::Done(seq) = acked {
            self.forget(seq, data);
            self.resend_some(data);
        }
    }

    /// Deletes a completed message from the store (`seq` 0: never stored).
    fn forget(&self, seq: u64, data: &SessionData) {
        if seq != 0 {
            self.shared
                .store
                .enqueue(vec![Op::DelQueued(data.mailbox.client_id.clone(), seq)]);
        }
    }

    /// Resends messages from an earlier connection while the client's
    /// Receive Maximum has room.
    fn resend_some(&mut self, data: &mut SessionData) {
        while data.inflight.has_room(self.send_window, self.resend.len()) {
            let Some(pkid) = self.resend.pop_front() else {
                return;
            };
            let Some(p) = data.inflight.get(pkid) else {
                continue;
            };
            if p.released {
                self.send(&Packet::PubRel(Ack::ok(pkid)));
                continue;
            }
            let d = p.delivery.clone();
            if self.allows(Action::Receive, ResourceType::Topic, d.msg.topic.as_str()) {
                // Once sent, a message goes out again even if it has since expired.
                let remaining = d.msg.remaining(Instant::now()).unwrap_or(Some(1));
                self.write_publish(&d, pkid, true, remaining);
            } else {
                // This connection may not receive it (another principal, or a
                // revoked permission): it leaves the session.
                if let Acked::Done(seq) = data.inflight.complete(pkid) {
                    self.forget(seq, data);
                }
            }
        }
    }

    fn publish(
        &mut self,
        shared: &Shared,
        mut p: Publish,
        data: &mut SessionData,
        now: Instant,
    ) -> Result<(), End> {
        let metrics = &shared.metrics;
        let judge = Judge {
            protocol: self.protocol,
            config: &shared.config,
            metrics,
        };
        let unacked = self.acks.iter().filter(|a| !a.qos2).count();
        let (authz, client_id) = (&mut self.authz, &self.client_id);
        let allowed = |topic: &str, retain: bool| {
            authz.refresh(&shared.arn_head);
            authz.allows(
                metrics,
                client_id,
                Action::Publish,
                ResourceType::Topic,
                topic,
            ) && (!retain
                || authz.allows(
                    metrics,
                    client_id,
                    Action::RetainPublish,
                    ResourceType::Topic,
                    topic,
                ))
        };
        match judge.admit(&mut p, &mut self.aliases, &data.qos2_in, unacked, allowed)? {
            Admission::Route => {}
            Admission::Drop => return Ok(()),
            Admission::Refuse { code, why } => {
                crate::refusal!(
                    self.who(),
                    "publish_refused",
                    client_id = &*self.client_id,
                    topic = p.topic.as_str(),
                    code = format_args!("{code:#04x}"),
                    why,
                    "publish refused"
                );
                let ack = inbound::refusal(p.pkid, p.qos, code, self.reason(why));
                self.send(&ack);
                return Ok(());
            }
            Admission::Duplicate => {
                // Acknowledged again, in order, and counted once towards
                // Receive Maximum.
                self.acks.push_back(PendingAck {
                    pkid: p.pkid,
                    qos2: true,
                    code: reason::SUCCESS,
                    commit: None,
                    held: None,
                });
                return Ok(());
            }
        }
        let limits = &shared.config.limits;
        let protocol = self.protocol;
        let (verdict, limit) =
            self.rates(limits, now)
                .publish(now, p.payload.len(), p.qos, protocol, limits);
        if let Some(kind) = limit {
            metrics.refused(kind);
            crate::refusal!(
                self.who(),
                kind.label(),
                client_id = &*self.client_id,
                topic = p.topic.as_str(),
                "over a rate limit"
            );
        }
        match verdict {
            state::rate::Publish::Pass => {}
            state::rate::Publish::Slow(until) => {
                self.throttle = Some(Box::pin(tokio::time::sleep_until(until)));
            }
            state::rate::Publish::Drop => return Ok(()),
            state::rate::Publish::Refuse(code) => {
                let why = "more publishes a second than the connection may send";
                let ack = inbound::refusal(p.pkid, p.qos, code, self.reason(why));
                self.send(&ack);
                return Ok(());
            }
        }
        metrics.message_in(QosLabel::of(p.qos as u8));
        let (pkid, qos) = (p.pkid, p.qos);
        let origin = self.origin(data.mailbox.session_id);
        let msg = Arc::new(Message::published(p, now, origin));
        let (code, commit, pressure) = match shared.router.publish(&msg, now) {
            Ok(routed) => {
                self.handed_off |= routed.matched > 0;
                (
                    inbound::routed_code(Ok(routed.matched), self.protocol),
                    routed.commit,
                    routed.pressure,
                )
            }
            Err(e) => {
                crate::refusal!(
                    self.who(),
                    "publish_refused",
                    client_id = &*self.client_id,
                    error = %e,
                    "publish refused"
                );
                (inbound::routed_code(Err(&e), self.protocol), None, None)
            }
        };
        if qos == QoS::AtMostOnce {
            if self.paced.is_none() {
                self.paced = pressure.map(|mailbox| Held::new(mailbox, now));
            }
            return Ok(());
        }
        if qos == QoS::ExactlyOnce {
            data.qos2_in.routed(pkid);
        }
        self.acks.push_back(PendingAck {
            pkid,
            qos2: qos == QoS::ExactlyOnce,
            code,
            commit,
            held: pressure.map(|mailbox| Held::new(mailbox, now)),
        });
        Ok(())
    }

    /// Who this connection's messages come from, made once.
    fn origin(&mut self, session: u64) -> Arc<Origin> {
        if let Some(o) = &self.origin {
            return o.clone();
        }
        let o = Arc::new(Origin {
            session,
            client_id: Some(self.client_id.clone()),
            principal: self.authz.principal_id().map(Arc::from),
            ..Origin::default()
        });
        self.origin = Some(o.clone());
        o
    }

    fn subscribe(
        &mut self,
        shared: &Shared,
        s: Subscribe,
        data: &mut SessionData,
        now: Instant,
    ) -> Result<(), End> {
        let metrics = &shared.metrics;
        let judge = Judge {
            protocol: self.protocol,
            config: &shared.config,
            metrics,
        };
        let sub_id = s.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut refusals = Vec::new();
        // The granted filters, for a subscriptions event.
        let mut subscribed = shared.events.subscriptions().then(Vec::new);
        for (i, (raw, opts)) in s.filters.iter().enumerate() {
            let session = (
                data.subscriptions.len(),
                data.subscriptions.contains_key(raw.as_str()),
            );
            let allowed =
                |filter: &str| self.allows(Action::Subscribe, ResourceType::TopicFilter, filter);
            let limits = &shared.config.limits;
            let (parsed, granted) = match judge.subscription(i, raw, opts, session, allowed)? {
                Decision::Grant(..) if !self.rates(limits, now).subscribe(now, limits) => {
                    metrics.refused(LimitKind::SubscribeRate);
                    crate::refusal!(
                        self.who(),
                        LimitKind::SubscribeRate.label(),
                        client_id = &*self.client_id,
                        filter = raw.as_str(),
                        "over a rate limit"
                    );
                    codes.push(reason::QUOTA_EXCEEDED);
                    refusals.push(format!("{raw}: too many subscriptions a second"));
                    continue;
                }
                Decision::Grant(parsed, granted) => (parsed, granted),
                Decision::Refuse(code, why) => {
                    crate::refusal!(
                        self.who(),
                        "subscribe_refused",
                        client_id = &*self.client_id,
                        code = format_args!("{code:#04x}"),
                        why,
                        "subscription refused"
                    );
                    codes.push(code);
                    refusals.push(why);
                    continue;
                }
            };
            let new = shared.router.subscribe(
                parsed.filter,
                parsed.share,
                Subscriber {
                    mailbox: data.mailbox.clone(),
                    options: granted,
                    sub_id,
                },
            );
            data.subscriptions.insert(raw.clone(), (granted, sub_id));
            codes.push(granted.qos as u8);
            if let Some(s) = subscribed.as_mut() {
                s.push(raw.clone());
            }
            if subscribe::sends_retained(&parsed, opts, new) {
                retained.push((parsed.filter.to_owned(), granted.qos));
            }
        }
        shared.sessions.persist(data);
        let properties = Properties {
            reason_string: if refusals.is_empty() {
                None
            } else {
                self.reason(&refusals.join("; "))
            },
            ..Properties::default()
        };
        self.send(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
            properties,
        }));
        if let Some(filters) = subscribed.filter(|f| !f.is_empty()) {
            shared
                .events
                .post(events::Event::Subscribed(self.described(), filters));
        }
        // Retained messages follow the SUBACK, flagged RETAIN [MQTT-3.3.1-8],
        // through the mailbox so that they respect the client's window.
        for (filter, qos) in retained {
            for msg in shared.router.retained(&filter) {
                let d = Delivery {
                    qos: msg.qos.min(qos),
                    msg,
                    retain: true,
                    sub_ids: sub_id.into_iter().collect(),
                    seq: 0,
                };
                data.mailbox.push(d, metrics);
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, shared: &Shared, u: Unsubscribe, data: &mut SessionData) {
        let codes = u
            .filters
            .iter()
            .map(|raw| match Subscription::parse(raw) {
                Ok(s) => {
                    let existed = data.subscriptions.remove(raw.as_str()).is_some();
                    if existed {
                        shared
                            .router
                            .unsubscribe(s.filter, s.share, data.mailbox.session_id);
                    }
                    subscribe::unsubscribed(true, existed)
                }
                Err(_) => subscribe::unsubscribed(false, false),
            })
            .collect();
        shared.sessions.persist(data);
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            codes,
            properties: Properties::default(),
        }));
        if shared.events.subscriptions() {
            shared
                .events
                .post(events::Event::Unsubscribed(self.described(), u.filters));
        }
    }

    /// What this connection's lifecycle events say of it: made when an
    /// event is, so that a connection holds nothing for them.
    fn described(&self) -> events::Connection {
        events::Connection {
            client_id: self.client_id.clone(),
            session: self.shared.events.session_identifier(self.id),
            principal: self.authz.principal_id().map(Arc::from),
            thing: self.authz.thing_name().map(str::to_owned),
            ip: self.peer.ip(),
            version: self.id,
        }
    }

    /// Encodes one delivery, assigning a packet id for QoS 1/2.
    fn deliver(&mut self, d: Delivery, data: &mut SessionData, now: Instant) {
        // iot:Receive at every delivery, so a revoked permission stops
        // delivery on existing subscriptions (spec §1.3).
        if !self.allows(Action::Receive, ResourceType::Topic, d.msg.topic.as_str()) {
            self.forget(d.seq, data);
            return;
        }
        let remaining = match outbound::deliverable(&d, now, self.protocol, self.client_max_packet)
        {
            Ok(remaining) => remaining,
            Err(drop) => {
                self.shared.metrics.count_drop(drop);
                self.forget(d.seq, data);
                return;
            }
        };
        if d.qos == QoS::AtMostOnce {
            self.write_publish(&d, 0, false, remaining);
            return;
        }
        match data.inflight.send(d) {
            Ok(p) => self.write_publish(&p.delivery, p.pkid, false, remaining),
            // Every packet id is in use: wait for acknowledgements.
            Err(d) => data.mailbox.requeue_front(std::iter::once(d)),
        }
    }

    /// Encodes one PUBLISH; `remaining` is its Message Expiry Interval.
    fn write_publish(&mut self, d: &Delivery, pkid: u16, dup: bool, remaining: Option<u32>) {
        let mut v = outbound::view(d, pkid, dup, remaining);
        match self.out_aliases.assign(&d.msg.topic) {
            state::aliases::Outgoing::Topic => {}
            state::aliases::Outgoing::Set(alias) => v.topic_alias = Some(alias),
            state::aliases::Outgoing::Alias(alias) => {
                v.topic = b"";
                v.topic_alias = Some(alias);
            }
        }
        codec::encode_publish(&v, self.protocol, &mut self.wbuf);
        let metrics = &self.shared.metrics;
        metrics.packet_out(PacketType::Publish);
        metrics.message_out(QosLabel::of(d.qos as u8));
    }

    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        end: End,
        mut data: Box<SessionData>,
        control: &mut oneshot::Receiver<Control>,
    ) {
        if end.is_protocol_error() {
            self.shared.metrics.protocol_errors.increment(1);
        }
        match end.refusal() {
            Some(kind) => crate::refusal!(
                self.who(),
                kind,
                client_id = &*self.client_id,
                code = format_args!("{:#04x}", end.reason_code().unwrap_or(0)),
                why = end.why(),
                "connection closed"
            ),
            None => tracing::debug!(
                client_id = &*self.client_id,
                conn = self.id,
                reason = end.why(),
                "session ended"
            ),
        }
        // Acknowledge what is already durable; the rest the client will resend.
        let _ = self.flush_ready_acks(&mut data.qos2_in);
        if let Some(d) = end.disconnect(self.protocol, self.reason(end.why())) {
            self.send(&Packet::Disconnect(d));
        }
        if !self.wbuf.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stream.write_all(&self.wbuf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        if end.reason_code().is_some() {
            // Read what the client still sends for a moment: closing with
            // unread data makes the kernel reset the connection, and the
            // client would lose the DISCONNECT that says why.
            let _ = tokio::time::timeout(LINGER, async {
                let mut unread = BytesMut::new();
                while let Ok(n) = read_some(&mut stream, &mut unread).await {
                    if n == 0 {
                        break;
                    }
                    unread.clear();
                }
            })
            .await;
        }
        drop(stream);
        if let Some(will) = self.will.take() {
            // Only if its topic is still allowed now.
            let topic = will.topic.as_str();
            let allowed = || {
                self.allows(Action::Publish, ResourceType::Topic, topic)
                    && (!will.retain
                        || self.allows(Action::RetainPublish, ResourceType::Topic, topic))
            };
            if let Some(delay) = state::will::delay(&end, will.delay_interval, data.expiry, allowed)
            {
                let origin = self.origin(data.mailbox.session_id);
                data.pending_will = self.shared.sessions.schedule_will(*will, origin, delay);
            }
        }
        // After the connection's last message and its will (when it goes
        // at once) were routed.
        if self.shared.events.presence() {
            let by_client = matches!(end, End::Client { .. });
            let event =
                events::Event::Disconnected(self.described(), end.disconnect_reason(), by_client);
            self.shared.events.send(event).await;
        }
        let sessions = self.shared.sessions.clone();
        if let Some(reply) = self.takeover.take() {
            data.mailbox.set_online(false);
            if let Err(d) = reply.send(data) {
                sessions.close(self.id, d, control);
            }
            return;
        }
        sessions.close(self.id, data, control);
    }
}

/// What woke the connection loop.
enum Event {
    TakeOver(oneshot::Sender<Box<SessionData>>),
    Committed(Option<u8>),
    /// Nothing to handle: the loop's next turn looks again.
    Turn,
    Read(std::io::Result<usize>),
    Mail,
    KeepAlive,
    Slow,
    /// A bulletin notice: look again at what the connection was admitted under.
    Notice,
    /// A custom authorizer answered a refresh.
    Refreshed(Result<Arc<Verdict>, Refusal>),
    /// The connection's lifetime is over: how it ends.
    Expired(End),
}

/// A client id for a client that sent none: random, so it is unique across restarts too.
fn assigned_client_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("edgegate-{}", crate::registry::identity::hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The events of a grant's lifetime, each with when it came (seconds
    /// from the start), until it ends.
    async fn lived(grant: &Grant) -> Vec<(&'static str, u64)> {
        let config = Config::parse("", std::path::Path::new(".")).expect("config");
        let authorizers = Arc::new(
            Authorizers::load(
                &config,
                (None, &[]),
                crate::rules::actions::http::client(None).expect("client"),
                Arc::new(Metrics::new()),
            )
            .expect("none"),
        );
        let start = Instant::now();
        let mut lifetime = Lifetime::of(grant, start);
        let mut seen = Vec::new();
        for _ in 0..10 {
            let event = lifetime_event(lifetime.as_mut(), &authorizers).await;
            let at = (Instant::now() - start).as_secs();
            match event {
                Event::Refreshed(Err(Refusal::Unknown)) => seen.push(("refreshed", at)),
                Event::Expired(End::AuthExpired) => {
                    return [seen, vec![("auth expired", at)]].concat();
                }
                Event::Expired(End::WebSocketExpired) => {
                    return [seen, vec![("websocket expired", at)]].concat();
                }
                _ => seen.push(("other", at)),
            }
        }
        seen
    }

    fn grant(custom: Option<Box<Custom>>, lasts: Option<Duration>) -> Grant {
        Grant {
            principal: "p".into(),
            store: Arc::new(PolicyStore::new(Default::default())),
            policies: Vec::new(),
            vars: Vec::new(),
            custom,
            lasts,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_custom_authorizers_connection_is_refreshed_then_ended_on_time() {
        // An authorizer that is gone: every refresh is refused at once.
        let terms = Box::new(Custom {
            asked: Asked {
                presented: Presented::from_username("u?x-amz-customauthorizer-name=Gone"),
                connection: Connection::default(),
            },
            refresh_after: Duration::from_secs(300),
        });
        assert_eq!(
            lived(&grant(Some(terms), Some(Duration::from_secs(700)))).await,
            [
                ("refreshed", 300),
                ("refreshed", 600),
                ("auth expired", 700)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_signed_websocket_connection_ends_after_a_day() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            lived(&grant(None, Some(day))).await,
            [("websocket expired", 86_400)]
        );
    }
}
