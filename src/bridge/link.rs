//! The bridge's connection: connect, subscribe, then one loop that owns the
//! socket, the outbound window and the timers.

use super::{Mapping, Status};
use crate::codec::{
    self, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, Publish, PublishView, QoS,
    SubOptions, Subscribe,
};
use crate::config::Upstream;
use crate::metrics::{ActionMetrics, Metrics};
use crate::router::{Message, Origin, Router};
use crate::spool::{self, Spool, Throttle};
use crate::sql;
use crate::store::Commit;
use crate::topic;
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// Largest packet accepted from upstream (AWS IoT: 128 KB payloads).
const MAX_PACKET: usize = 1024 * 1024;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// AWS IoT takes at most 8 filters per SUBSCRIBE.
const FILTERS_PER_SUBSCRIBE: usize = 8;

/// Inbound publishes waiting for their local commit (also our Receive Maximum).
const MAX_PENDING_INBOUND: usize = 100;

/// Records read from the spool at a time while filling the window.
const TAKE: usize = 64;

/// Bytes encoded before they are written: a write's deadline covers at most this.
const WRITE_BATCH: usize = 256 * 1024;

/// Why a connection attempt or a session ended.
type Ended = String;

/// Links the upstream closes while a suspected message is alone in flight
/// before that message is dropped (see [`Suspect`]).
const STRIKES: u8 = 3;

/// The running bridge.
pub(super) struct Bridge {
    pub(super) config: Upstream,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) mappings: Vec<Mapping>,
    pub(super) router: Arc<Router>,
    pub(super) spool: Arc<Spool>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) spool_metrics: ActionMetrics,
    pub(super) status: Arc<Status>,
    pub(super) shutdown: CancellationToken,
    /// Who the messages brought in come from: the bridge, never sent back.
    pub(super) origin: Arc<Origin>,
    /// Warnings about messages dropped on the way up, and on the way in: at
    /// most one of each every few seconds (every message is counted).
    pub(super) up_warn: Throttle,
    pub(super) in_warn: Throttle,
}

/// The client's TLS configuration: the upstream's CA, this gateway's
/// certificate, and ALPN `x-amzn-mqtt-ca` on port 443 (AWS IoT's MQTT there).
pub(super) fn tls_config(
    config: &Upstream,
) -> Result<Arc<rustls::ClientConfig>, crate::transport::tls::TlsError> {
    let on_443 = config.host_port().is_some_and(|(_, port)| port == 443);
    let alpn = on_443.then_some(crate::transport::tls::ALPN[0]);
    crate::transport::tls::client_config(&config.ca, &config.cert, &config.key, alpn).map(Arc::new)
}

/// A sliding one-second window of send times: at most `limit` in any second.
struct Rate {
    sent: VecDeque<Instant>,
    limit: usize,
}

impl Rate {
    /// How many may go now.
    fn room(&mut self, now: Instant) -> usize {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.sent.pop_front();
        }
        self.limit.saturating_sub(self.sent.len())
    }

    /// When the next one may go, if none may now.
    fn next_slot(&self) -> Option<Instant> {
        (self.sent.len() >= self.limit)
            .then(|| self.sent.front().map(|t| *t + Duration::from_secs(1)))
            .flatten()
    }
}

/// What lives for one connection.
struct Session {
    stream: TlsStream<TcpStream>,
    protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// (packet id, spool sequence) of unacknowledged publishes, in send order.
    inflight: VecDeque<(u16, u64)>,
    /// Unacknowledged publishes allowed: ours, capped by the broker's Receive Maximum.
    window: usize,
    next_pkid: u16,
    /// The keep alive in force (MQTT 5 brokers may impose theirs).
    keep_alive: Duration,
    /// Largest packet the broker takes (MQTT 5 Maximum Packet Size).
    max_packet: usize,
    /// Highest QoS the broker takes (MQTT 5 Maximum QoS).
    max_qos: QoS,
    /// Inbound publishes in arrival order, each acknowledged once its local
    /// commit is done [MQTT-4.6.0-2].
    pending: VecDeque<Inbound>,
    /// The upstream ended the link (closed it, reset it, or sent DISCONNECT).
    closed_by_upstream: bool,
}

/// An inbound publish waiting to be acknowledged.
struct Inbound {
    /// 0 for QoS 0 (nothing to acknowledge).
    pkid: u16,
    commit: Option<Commit>,
}

impl Session {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.wbuf);
    }

    /// Acknowledges the inbound publishes at the front whose commits are done.
    fn ack_ready(&mut self) {
        while self.pending.front().is_some_and(|p| p.commit.is_none()) {
            if let Some(p) = self.pending.pop_front()
                && p.pkid != 0
            {
                self.send(&Packet::PubAck(codec::Ack::ok(p.pkid)));
            }
        }
    }

    /// Writes what is buffered, through TLS to the socket, within `limit`.
    async fn flush(&mut self, limit: Duration) -> Result<(), Ended> {
        let written = timeout(limit, async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        })
        .await;
        self.wbuf.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("a write made no progress for the keep alive".into()),
        }
    }
}

/// PUBACK reason codes that no retry can change: the message is dropped.
/// Any other failure (quota exceeded, unspecified, packet id in use) ends
/// the link, and the message goes again, in order, on the next one.
fn refused_for_good(code: u8) -> bool {
    matches!(
        code,
        codec::reason::NOT_AUTHORIZED
            | codec::reason::TOPIC_NAME_INVALID
            | codec::reason::PAYLOAD_FORMAT_INVALID
    )
}

/// What outlives one connection.
struct Carry {
    /// Spool sequence numbers below this were sent on some earlier link.
    sent_until: u64,
    /// The rate limit holds across reconnects too.
    rate: Rate,
    suspect: Option<Suspect>,
}

/// The oldest message unacknowledged when the upstream closed the link.
///
/// AWS IoT answers an MQTT 3.1.1 publish its policy does not allow by
/// closing the connection, so such a message would come back at the head
/// of every new link and hold everything behind it until it aged out. A
/// suspect goes alone on the next link; acknowledged, it is cleared; if
/// the upstream closes [`STRIKES`] links while it is alone in flight, it is
/// dropped and counted as failed, like a message refused with a reason code.
struct Suspect {
    seq: u64,
    strikes: u8,
}

impl Carry {
    /// Judges a link the upstream closed with `inflight` unacknowledged
    /// (oldest first); returns the message to drop, if one has struck out.
    fn closed_with(&mut self, inflight: &VecDeque<(u16, u64)>) -> Option<u64> {
        let &(_, oldest) = inflight.front()?;
        let alone = u8::from(inflight.len() == 1);
        match &mut self.suspect {
            Some(s) if s.seq == oldest => s.strikes += alone,
            _ => {
                self.suspect = Some(Suspect {
                    seq: oldest,
                    strikes: alone,
                })
            }
        }
        let out = self.suspect.as_ref().is_some_and(|s| s.strikes >= STRIKES);
        out.then(|| {
            self.suspect = None;
            oldest
        })
    }
}

impl Bridge {
    /// Connects, serves, and connects again until shutdown.
    pub(super) async fn run(self) {
        let mut backoff = spool::Backoff::new(
            self.config.reconnect_initial_ms,
            self.config.reconnect_max_ms,
        );
        let mut carry = Carry {
            sent_until: 0,
            rate: Rate {
                sent: VecDeque::new(),
                limit: self.config.max_publishes_per_second as usize,
            },
            suspect: None,
        };
        loop {
            self.expire();
            let attempt = tokio::select! {
                r = self.connect() => r,
                _ = self.shutdown.cancelled() => return,
            };
            match attempt {
                Ok(session) => {
                    self.set_connected(true);
                    tracing::info!(endpoint = %self.config.endpoint, "upstream link up");
                    let (why, healthy) = self.serve(session, &mut carry).await;
                    self.set_connected(false);
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    // A link that dies before it did any good (a broker that
                    // drops us at once) is retried with a growing delay.
                    if healthy {
                        backoff.reset();
                    }
                    self.metrics.upstream_reconnects.increment(1);
                    tracing::warn!(endpoint = %self.config.endpoint, reason = %why, "upstream link lost");
                }
                Err(why) => {
                    self.metrics.upstream_reconnects.increment(1);
                    if backoff.is_first() {
                        tracing::warn!(endpoint = %self.config.endpoint, reason = %why, "upstream unreachable; retrying with backoff");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    fn set_connected(&self, up: bool) {
        self.status.connected.store(up, Ordering::Relaxed);
        self.metrics
            .upstream_connected
            .set(if up { 1.0 } else { 0.0 });
    }

    fn protocol(&self) -> Protocol {
        if self.config.mqtt_version == "5" {
            Protocol::V5
        } else {
            Protocol::V4
        }
    }

    /// TCP, TLS and CONNACK within one deadline.
    async fn connect(&self) -> Result<Session, Ended> {
        let (host, port) = self
            .config
            .host_port()
            .ok_or_else(|| format!("`{}` is not host:port", self.config.endpoint))?;
        let deadline = Instant::now() + Duration::from_secs(self.config.connect_timeout_secs);
        let protocol = self.protocol();
        let attempt = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("TCP: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name = self.config.server_name.as_deref().unwrap_or(host);
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| format!("server name `{name}`: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let mut s = Session {
                stream,
                protocol,
                rbuf: BytesMut::with_capacity(READ_CHUNK),
                wbuf: BytesMut::new(),
                inflight: VecDeque::new(),
                window: usize::from(self.config.max_inflight),
                next_pkid: 0,
                keep_alive: Duration::from_secs(u64::from(self.config.keep_alive_secs)),
                max_packet: usize::MAX,
                max_qos: QoS::AtLeastOnce,
                pending: VecDeque::new(),
                closed_by_upstream: false,
            };
            s.send(&Packet::Connect(Box::new(Connect {
                protocol,
                clean_start: self.config.clean_session,
                keep_alive: self.config.keep_alive_secs,
                client_id: self.config.client_id.clone(),
                will: None,
                username: None,
                password: None,
                properties: Properties {
                    // A persistent session lasts as long as AWS IoT keeps one (1 hour).
                    session_expiry_interval: (!self.config.clean_session).then_some(3600),
                    maximum_packet_size: Some(MAX_PACKET as u32),
                    receive_maximum: Some(MAX_PENDING_INBOUND as u16),
                    ..Properties::default()
                },
            })));
            s.flush(Duration::from_secs(self.config.connect_timeout_secs))
                .await?;
            let ack = loop {
                match codec::decode(&mut s.rbuf, protocol, MAX_PACKET) {
                    Ok(Some(Packet::ConnAck(a))) => break a,
                    Ok(Some(other)) => {
                        return Err(format!(
                            "expected CONNACK, got packet type {}",
                            other.type_number()
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("CONNACK: {e}")),
                }
                match s.stream.read_buf(&mut s.rbuf).await {
                    Ok(0) => return Err("closed before CONNACK".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("CONNACK: {e}")),
                }
            };
            let ConnAck {
                code, properties, ..
            } = ack;
            if code != 0 {
                return Err(format!("CONNECT refused with reason {code:#04x}"));
            }
            if let Some(max) = properties.receive_maximum {
                s.window = s.window.min(usize::from(max));
            }
            if let Some(ka) = properties.server_keep_alive {
                s.keep_alive = Duration::from_secs(u64::from(ka));
            }
            if let Some(max) = properties.maximum_packet_size {
                s.max_packet = max as usize;
            }
            if properties.maximum_qos == Some(0) {
                s.max_qos = QoS::AtMostOnce;
            }
            Ok(s)
        };
        timeout_at(deadline, attempt)
            .await
            .map_err(|_| "no CONNACK before upstream.connect_timeout_secs".to_owned())?
    }

    /// Serves one connection until it ends; returns why, and whether the
    /// link did any good (an acknowledgement, or a keep alive's worth of life).
    async fn serve(&self, mut s: Session, carry: &mut Carry) -> (Ended, bool) {
        let started = Instant::now();
        let mut acked = false;
        let why = self.serve_until_end(&mut s, carry, &mut acked).await;
        if s.closed_by_upstream
            && !self.shutdown.is_cancelled()
            && let Some(seq) = carry.closed_with(&s.inflight)
        {
            self.spool.ack(seq);
            self.gauges();
            self.metrics.upstream_failed.increment(1);
            tracing::warn!(
                strikes = STRIKES,
                "the upstream closed the link each time a message was alone in flight; it is dropped (AWS IoT closes MQTT 3.1.1 connections that publish where their policy does not allow)"
            );
        }
        (why, acked || started.elapsed() >= s.keep_alive)
    }

    async fn serve_until_end(&self, s: &mut Session, carry: &mut Carry, acked: &mut bool) -> Ended {
        let v5 = s.protocol == Protocol::V5;
        for chunk in self.mappings.chunks(FILTERS_PER_SUBSCRIBE) {
            let pkid = s.pkid();
            s.send(&Packet::Subscribe(Subscribe {
                pkid,
                filters: chunk
                    .iter()
                    .map(|m| {
                        let mut o =
                            SubOptions::qos(QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce));
                        // What this gateway sends up must not come back down.
                        o.no_local = v5;
                        (m.filter.clone(), o)
                    })
                    .collect(),
                properties: Properties::default(),
            }));
        }
        // Packets that came in with the CONNACK.
        if let Err(why) = self.decode_all(s, acked) {
            return why;
        }
        let ka = s.keep_alive;
        // Everything unacknowledged is sent again, from the spool's head.
        let mut cursor = 0u64;
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut ping_sent = false;
        loop {
            self.expire();
            let now = Instant::now();
            // Fill the window: until it is full, the rate allows no more, the
            // batch is big enough, or the spool has nothing more.
            let mut sent = 0;
            let mut more = true;
            if *acked {
                carry.suspect = None;
            }
            // A suspect goes alone: nothing more while it is in flight.
            let window = match carry.suspect {
                Some(_) => 1,
                None => s.window,
            };
            loop {
                let room = window
                    .saturating_sub(s.inflight.len())
                    .min(carry.rate.room(now).saturating_sub(sent))
                    .min(TAKE);
                if room == 0 || s.wbuf.len() >= WRITE_BATCH {
                    break;
                }
                let records = self.spool.take_from(cursor, room);
                more = records.len() == room;
                for r in records {
                    cursor = r.seq + 1;
                    if self.send_up(s, r, &mut carry.sent_until, now) {
                        sent += 1;
                    }
                }
                if !more {
                    break;
                }
            }
            if sent > 0 {
                self.gauges();
            }
            if !s.wbuf.is_empty() {
                if let Err(why) = s.flush(ka).await {
                    return why;
                }
                last_write = Instant::now();
                // Stamped once written: sends are counted when they leave.
                carry
                    .rate
                    .sent
                    .extend(std::iter::repeat_n(last_write, sent));
            }
            if s.rbuf.capacity() - s.rbuf.len() < READ_CHUNK / 4 {
                s.rbuf.reserve(READ_CHUNK);
            }
            let open = s.inflight.len() < window;
            let rate_wait = carry.rate.next_slot();
            let ready = open && rate_wait.is_none();
            let ping_at = last_read.min(last_write) + ka;
            let dead_at = last_read + ka * 3 / 2;
            let reading = s.pending.len() < MAX_PENDING_INBOUND;
            let committing = s.pending.front().is_some_and(|p| p.commit.is_some());
            let commit = s.pending.front_mut().and_then(|p| p.commit.as_mut());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    s.send(&Packet::Disconnect(Disconnect::with_reason(0, None)));
                    let _ = s.flush(Duration::from_secs(1)).await;
                    return "shutdown".into();
                }
                r = s.stream.read_buf(&mut s.rbuf), if reading => match r {
                    Ok(0) => {
                        s.closed_by_upstream = true;
                        return "closed by the upstream".into();
                    }
                    Err(e) => {
                        s.closed_by_upstream = true;
                        return format!("read: {e}");
                    }
                    Ok(_) => {
                        last_read = Instant::now();
                        ping_sent = false;
                        if let Err(why) = self.decode_all(s, acked) {
                            return why;
                        }
                    }
                },
                res = async { commit.expect("guarded by committing").await }, if committing => {
                    if !matches!(res, Ok(Ok(()))) {
                        // Unacknowledged, a persistent session sends it again.
                        self.metrics.upstream_failed.increment(1);
                        return "a message from upstream could not be stored here".into();
                    }
                    if let Some(front) = s.pending.front_mut() {
                        front.commit = None;
                    }
                    s.ack_ready();
                }
                _ = sleep_until(dead_at) => return "no answer for 1.5 times the keep alive".into(),
                _ = sleep_until(ping_at), if !ping_sent => {
                    s.send(&Packet::PingReq);
                    ping_sent = true;
                }
                // The batch stopped at its size: go on after the reads above.
                _ = std::future::ready(()), if ready && more => {}
                _ = sleep_until(rate_wait.unwrap_or(now)), if open && rate_wait.is_some() => {}
                _ = self.spool.appended(), if ready && !more => {}
            }
        }
    }

    /// Handles every whole packet in the read buffer; the spool gauges are
    /// set once for all the acknowledgements among them.
    fn decode_all(&self, s: &mut Session, acked: &mut bool) -> Result<(), Ended> {
        let mut spool_changed = false;
        let result = loop {
            match codec::decode(&mut s.rbuf, s.protocol, MAX_PACKET) {
                Ok(Some(p)) => {
                    spool_changed |= matches!(p, Packet::PubAck(_));
                    if let Err(why) = self.handle(s, p, acked) {
                        break Err(why);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("protocol error from the upstream: {e}")),
            }
        };
        if spool_changed {
            self.gauges();
        }
        result
    }

    /// Encodes one spooled message as a PUBLISH; QoS 0 leaves the spool at
    /// once. False if it was dropped instead (expired, unreadable, too large
    /// for the broker).
    fn send_up(
        &self,
        s: &mut Session,
        r: spool::Record,
        sent_until: &mut u64,
        now: Instant,
    ) -> bool {
        if r.seq < *sent_until {
            self.metrics.upstream_resent.increment(1);
        }
        *sent_until = (*sent_until).max(r.seq + 1);
        let Some(msg) = Message::from_record(&r.data, now) else {
            // Expired while it waited, or unreadable.
            self.metrics.upstream_failed.increment(1);
            self.spool.ack(r.seq);
            return false;
        };
        let qos = msg.qos.min(s.max_qos);
        let pkid = if qos == QoS::AtLeastOnce { s.pkid() } else { 0 };
        let view = PublishView {
            dup: false,
            qos,
            retain: false,
            topic: msg.topic.as_bytes(),
            pkid,
            properties: &msg.properties,
            message_expiry_interval: msg.remaining(now).flatten(),
            topic_alias: None,
            subscription_identifiers: &[],
            payload: &msg.payload,
        };
        if codec::publish_len(&view, s.protocol) > s.max_packet {
            self.metrics.upstream_failed.increment(1);
            if self.up_warn.allow() {
                tracing::warn!(topic = %msg.topic, "a message is larger than the upstream's Maximum Packet Size; dropped");
            }
            self.spool.ack(r.seq);
            return false;
        }
        codec::encode_publish(&view, s.protocol, &mut s.wbuf);
        if qos == QoS::AtLeastOnce {
            s.inflight.push_back((pkid, r.seq));
        } else {
            self.metrics.upstream_forwarded.increment(1);
            self.spool.ack(r.seq);
        }
        true
    }

    /// Drops (and counts) messages older than `upstream.spool_max_age_secs`.
    fn expire(&self) {
        let expired = self.spool.expire(crate::store::now_ms()).len();
        if expired > 0 {
            self.metrics.upstream_failed.increment(expired as u64);
            if self.up_warn.allow() {
                tracing::warn!(
                    expired,
                    "messages for the upstream were older than upstream.spool_max_age_secs; dropped"
                );
            }
        }
    }

    fn gauges(&self) {
        self.spool.report(&self.spool_metrics);
    }

    fn handle(&self, s: &mut Session, p: Packet, acked: &mut bool) -> Result<(), Ended> {
        match p {
            Packet::PubAck(a) => {
                let Some(i) = s.inflight.iter().position(|(p, _)| *p == a.pkid) else {
                    return Ok(());
                };
                if a.code >= 0x80 && !refused_for_good(a.code) {
                    return Err(format!(
                        "the upstream refused a message for now ({:#04x})",
                        a.code
                    ));
                }
                if let Some((_, seq)) = s.inflight.remove(i) {
                    if a.code >= 0x80 {
                        self.metrics.upstream_failed.increment(1);
                        if self.up_warn.allow() {
                            tracing::warn!(
                                code = a.code,
                                "the upstream refused a message for good; it is dropped"
                            );
                        }
                    } else {
                        *acked = true;
                        self.metrics.upstream_forwarded.increment(1);
                    }
                    self.spool.ack(seq);
                }
            }
            Packet::Publish(p) => self.inbound(s, p),
            Packet::SubAck(a) if a.codes.iter().any(|c| *c >= 0x80) => {
                tracing::warn!(codes = ?a.codes, "the upstream refused an upstream.subscribe filter");
            }
            Packet::Disconnect(d) => {
                s.closed_by_upstream = true;
                return Err(format!("the upstream sent DISCONNECT {:#04x}", d.code));
            }
            _ => {}
        }
        Ok(())
    }

    /// Publishes an upstream message here under its mapped topic; its
    /// acknowledgement waits for the local commit.
    fn inbound(&self, s: &mut Session, p: Publish) {
        self.metrics.upstream_received.increment(1);
        let pkid = if p.qos == QoS::AtMostOnce { 0 } else { p.pkid };
        let remote = p.topic.as_str();
        let local = self
            .mappings
            .iter()
            .find(|m| topic::matches(&m.filter, remote))
            .map(|m| {
                let json = m
                    .topic
                    .reads_payload()
                    .then(|| sql::Message::parse_payload(&p.payload))
                    .flatten();
                m.topic.render(
                    &sql::Message {
                        topic: remote,
                        payload: &p.payload,
                        json: json.as_ref(),
                        client_id: None,
                        principal: None,
                        timestamp_ms: crate::store::now_ms() as i64,
                        account: "",
                    },
                    &sql::Variables::new(),
                )
            });
        let Some(local) =
            local.filter(|l| topic::validate_name(l).is_ok() && !topic::is_reserved(l))
        else {
            self.metrics.upstream_failed.increment(1);
            if self.in_warn.allow() {
                tracing::warn!(
                    remote,
                    "an upstream message has no valid local topic; dropped"
                );
            }
            s.pending.push_back(Inbound { pkid, commit: None });
            s.ack_ready();
            return;
        };
        let now = Instant::now();
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let msg = Arc::new(Message::new(
            local.into(),
            p.payload,
            p.qos.min(QoS::AtLeastOnce),
            p.retain,
            properties,
            now,
            self.origin.clone(),
        ));
        match self.router.publish(&msg, now) {
            Ok(routed) => {
                s.pending.push_back(Inbound {
                    pkid,
                    commit: routed.commit,
                });
                s.ack_ready();
            }
            Err(e) => {
                // Not acknowledged: a persistent session sends it again.
                self.metrics.upstream_failed.increment(1);
                if self.in_warn.allow() {
                    tracing::warn!(error = %e, "an upstream message could not be published here");
                }
            }
        }
    }
}
