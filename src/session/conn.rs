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

use super::authz::{Authz, ConnectFacts};
use super::state::{self, Unpublishable};
use super::{Control, SessionData, Sessions};
use crate::codec::{
    self, Ack, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, ProtocolError, Publish,
    PublishView, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, reason,
};
use crate::config::Config;
use crate::metrics::{DropReason, HandshakeFailure, LimitKind, Metrics, PacketType, QosLabel};
use crate::policy::PolicyStore;
use crate::policy::compile::ArnHead;
use crate::policy::eval::{Action, ResourceType};
use crate::registry::{CertStatus, ClientIdentity, Principal, Refusal, Registry};
use crate::router::{Delivery, Message, Origin, Router, Subscriber};
use crate::store::{Commit, Op, Store, StoreError};
use crate::topic::{self, Subscription};
use bytes::BytesMut;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
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
}

/// Resolves when the acknowledgement at the front may move: its commit is
/// done, or the subscriber it waits for drained (or the hold ran out). A
/// poll function, not an async fn: it is part of every connection's
/// future, and an idle connection should not pay for a wait it is not in.
fn front_ready(mut front: Option<&mut PendingAck>) -> impl Future<Output = Event> + '_ {
    std::future::poll_fn(move |cx| match front.as_deref_mut() {
        Some(PendingAck {
            commit: Some(c), ..
        }) => Pin::new(c).poll(cx).map(|r| {
            Event::Committed(r.map_or(Some(reason::UNSPECIFIED_ERROR), |r| commit_code(&r)))
        }),
        Some(PendingAck { held: Some(h), .. }) => h.poll_wait(cx),
        _ => Poll::Pending,
    })
}

/// Resolves when a held publisher may go on (never if nothing is held).
fn wait_held(mut held: Option<&mut Held>) -> impl Future<Output = Event> + '_ {
    std::future::poll_fn(move |cx| match held.as_deref_mut() {
        Some(h) => h.poll_wait(cx),
        None => Poll::Pending,
    })
}

/// The reason code a finished commit puts in its publish's ack, if it failed.
fn commit_code(res: &Result<(), Arc<StoreError>>) -> Option<u8> {
    res.as_ref().err().map(|e| e.reason_code())
}

/// Why a connection ended; decides the will, the DISCONNECT sent and the log level.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; `will` is true for reason 0x04.
    Client { will: bool },
    /// The socket closed or failed.
    Io,
    /// The client broke the protocol; the reason code goes in DISCONNECT.
    Protocol(u8, &'static str),
    /// No packet within 1.5 times the keep alive.
    KeepAlive,
    /// Another connection took the client id.
    TakenOver(oneshot::Sender<Box<SessionData>>),
    /// The gateway is shutting down.
    Shutdown,
    /// The client reads too slowly to keep up with its messages.
    SlowConsumer,
    /// The store could not make a publish durable.
    Store,
    /// A policy refused the connection or one of its publishes (MQTT 3.1.1).
    NotAuthorized(&'static str),
    /// The certificate was revoked or deactivated: its will is not published.
    Revoked,
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        End::Protocol(e.reason_code(), e.label())
    }
}

/// Reads CONNECT (within `deadline`), then serves the session until it ends.
pub async fn serve<S>(
    mut stream: S,
    identity: Option<Box<ClientIdentity>>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.config.limits;
    let mut rbuf = BytesMut::new();
    let connect = match tokio::time::timeout_at(
        deadline,
        read_connect(
            &mut stream,
            &mut rbuf,
            limits.max_packet_bytes,
            &shared.metrics,
        ),
    )
    .await
    {
        Err(_) => {
            shared.metrics.handshake_failed(HandshakeFailure::Timeout);
            return;
        }
        Ok(Err(e)) => {
            shared
                .metrics
                .handshake_failed(HandshakeFailure::BadConnect);
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            if let ProtocolError::UnsupportedProtocol(_) = e {
                // Whatever the level, in 3.1.1's format: return code 1
                // [MQTT-3.1.2-2], which MQTT 5 allows too, and which a
                // client of any level can read (Mosquitto answers so).
                let _ = refuse(
                    &mut stream,
                    Protocol::V4,
                    reason::UNSUPPORTED_PROTOCOL_VERSION,
                )
                .await;
            }
            return;
        }
        Ok(Ok(None)) => {
            shared.metrics.handshake_failed(HandshakeFailure::Io);
            return;
        }
        Ok(Ok(Some(c))) => c,
    };
    let (mut conn, connack) = match Conn::accept(&shared, connect, identity, peer) {
        Ok(accepted) => accepted,
        Err((proto, code)) => {
            shared.metrics.handshake_failed(HandshakeFailure::Refused);
            let _ = refuse(&mut stream, proto, code).await;
            return;
        }
    };
    conn.run(stream, rbuf, connack).await;
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
    /// waits until it drains or [`HOLD`] passes.
    held: Option<Held>,
}

/// Flow control: the subscriber a publisher waits for, and until when at most.
struct Held {
    mailbox: Arc<crate::router::Mailbox>,
    until: Instant,
    /// Taken at once, so that a drain before the wait begins is not missed.
    relief: Option<watch::Receiver<u64>>,
    /// The wait for relief or for `until`, boxed when first polled and
    /// handing the receiver back when done.
    wait: Option<Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>>,
}

impl Held {
    fn new(mailbox: Arc<crate::router::Mailbox>, now: Instant) -> Self {
        Self {
            relief: Some(mailbox.relief()),
            mailbox,
            until: now + HOLD,
            wait: None,
        }
    }

    /// Ready when the wait may be over (confirm with [`Held::is_over`]).
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let wait = match (&mut self.wait, self.relief.take()) {
            (Some(wait), _) => wait,
            (wait, relief) => {
                let mut relief = relief.unwrap_or_else(|| self.mailbox.relief());
                let until = self.until;
                wait.insert(Box::pin(async move {
                    tokio::select! {
                        _ = relief.changed() => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                    relief
                }))
            }
        };
        let relief = ready!(wait.as_mut().poll(cx));
        self.wait = None;
        self.relief = Some(relief);
        Poll::Ready(Event::Turn)
    }

    /// Whether the publisher may go on: the subscriber drained, or the hold
    /// ran out, and then the subscriber, which made no progress for a whole
    /// hold, paces nobody until it catches up.
    fn is_over(&self, now: Instant) -> bool {
        if !self.mailbox.is_pressed() {
            return true;
        }
        if now < self.until {
            return false;
        }
        self.mailbox.stall();
        true
    }
}

/// Longest a publisher waits for a subscriber that is falling behind: a
/// QoS 1/2 publisher for its acknowledgement, a QoS 0 publisher for its
/// next read. Within it, publishers slow down to what their subscribers take
/// (with Receive Maximum, QoS 1/2 publishers cannot run ahead); past it, the
/// publisher goes on, and a subscriber that still cannot keep up loses QoS 0
/// messages and meets the slow-consumer bound: a publisher is paced, never
/// blocked.
const HOLD: Duration = Duration::from_secs(1);

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    protocol: Protocol,
    client_id: Arc<str>,
    clean_start: bool,
    expiry: u32,
    keep_alive: Duration,
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
    /// socket is not read until it drains or [`HOLD`] passes.
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
}

/// Admits a certificate as the registration mode says, for MQTT (with its
/// client id) and HTTPS (without); a refusal is counted, logged, and for a
/// certificate waiting for activation announced (JITR), whichever way it
/// came in.
pub fn admit(shared: &Shared, id: &ClientIdentity, client_id: &str) -> Option<Principal> {
    let auth = &shared.config.auth;
    let (admitted, _) = shared
        .registry
        .admit(id, client_id, auth.registration, &auth.provisioning);
    match admitted {
        Ok(p) => Some(p),
        Err(refusal) => {
            use crate::metrics::Refused;
            shared.metrics.principal_refused(match &refusal {
                Refusal::Unknown => Refused::Unknown,
                Refusal::NotActive(CertStatus::Revoked) => Refused::Revoked,
                Refusal::NotActive(CertStatus::PendingActivation) => Refused::PendingActivation,
                Refusal::NotActive(_) => Refused::Inactive,
                Refusal::CaInactive => Refused::CaInactive,
            });
            if refusal == Refusal::NotActive(CertStatus::PendingActivation) {
                announce_pending(shared, id);
            }
            tracing::info!(
                target: "edgegate::authz",
                certificate_id = %id.certificate_id,
                client_id,
                reason = %refusal,
                "connection refused"
            );
            None
        }
    }
}

/// Admits the principal behind a CONNECT and checks `iot:Connect` (and the
/// will's `iot:Publish`); on refusal, the CONNACK reason code.
fn authorize(
    shared: &Shared,
    identity: Option<&ClientIdentity>,
    client_id: &str,
    peer: SocketAddr,
    persistent: bool,
    will: Option<&codec::Will>,
) -> Result<Authz, u8> {
    let auth = &shared.config.auth;
    let metrics = &shared.metrics;
    let principal = match identity {
        None => Principal::anonymous(&auth.anonymous_policies),
        Some(id) => admit(shared, id, client_id).ok_or(reason::NOT_AUTHORIZED)?,
    };
    let facts = ConnectFacts {
        client_id: Some(client_id),
        peer: Some(peer.ip()),
        persistent,
        will_topic: will.map(|w| w.topic.as_str()),
    };
    let Some(mut authz) = Authz::new(
        identity,
        principal,
        facts,
        &shared.policies,
        &shared.arn_head,
    ) else {
        return Err(reason::IMPLEMENTATION_SPECIFIC_ERROR);
    };
    let mut ok = authz.allows(
        metrics,
        client_id,
        Action::Connect,
        ResourceType::Client,
        client_id,
    );
    if let Some(w) = will {
        let topic = w.topic.as_str();
        ok = ok
            && authz.allows(
                metrics,
                client_id,
                Action::Publish,
                ResourceType::Topic,
                topic,
            );
        if w.retain {
            ok = ok
                && authz.allows(
                    metrics,
                    client_id,
                    Action::RetainPublish,
                    ResourceType::Topic,
                    topic,
                );
        }
    }
    if ok {
        Ok(authz)
    } else {
        Err(reason::NOT_AUTHORIZED)
    }
}

/// JITR: every connect of a certificate waiting for activation announces it
/// on `$aws/events/certificates/registered/<caCertificateId>` (spec §2.6).
fn announce_pending(shared: &Shared, identity: &ClientIdentity) {
    let Some(cert) = shared.registry.certificate(&identity.certificate_id) else {
        return;
    };
    let Some(ca_id) = cert.ca_id else {
        return;
    };
    let payload = serde_json::json!({
        "certificateId": cert.id,
        "caCertificateId": ca_id,
        "timestamp": cert.created_ms / 1000,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": shared.arn_head.account,
        "certificateRegistrationTimestamp": null,
    });
    shared.sessions.publish_event(
        &format!("$aws/events/certificates/registered/{ca_id}"),
        payload.to_string(),
    );
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
        identity: Option<Box<ClientIdentity>>,
        peer: SocketAddr,
    ) -> Result<(Box<Self>, Box<ConnAck>), (Protocol, u8)> {
        // Unboxed here, so the CONNECT's allocation is not kept for the
        // life of the connection.
        let c = *c;
        let n = match state::connect::negotiate(&c, &shared.config, assigned_client_id) {
            Ok(n) => n,
            Err(refused) => {
                if let Some(limit) = refused.limit {
                    shared.metrics.refused(limit);
                }
                return Err((c.protocol, refused.code));
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = n.client_id.into();
        let expiry = n.expiry;
        // Count notices before deciding, so that a change made meanwhile is
        // acted on by the serving loop.
        let notices_seen = shared.bulletin.posted();
        let authz = authorize(
            shared,
            identity.as_deref(),
            &client_id,
            peer,
            expiry > 0,
            c.will.as_ref(),
        )
        .map_err(|code| (c.protocol, code))?;
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
            keep_alive: Duration::from_millis(u64::from(n.keep_alive_secs) * 1500),
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
            peer,
            authz,
            origin: None,
            notices_seen,
        });
        Ok((conn, connack))
    }

    /// Checks a request against the connection's policies (recompiled first
    /// if they changed); denials are counted and logged.
    fn allows(&mut self, action: Action, ty: ResourceType, name: &str) -> bool {
        self.authz
            .refresh(&self.shared.policies, &self.shared.arn_head);
        self.authz
            .allows(&self.shared.metrics, &self.client_id, action, ty, name)
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
        metrics.connections.increment(1.0);
        metrics.connections_total.increment(1);
        tracing::debug!(
            client_id = %self.client_id,
            conn = self.id,
            peer = %self.peer,
            certificate_id = self.authz.certificate_id(),
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
        let mut deadline = Instant::now() + self.keep_alive;
        let mut batch = Vec::new();
        let mut mail_ready = true;
        // What the connection waits for its whole life is registered once,
        // not on every turn of the loop, and the keep-alive timer moves only
        // when it fires.
        let notice = shared.bulletin.notice();
        let keep_alive = tokio::time::sleep_until(deadline);
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
            while self.paced.is_none() {
                match codec::decode(rbuf, self.protocol, max_packet) {
                    Ok(Some(p)) => {
                        let now = *read_at.get_or_insert_with(Instant::now);
                        deadline = now + self.keep_alive;
                        if let Err(end) = self.handle(&shared, p, data, now) {
                            return end;
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
            // Move mail into the write buffer while the window has room,
            // up to a buffer's worth per turn so reads are not starved.
            if mail_ready {
                while self.wbuf.len() < WRITE_BATCH {
                    let room = self.send_window.saturating_sub(data.inflight.len());
                    mailbox.drain(&mut batch, room);
                    if batch.is_empty() {
                        break;
                    }
                    let now = Instant::now();
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
                            return End::TakenOver(reply);
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
                    Ok(Ok(())) => metrics.bytes_out.increment(n as u64),
                    _ => return End::Io,
                }
                self.wbuf.clear();
            }
            let window_open = data.inflight.len() < self.send_window;
            // Stop reading while too many acknowledgements wait for the
            // store, or while a subscriber of this client's QoS 0 messages
            // catches up.
            let reading = self.acks.len() < usize::from(shared.config.limits.max_inflight) * 2
                && self.paced.is_none();
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
                res = read_some(stream, rbuf), if reading => Event::Read(res),
                _ = mailbox.notified(), if !mail_ready => Event::Mail,
                _ = std::future::ready(()), if window_open && mail_ready => Event::Mail,
                () = &mut kicked => {
                    kicked.set(mailbox.kicked());
                    Event::Slow
                }
                () = &mut keep_alive => {
                    let now = Instant::now();
                    // A client the gateway does not read (its acknowledgements
                    // wait for the store, or it is paced) cannot be judged idle.
                    if !reading {
                        deadline = now + self.keep_alive;
                    }
                    if now < deadline {
                        // Packets came since it was set: it fires again later.
                        keep_alive.as_mut().reset(deadline);
                        Event::Turn
                    } else {
                        Event::KeepAlive
                    }
                }
            };
            match event {
                Event::TakeOver(reply) => return End::TakenOver(reply),
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
    fn flush_ready_acks(&mut self, qos2_in: &mut HashSet<u16>) -> Result<(), End> {
        while let Some(front) = self.acks.front_mut() {
            if let Some(commit) = front.commit.as_mut() {
                let code = match commit.try_recv() {
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Ok(()),
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        Some(reason::UNSPECIFIED_ERROR)
                    }
                    Ok(r) => commit_code(&r),
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
            if front.code >= 0x80 {
                // A refused QoS 2 id may be reused at once (MQTT 5 §4.3.3); it was never routed.
                if front.qos2 {
                    qos2_in.remove(&front.pkid);
                }
                if self.protocol == Protocol::V4 {
                    return Err(End::Store);
                }
            }
            let Some(a) = self.acks.pop_front() else {
                return Ok(());
            };
            let ack = Ack::with_code(a.pkid, a.code);
            self.send(&if a.qos2 {
                Packet::PubRec(ack)
            } else {
                Packet::PubAck(ack)
            });
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
                self.acked(a.pkid, data.inflight.complete(a.pkid), data);
                Ok(())
            }
            Packet::PubRec(a) => {
                if a.code >= 0x80 {
                    self.acked(a.pkid, data.inflight.complete(a.pkid), data);
                } else if data.inflight.release(a.pkid) == super::state::Acked::Released {
                    self.acked(a.pkid, super::state::Acked::Released, data);
                    self.send(&Packet::PubRel(Ack::ok(a.pkid)));
                } else {
                    self.send(&Packet::PubRel(Ack::with_code(
                        a.pkid,
                        reason::PACKET_IDENTIFIER_NOT_FOUND,
                    )));
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                self.acked(a.pkid, data.inflight.complete(a.pkid), data);
                Ok(())
            }
            Packet::PubRel(a) => {
                let code = if data.qos2_in.remove(&a.pkid) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(Ack::with_code(a.pkid, code)));
                Ok(())
            }
            Packet::Subscribe(s) => self.subscribe(shared, s, data),
            Packet::Unsubscribe(u) => {
                self.unsubscribe(u, data);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.expiry == 0 && e > 0 {
                        return Err(End::Protocol(
                            reason::PROTOCOL_ERROR,
                            "session expiry changed from 0 [MQTT-3.14.2-2]",
                        ));
                    }
                    data.expiry = e.min(self.shared.config.mqtt.max_session_expiry_secs);
                    data.mailbox.set_persistent(data.expiry > 0);
                }
                Err(End::Client {
                    will: d.code == reason::DISCONNECT_WITH_WILL,
                })
            }
            Packet::Connect(_) => Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Packet::Auth(_) => Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            _ => Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "packet a client may not send",
            )),
        }
    }

    /// An acknowledgement of `pkid` arrived (or was decided here): the store
    /// forgets a completed message and its room in the window goes to the
    /// next message waiting to be resent.
    fn acked(&mut self, pkid: u16, acked: super::state::Acked, data: &mut SessionData) {
        if !self.resend.is_empty() {
            // The client may acknowledge what it got before it reconnected.
            self.resend.retain(|&p| p != pkid);
        }
        if let super::state::Acked::Done(seq) = acked {
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
        while data.inflight.len().saturating_sub(self.resend.len()) < self.send_window {
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
                if let super::state::Acked::Done(seq) = data.inflight.complete(pkid) {
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
        let cfg = &shared.config;
        let limits = &cfg.limits;
        let metrics = &shared.metrics;
        let v5 = self.protocol == Protocol::V5;
        if p.qos as u8 > limits.max_qos {
            metrics.refused(LimitKind::Qos);
            return Err(End::Protocol(
                reason::QOS_NOT_SUPPORTED,
                "QoS above the maximum",
            ));
        }
        let alias = p.properties.topic_alias.take();
        self.aliases
            .resolve(&mut p.topic, alias, cfg.mqtt.topic_alias_maximum)
            .map_err(|(code, why)| End::Protocol(code, why))?;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "client sent a subscription identifier [MQTT-3.3.4-6]",
            ));
        }
        if p.payload.len() > limits.max_payload_bytes {
            metrics.refused(LimitKind::Payload);
            return Err(End::Protocol(reason::PACKET_TOO_LARGE, "payload too large"));
        }
        let topic = p.topic.as_str();
        let refusal = state::unpublishable(topic, p.retain, cfg.limits.topics()).map(|u| match u {
            Unpublishable::Topic(e) => {
                metrics.refused(match e {
                    topic::TopicError::TooDeep(_) => LimitKind::TopicDepth,
                    _ => LimitKind::TopicLength,
                });
                (reason::TOPIC_NAME_INVALID, "topic too long or too deep")
            }
            Unpublishable::GatewayOnly => {
                metrics.denied(crate::metrics::AuthzAction::Publish);
                (
                    reason::NOT_AUTHORIZED,
                    "only the gateway publishes lifecycle events and shadow responses",
                )
            }
            Unpublishable::RetainedReserved => {
                (reason::RETAIN_NOT_SUPPORTED, "retain on a reserved topic")
            }
        });
        if let Some((code, why)) = refusal {
            // MQTT 5 refuses a QoS 1/2 publish in its ack and keeps the connection.
            if v5 && p.qos != QoS::AtMostOnce {
                self.refuse_publish(&p, code, why);
                return Ok(());
            }
            return Err(End::Protocol(code, why));
        }
        let allowed = self.allows(Action::Publish, ResourceType::Topic, topic)
            && (!p.retain || self.allows(Action::RetainPublish, ResourceType::Topic, topic));
        if !allowed {
            // MQTT 5 says so in the ack (or drops a QoS 0 publish); 3.1.1 has
            // no way to say it but closing the connection (spec §1.3).
            if !v5 {
                return Err(End::NotAuthorized("publish not authorized"));
            }
            if p.qos != QoS::AtMostOnce {
                self.refuse_publish(
                    &p,
                    reason::NOT_AUTHORIZED,
                    "not authorized to publish to this topic",
                );
            }
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce && data.qos2_in.contains(&p.pkid) {
            // A resent PUBLISH whose PUBREL has not come yet: acknowledge again,
            // route once, and count it once towards Receive Maximum.
            self.acks.push_back(PendingAck {
                pkid: p.pkid,
                qos2: true,
                code: reason::SUCCESS,
                commit: None,
                held: None,
            });
            return Ok(());
        }
        // QoS 2 publishes count until PUBCOMP (they are in `qos2_in`), QoS 1
        // ones until their PUBACK leaves.
        let unacked = self.acks.iter().filter(|a| !a.qos2).count() + data.qos2_in.len();
        if p.qos != QoS::AtMostOnce && v5 && unacked >= usize::from(limits.max_inflight) {
            metrics.refused(LimitKind::Inflight);
            return Err(End::Protocol(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more unacknowledged publishes than Receive Maximum",
            ));
        }
        metrics.message_in(QosLabel::of(p.qos as u8));
        let (pkid, qos) = (p.pkid, p.qos);
        let origin = self.origin(data.mailbox.session_id);
        let msg = Arc::new(Message::new(
            p.topic,
            p.payload,
            p.qos,
            p.retain,
            p.properties,
            now,
            origin,
        ));
        let (code, commit, pressure) = match shared.router.publish(&msg, now) {
            Ok(routed) if routed.matched == 0 && v5 => {
                (reason::NO_MATCHING_SUBSCRIBERS, routed.commit, None)
            }
            Ok(routed) => (reason::SUCCESS, routed.commit, routed.pressure),
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "publish refused");
                (e.reason_code(), None, None)
            }
        };
        if qos == QoS::AtMostOnce {
            if self.paced.is_none() {
                self.paced = pressure.map(|mailbox| Held::new(mailbox, now));
            }
            return Ok(());
        }
        if qos == QoS::ExactlyOnce {
            data.qos2_in.insert(pkid);
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
            principal: self.authz.certificate_id().map(Arc::from),
            ..Origin::default()
        });
        self.origin = Some(o.clone());
        o
    }

    /// Answers a refused QoS 1/2 publish (MQTT 5) with its reason in the ack.
    fn refuse_publish(&mut self, p: &Publish, code: u8, why: &str) {
        let ack = Ack {
            pkid: p.pkid,
            code: reason::puback(code),
            properties: Properties {
                reason_string: self.reason(why),
                ..Properties::default()
            },
        };
        self.send(&if p.qos == QoS::ExactlyOnce {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        });
    }

    fn subscribe(
        &mut self,
        shared: &Shared,
        s: Subscribe,
        data: &mut SessionData,
    ) -> Result<(), End> {
        let cfg = &shared.config;
        let limits = &cfg.limits;
        let metrics = &shared.metrics;
        let sub_id = s.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut refusals = Vec::new();
        for (i, (raw, opts)) in s.filters.iter().enumerate() {
            let parsed = match Subscription::parse(raw) {
                Ok(p) => p,
                Err(e) => {
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    // An empty filter has no name to put before the problem.
                    refusals.push(if raw.is_empty() {
                        "an empty topic filter".to_owned()
                    } else {
                        format!("{raw}: {e}")
                    });
                    continue;
                }
            };
            if parsed.share.is_some() && opts.no_local {
                return Err(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            // The filter exactly as sent, `$share/...` included (spec §1.3).
            if !self.allows(Action::Subscribe, ResourceType::TopicFilter, raw) {
                codes.push(reason::NOT_AUTHORIZED);
                refusals.push(format!("{raw}: not authorized"));
                continue;
            }
            let exists = data.subscriptions.contains_key(raw.as_str());
            let refusal = if i >= limits.max_filters_per_subscribe {
                Some((
                    LimitKind::FiltersPerSubscribe,
                    reason::QUOTA_EXCEEDED,
                    "too many filters in one SUBSCRIBE",
                ))
            } else if let Err(e) = cfg.limits.topics().check(parsed.filter) {
                let kind = match e {
                    topic::TopicError::TooDeep(_) => LimitKind::TopicDepth,
                    _ => LimitKind::TopicLength,
                };
                Some((
                    kind,
                    reason::TOPIC_FILTER_INVALID,
                    "filter too long or too deep",
                ))
            } else if !exists && data.subscriptions.len() >= limits.max_subscriptions_per_connection
            {
                Some((
                    LimitKind::Subscriptions,
                    reason::QUOTA_EXCEEDED,
                    "too many subscriptions",
                ))
            } else {
                None
            };
            if let Some((kind, code, why)) = refusal {
                metrics.refused(kind);
                codes.push(code);
                refusals.push(format!("{raw}: {why}"));
                continue;
            }
            let mut granted = *opts;
            granted.qos =
                QoS::from_u8((opts.qos as u8).min(limits.max_qos)).unwrap_or(QoS::AtMostOnce);
            let new = self.shared.router.subscribe(
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
            let send_retained = parsed.share.is_none()
                && match opts.retain_handling {
                    0 => true,
                    1 => new,
                    _ => false,
                };
            if send_retained {
                retained.push((parsed.filter.to_owned(), granted.qos));
            }
        }
        self.shared.sessions.persist(data);
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
        // Retained messages follow the SUBACK, flagged RETAIN [MQTT-3.3.1-8],
        // through the mailbox so that they respect the client's window.
        for (filter, qos) in retained {
            for msg in self.shared.router.retained(&filter) {
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

    fn unsubscribe(&mut self, u: Unsubscribe, data: &mut SessionData) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in &u.filters {
            let existed = match Subscription::parse(raw) {
                Ok(s) if data.subscriptions.remove(raw.as_str()).is_some() => {
                    self.shared
                        .router
                        .unsubscribe(s.filter, s.share, data.mailbox.session_id);
                    true
                }
                Ok(_) => false,
                Err(_) => {
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.shared.sessions.persist(data);
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            codes,
            properties: Properties::default(),
        }));
    }

    /// Encodes one delivery, assigning a packet id for QoS 1/2.
    fn deliver(&mut self, d: Delivery, data: &mut SessionData, now: Instant) {
        // iot:Receive at every delivery, so a revoked permission stops
        // delivery on existing subscriptions (spec §1.3).
        if !self.allows(Action::Receive, ResourceType::Topic, d.msg.topic.as_str()) {
            self.forget(d.seq, data);
            return;
        }
        let metrics = &self.shared.metrics;
        let Some(remaining) = d.msg.remaining(now) else {
            metrics.count_drop(DropReason::Expired);
            self.forget(d.seq, data);
            return;
        };
        let view = view(&d, 0, false, remaining);
        if codec::publish_len(&view, self.protocol) > self.client_max_packet {
            // Too big for the client: discard as if sent [MQTT-3.1.2-25].
            metrics.count_drop(DropReason::TooLargeForClient);
            self.forget(d.seq, data);
            return;
        }
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
        let mut v = view(d, pkid, dup && d.qos != QoS::AtMostOnce, remaining);
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
        let v5 = self.protocol == Protocol::V5;
        let metrics = self.shared.metrics.clone();
        let (code, publish_will, why): (Option<u8>, bool, &str) = match &end {
            End::Client { will } => (None, *will, "client disconnected"),
            End::Io => (None, true, "connection lost"),
            End::Protocol(code, why) => {
                metrics.protocol_errors.increment(1);
                (Some(*code), true, why)
            }
            End::KeepAlive => (Some(reason::KEEP_ALIVE_TIMEOUT), true, "keep alive timeout"),
            End::TakenOver(_) => (Some(reason::SESSION_TAKEN_OVER), true, "session taken over"),
            End::Shutdown => (
                Some(reason::SERVER_SHUTTING_DOWN),
                true,
                "server shutting down",
            ),
            End::SlowConsumer => (Some(reason::QUOTA_EXCEEDED), true, "client too slow"),
            End::Store => (Some(reason::UNSPECIFIED_ERROR), true, "store failure"),
            End::NotAuthorized(why) => (Some(reason::NOT_AUTHORIZED), true, *why),
            End::Revoked => (
                Some(reason::NOT_AUTHORIZED),
                false,
                "certificate no longer active",
            ),
        };
        tracing::debug!(client_id = %self.client_id, conn = self.id, reason = why, "session ended");
        // Acknowledge what is already durable; the rest the client will resend.
        let _ = self.flush_ready_acks(&mut data.qos2_in);
        if let (Some(code), true) = (code, v5) {
            self.send(&Packet::Disconnect(Disconnect::with_reason(
                code,
                self.reason(why),
            )));
        }
        if !self.wbuf.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), stream.write_all(&self.wbuf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        if code.is_some() {
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
        // The will goes out only if its topic is still allowed now.
        let will = self.will.take().filter(|w| {
            publish_will && {
                let topic = w.topic.as_str();
                self.allows(Action::Publish, ResourceType::Topic, topic)
                    && (!w.retain || self.allows(Action::RetainPublish, ResourceType::Topic, topic))
            }
        });
        if let Some(will) = will {
            // On takeover the session continues at once, which cancels a delayed will.
            let delay = will.delay_interval.min(data.expiry);
            if !(matches!(end, End::TakenOver(_)) && delay > 0) {
                let origin = self.origin(data.mailbox.session_id);
                data.pending_will = self.shared.sessions.schedule_will(*will, origin, delay);
            }
        }
        let sessions = self.shared.sessions.clone();
        if let End::TakenOver(reply) = end {
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
}

fn view(d: &Delivery, pkid: u16, dup: bool, remaining: Option<u32>) -> PublishView<'_> {
    PublishView {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.as_bytes(),
        pkid,
        properties: &d.msg.properties,
        message_expiry_interval: remaining,
        topic_alias: None,
        subscription_identifiers: &d.sub_ids,
        payload: &d.msg.payload,
    }
}

/// A client id for a client that sent none: random, so it is unique across restarts too.
fn assigned_client_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("edgegate-{}", crate::registry::identity::hex(&bytes))
}
