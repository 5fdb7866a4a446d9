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
use crate::rules::sql;
use crate::spool::{self, Spool};
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

/// How long an inbound message may take to become durable here before the
/// link is given up (the upstream then sends it again).
const LOCAL_COMMIT: Duration = Duration::from_secs(30);

/// Why a connection attempt or a session ended.
type Ended = String;

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
}

/// The client's TLS configuration: the upstream's CA, this gateway's
/// certificate, and ALPN `x-amzn-mqtt-ca` on port 443 (AWS IoT's MQTT there).
pub(super) fn tls_config(config: &Upstream) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read(&config.ca)?.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", config.ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", config.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificates", config.ca.display()));
    }
    let chain = rustls_pemfile::certs(&mut read(&config.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", config.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", config.cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut read(&config.key)?.as_slice())
        .map_err(|e| format!("{}: {e}", config.key.display()))?
        .ok_or_else(|| format!("{}: no private key", config.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", config.cert.display()))?;
    if config.host_port().is_some_and(|(_, port)| port == 443) {
        tls.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    }
    Ok(Arc::new(tls))
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
    window: usize,
    next_pkid: u16,
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
}

impl Bridge {
    /// Connects, serves, and connects again until shutdown.
    pub(super) async fn run(self) {
        let mut backoff = spool::Backoff::new(
            self.config.reconnect_initial_ms,
            self.config.reconnect_max_ms,
        );
        // Spool sequence numbers below this were sent on some earlier link.
        let mut sent_until = 0u64;
        loop {
            self.expire();
            let attempt = tokio::select! {
                r = self.connect() => r,
                _ = self.shutdown.cancelled() => return,
            };
            match attempt {
                Ok(session) => {
                    backoff.reset();
                    self.set_connected(true);
                    tracing::info!(endpoint = %self.config.endpoint, "upstream link up");
                    let why = self.serve(session, &mut sent_until).await;
                    self.set_connected(false);
                    if self.shutdown.is_cancelled() {
                        return;
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
                    ..Properties::default()
                },
            })));
            s.stream
                .write_all(&s.wbuf)
                .await
                .map_err(|e| format!("CONNECT: {e}"))?;
            s.wbuf.clear();
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
            Ok(s)
        };
        timeout_at(deadline, attempt)
            .await
            .map_err(|_| "no CONNACK before upstream.connect_timeout_secs".to_owned())?
    }

    /// Serves one connection until it ends; returns why.
    async fn serve(&self, mut s: Session, sent_until: &mut u64) -> Ended {
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
        let ka = Duration::from_secs(u64::from(self.config.keep_alive_secs));
        let mut rate = Rate {
            sent: VecDeque::new(),
            limit: self.config.max_publishes_per_second as usize,
        };
        // Everything unacknowledged is sent again, from the spool's head.
        let mut cursor = 0u64;
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut ping_sent = false;
        loop {
            self.expire();
            let now = Instant::now();
            let room = s
                .window
                .saturating_sub(s.inflight.len())
                .min(rate.room(now));
            if room > 0 {
                for r in self.spool.take_from(cursor, room) {
                    cursor = r.seq + 1;
                    self.send_up(&mut s, r, sent_until, now);
                    rate.sent.push_back(now);
                }
                self.gauges();
            }
            if !s.wbuf.is_empty() {
                match timeout(ka, s.stream.write_all(&s.wbuf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("write: {e}"),
                    Err(_) => return "write stalled for the keep alive".into(),
                }
                s.wbuf.clear();
                last_write = Instant::now();
            }
            if s.rbuf.capacity() - s.rbuf.len() < READ_CHUNK / 4 {
                s.rbuf.reserve(READ_CHUNK);
            }
            let open = s.inflight.len() < s.window;
            let rate_wait = rate.next_slot();
            let ping_at = last_read.min(last_write) + ka;
            let dead_at = last_read + ka * 3 / 2;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    s.send(&Packet::Disconnect(Disconnect::with_reason(0, None)));
                    let _ = timeout(Duration::from_secs(1), s.stream.write_all(&s.wbuf)).await;
                    return "shutdown".into();
                }
                r = s.stream.read_buf(&mut s.rbuf) => match r {
                    Ok(0) => return "closed by the upstream".into(),
                    Err(e) => return format!("read: {e}"),
                    Ok(_) => {
                        last_read = Instant::now();
                        ping_sent = false;
                        loop {
                            match codec::decode(&mut s.rbuf, s.protocol, MAX_PACKET) {
                                Ok(Some(p)) => {
                                    if let Err(why) = self.handle(&mut s, p).await {
                                        return why;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => return format!("protocol error from the upstream: {e}"),
                            }
                        }
                    }
                },
                _ = sleep_until(dead_at) => return "no answer for 1.5 times the keep alive".into(),
                _ = sleep_until(ping_at), if !ping_sent => {
                    s.send(&Packet::PingReq);
                    ping_sent = true;
                }
                _ = sleep_until(rate_wait.unwrap_or(now)), if open && rate_wait.is_some() => {}
                _ = self.spool.appended(), if open && rate_wait.is_none() => {}
            }
        }
    }

    /// Encodes one spooled message as a PUBLISH; QoS 0 leaves the spool at once.
    fn send_up(&self, s: &mut Session, r: spool::Record, sent_until: &mut u64, now: Instant) {
        if r.seq < *sent_until {
            self.metrics.upstream_resent.increment(1);
        }
        *sent_until = (*sent_until).max(r.seq + 1);
        let Some(msg) = Message::from_record(&r.data, now) else {
            // Expired while it waited, or unreadable.
            self.metrics.upstream_failed.increment(1);
            self.spool.ack(r.seq);
            return;
        };
        let qos = msg.qos.min(QoS::AtLeastOnce);
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
        codec::encode_publish(&view, s.protocol, &mut s.wbuf);
        if qos == QoS::AtLeastOnce {
            s.inflight.push_back((pkid, r.seq));
        } else {
            self.metrics.upstream_forwarded.increment(1);
            self.spool.ack(r.seq);
        }
    }

    /// Drops (and counts) messages older than `upstream.spool_max_age_secs`.
    fn expire(&self) {
        let expired = self.spool.expire(spool::now_ms()).len();
        if expired > 0 {
            self.metrics.upstream_failed.increment(expired as u64);
            tracing::warn!(
                expired,
                "messages for the upstream were older than upstream.spool_max_age_secs; dropped"
            );
        }
    }

    fn gauges(&self) {
        let (records, bytes, oldest) = self.spool.depth(spool::now_ms());
        let m = &self.spool_metrics;
        m.depth.set(records as f64);
        m.bytes.set(bytes as f64);
        m.oldest.set(oldest as f64 / 1000.0);
    }

    async fn handle(&self, s: &mut Session, p: Packet) -> Result<(), Ended> {
        match p {
            Packet::PubAck(a) => {
                let Some(i) = s.inflight.iter().position(|(p, _)| *p == a.pkid) else {
                    return Ok(());
                };
                if let Some((_, seq)) = s.inflight.remove(i) {
                    if a.code >= 0x80 {
                        // Refused for good (MQTT 5): sending it again changes nothing.
                        self.metrics.upstream_failed.increment(1);
                        tracing::warn!(
                            code = a.code,
                            "the upstream refused a message; it is dropped"
                        );
                    } else {
                        self.metrics.upstream_forwarded.increment(1);
                    }
                    self.spool.ack(seq);
                    self.gauges();
                }
            }
            Packet::Publish(p) => self.inbound(s, p).await?,
            Packet::SubAck(a) if a.codes.iter().any(|c| *c >= 0x80) => {
                tracing::warn!(codes = ?a.codes, "the upstream refused an upstream.subscribe filter");
            }
            Packet::Disconnect(d) => {
                return Err(format!("the upstream sent DISCONNECT {:#04x}", d.code));
            }
            _ => {}
        }
        Ok(())
    }

    /// Publishes an upstream message here under its mapped topic, and
    /// acknowledges it once it is durable.
    async fn inbound(&self, s: &mut Session, p: Publish) -> Result<(), Ended> {
        self.metrics.upstream_received.increment(1);
        let ack = |s: &mut Session| {
            if p.qos != QoS::AtMostOnce {
                s.send(&Packet::PubAck(codec::Ack::ok(p.pkid)));
            }
        };
        let remote = p.topic.as_str();
        let Some(m) = self
            .mappings
            .iter()
            .find(|m| topic::matches(&m.filter, remote))
        else {
            self.metrics.upstream_failed.increment(1);
            ack(s);
            return Ok(());
        };
        let json = sql::Message::parse_payload(&p.payload);
        let local = m.topic.render(
            &sql::Message {
                topic: remote,
                payload: &p.payload,
                json: json.as_ref(),
                client_id: None,
                principal: None,
                timestamp_ms: spool::now_ms() as i64,
                account: "",
            },
            &sql::Variables::new(),
        );
        if topic::validate_name(&local).is_err() || topic::is_reserved(&local) {
            self.metrics.upstream_failed.increment(1);
            tracing::warn!(remote, local = %local, "an upstream message maps to an invalid local topic; dropped");
            ack(s);
            return Ok(());
        }
        let now = Instant::now();
        let mut properties = p.properties.clone();
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let msg = Arc::new(Message::new(
            local.as_str().into(),
            p.payload.clone(),
            p.qos.min(QoS::AtLeastOnce),
            p.retain,
            properties,
            now,
            Arc::new(Origin {
                client_id: Some(self.config.client_id.as_str().into()),
                bridged: true,
                ..Origin::default()
            }),
        ));
        let durable = match self.router.publish(&msg, now) {
            Ok(routed) => match routed.commit {
                None => true,
                Some(c) => matches!(timeout(LOCAL_COMMIT, c).await, Ok(Ok(Ok(())))),
            },
            Err(_) => false,
        };
        if durable {
            ack(s);
            Ok(())
        } else {
            // Unacknowledged, the upstream sends it again on the next link.
            self.metrics.upstream_failed.increment(1);
            Err("an upstream message could not be stored here".into())
        }
    }
}
