//! The load tool behind `edgegate bench`: drives any MQTT broker on
//! 127.0.0.1 (edgegate, Mosquitto, rumqttd) with real connections and
//! reports one JSON line per run.
//!
//! Scenarios:
//! - `conn`: N connections at concurrency C; connections per second and
//!   handshake (TCP + TLS + CONNECT/CONNACK) p50/p99; optionally held open;
//!   failures counted by kind (the CONNACK code, the TLS alert).
//! - `fanin`: P publishers x M messages of S bytes at QoS q, each to its own
//!   topic, one wildcard subscriber; delivered/s, acked/s, loss, reordering.
//! - `fanout`: one publisher, K subscribers of one topic; deliveries/s.
//! - `latency`: one publisher at a fixed rate; p50/p99/p99.9 from publish to
//!   delivery after a warm-up (the payload carries the send time).
//! - `shadow`: P devices, each updating its own device shadow M times and
//!   waiting for `update/accepted` before the next update; updates/s and
//!   p50/p99 from request to answer (brokers with an AWS IoT shadow service).
//! - `flood`: the `latency` client measured alone, then again next to P
//!   clients that publish as fast as the broker takes it (reconnecting when
//!   dropped); the ratio of its p99s says whether a misbehaving client can
//!   slow a well-behaved one.
//!
//! Every wait is bounded by one deadline (`timeout`); a run that hits it
//! reports what it saw with `"timed_out": true`. The tool reports its own
//! CPU time, so that a saturated tool is not mistaken for a slow broker.

pub mod client;

use crate::codec::{
    Ack, Packet, Properties, PublishProperties, PublishView, QoS, SubOptions, Subscribe,
};
use client::{Client, Target};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Barrier, Semaphore};
use tokio::time::{Instant, timeout_at};

/// Bytes of packets encoded before a write.
const BATCH: usize = 64 * 1024;

/// The payload's header: publisher, sequence, send time (ns since the run began).
const HEADER: usize = 16;

/// Once the publishers are done, a subscriber that hears nothing for this long stops.
const QUIET: Duration = Duration::from_millis(500);

/// How long the flooders run before the well-behaved client is measured,
/// and how long a flooder whose connection was refused waits to try again.
const FLOOD_WARM_UP: Duration = Duration::from_secs(1);
const FLOOD_RETRY: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `conn`, `fanin`, `fanout`, `latency`, `shadow` or `flood`.
    pub scenario: String,
    /// Where to connect.
    pub target: Target,
    /// `conn`: connections to make.
    pub connections: usize,
    /// `conn`: connections in progress at once.
    pub concurrency: usize,
    /// `conn`: seconds to hold every connection open before closing.
    pub hold_secs: u64,
    /// `fanin`: publishers; `shadow`: devices; `flood`: flooders.
    pub publishers: usize,
    /// `fanin`, `fanout`: messages per publisher.
    pub messages: usize,
    /// Payload bytes (at least 16).
    pub size: usize,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// `fanout`: subscribers.
    pub subscribers: usize,
    /// `latency`, `flood`: messages per second.
    pub rate: u64,
    /// `latency`, `flood`: seconds of publishing.
    pub duration_secs: u64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    pub window: usize,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// Runs one scenario and returns its report.
pub async fn run(o: &Options) -> Result<Value, String> {
    if !o.target.addr.ip().is_loopback() {
        return Err("the load tool drives brokers on 127.0.0.1 only".into());
    }
    let cpu = cpu_seconds();
    let deadline = Instant::now() + o.timeout;
    let scenario = async {
        match o.scenario.as_str() {
            "conn" => conn(o, deadline).await,
            "fanin" => fanin(o, deadline).await,
            "fanout" => fanout(o, deadline).await,
            "latency" => latency(o, deadline).await,
            "shadow" => shadow(o, deadline).await,
            "flood" => flood(o, deadline).await,
            other => Err(format!("unknown scenario `{other}`")),
        }
    };
    // Connects and subscriptions wait on the broker too: nothing outlives
    // the deadline by more than the time to write the report.
    let mut report = timeout_at(deadline + QUIET, scenario)
        .await
        .map_err(|_| "the broker did not answer before the deadline".to_owned())??;
    report["scenario"] = json!(o.scenario);
    report["tls"] = json!(o.target.tls.is_some());
    report["websocket"] = json!(o.target.websocket);
    report["qos"] = json!(o.qos as u8);
    report["tool_cpu_s"] = json!(round3(cpu_seconds() - cpu));
    Ok(report)
}

/// This process's user + system CPU seconds, from /proc (0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn per_second(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        (n as f64 / d.as_secs_f64()).round()
    }
}

/// The `p`th percentile of sorted samples, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    round3(sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0)
}

async fn conn(o: &Options, deadline: Instant) -> Result<Value, String> {
    let permits = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.connections {
        let (permits, target) = (permits.clone(), o.target.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t0 = Instant::now();
            match timeout_at(
                deadline,
                Client::connect(&target, &format!("bench-conn-{i}")),
            )
            .await
            {
                Ok(Ok(c)) => Ok((t0.elapsed(), c)),
                Ok(Err(e)) => Err(e.kind()),
                Err(_) => Err("timeout".to_owned()),
            }
        });
    }
    let mut times = Vec::with_capacity(o.connections);
    let mut held = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((d, c)) => {
                times.push(d);
                if o.hold_secs > 0 {
                    held.push(c);
                }
            }
            Err(kind) => *failures.entry(kind).or_default() += 1,
        }
    }
    let elapsed = start.elapsed();
    times.sort();
    if o.hold_secs > 0 {
        let until = (Instant::now() + Duration::from_secs(o.hold_secs)).min(deadline);
        tokio::time::sleep_until(until).await;
    }
    drop(held);
    Ok(json!({
        "connections": times.len(),
        "failed": failures.values().sum::<usize>(),
        "failures": failures,
        "concurrency": o.concurrency,
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "connections_per_s": per_second(times.len(), elapsed),
        "handshake_p50_ms": percentile_ms(&times, 50.0),
        "handshake_p99_ms": percentile_ms(&times, 99.0),
        "timed_out": Instant::now() >= deadline,
    }))
}

/// Connects and subscribes to `filter` at `qos`.
async fn subscriber(o: &Options, id: &str, filter: &str, qos: QoS) -> Result<Client, String> {
    let mut c = Client::connect(&o.target, id).await?;
    c.queue(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![(filter.to_owned(), SubOptions::qos(qos))],
        properties: Properties::default(),
    }));
    c.flush().await?;
    loop {
        match c.next().await? {
            Packet::SubAck(a) if a.codes.iter().all(|c| *c < 0x80) => return Ok(c),
            Packet::SubAck(a) => return Err(format!("SUBSCRIBE refused: {:?}", a.codes)),
            _ => {}
        }
    }
}

/// What a subscriber saw.
#[derive(Default)]
struct Seen {
    delivered: usize,
    duplicates: usize,
    reordered: usize,
    last_at: Option<Instant>,
    /// Publish-to-delivery times of messages with sequence >= the warm-up.
    latencies: Vec<Duration>,
}

/// Receives until `expected` new messages arrived, or the publishers are
/// done and nothing came for [`QUIET`] (a broker may drop QoS 0), or the
/// deadline; acknowledges as QoS asks.
async fn receive(
    mut c: Client,
    publishers: usize,
    expected: usize,
    (base, warm_up): (Instant, u32),
    done: Arc<AtomicBool>,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut next = vec![0u32; publishers];
    while seen.delivered < expected && Instant::now() < deadline {
        let wait = (Instant::now() + QUIET).min(deadline);
        match timeout_at(wait, c.read()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) if done.load(Ordering::Relaxed) => break,
            Err(_) => continue,
        }
        while let Ok(Some(p)) = c.try_next() {
            match p {
                Packet::Publish(p) => {
                    let now = Instant::now();
                    if p.qos == QoS::AtLeastOnce {
                        c.queue(&Packet::PubAck(Ack::ok(p.pkid)));
                    } else if p.qos == QoS::ExactlyOnce {
                        c.queue(&Packet::PubRec(Ack::ok(p.pkid)));
                    }
                    let Some(h) = p.payload.get(..HEADER) else {
                        continue;
                    };
                    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                    let (publisher, seq) = (word(0) as usize, word(4));
                    let Some(want) = next.get_mut(publisher) else {
                        continue;
                    };
                    if seq < *want {
                        seen.duplicates += 1;
                        continue;
                    }
                    if seq > *want {
                        seen.reordered += 1;
                    }
                    *want = seq + 1;
                    seen.delivered += 1;
                    seen.last_at = Some(now);
                    if seq >= warm_up {
                        let sent_ns = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
                        let sent = base + Duration::from_nanos(sent_ns);
                        seen.latencies.push(now.saturating_duration_since(sent));
                    }
                }
                Packet::PubRel(a) => c.queue(&Packet::PubComp(Ack::ok(a.pkid))),
                _ => {}
            }
        }
        if c.flush().await.is_err() {
            break;
        }
    }
    seen
}

/// One publisher's stream of messages.
struct Stream<'a> {
    /// Its number, in every payload.
    publisher: u32,
    topic: &'a str,
    messages: usize,
    /// Messages per second; as fast as the window allows when `None`.
    rate: Option<u64>,
}

/// Publishes a stream; returns when all are acknowledged (QoS 1/2) or written.
async fn publish(
    mut c: Client,
    o: &Options,
    stream: Stream<'_>,
    base: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let Stream {
        publisher,
        topic,
        messages,
        rate,
    } = stream;
    let mut payload = vec![0u8; o.size.max(HEADER)];
    payload[..4].copy_from_slice(&publisher.to_be_bytes());
    let props = PublishProperties::default();
    let (mut sent, mut acked, mut inflight) = (0usize, 0usize, 0usize);
    let mut pkid: u16 = 0;
    let start = Instant::now();
    while acked < messages {
        while sent < messages
            && (o.qos == QoS::AtMostOnce || inflight < o.window)
            && c.wbuf.len() < BATCH
        {
            if let Some(r) = rate {
                let at = start + Duration::from_secs_f64(sent as f64 / r as f64);
                if at > Instant::now() {
                    if c.wbuf.is_empty() {
                        timeout_at(deadline, tokio::time::sleep_until(at))
                            .await
                            .map_err(|_| "timed out")?;
                    } else {
                        break;
                    }
                }
            }
            payload[4..8].copy_from_slice(&(sent as u32).to_be_bytes());
            let ns = Instant::now().duration_since(base).as_nanos() as u64;
            payload[8..16].copy_from_slice(&ns.to_be_bytes());
            if o.qos != QoS::AtMostOnce {
                pkid = pkid.checked_add(1).unwrap_or(1);
                inflight += 1;
            }
            let view = PublishView {
                dup: false,
                qos: o.qos,
                retain: false,
                topic: topic.as_bytes(),
                pkid,
                properties: &props,
                message_expiry_interval: None,
                topic_alias: None,
                subscription_identifiers: &[],
                payload: &payload,
            };
            crate::codec::encode_publish(&view, c.protocol(), &mut c.wbuf);
            sent += 1;
        }
        timeout_at(deadline, c.flush())
            .await
            .map_err(|_| "timed out")??;
        if o.qos == QoS::AtMostOnce {
            acked = sent;
            continue;
        }
        if inflight == 0 {
            continue;
        }
        timeout_at(deadline, c.read())
            .await
            .map_err(|_| "timed out")??;
        while let Some(p) = c.try_next()? {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    inflight = inflight.saturating_sub(1);
                    acked += 1;
                }
                Packet::PubRec(a) => c.queue(&Packet::PubRel(Ack::ok(a.pkid))),
                _ => {}
            }
        }
    }
    Ok(())
}

async fn fanin(o: &Options, deadline: Instant) -> Result<Value, String> {
    let sub = subscriber(o, "bench-fanin-sub", "bench/fanin/#", o.qos).await?;
    let mut pubs = Vec::with_capacity(o.publishers);
    for p in 0..o.publishers {
        pubs.push(Client::connect(&o.target, &format!("bench-fanin-{p}")).await?);
    }
    let expected = o.publishers * o.messages;
    let base = Instant::now();
    let barrier = Arc::new(Barrier::new(o.publishers + 1));
    let done = Arc::new(AtomicBool::new(false));
    let receiving = tokio::spawn(receive(
        sub,
        o.publishers,
        expected,
        (base, 0),
        done.clone(),
        deadline,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (p, c) in pubs.into_iter().enumerate() {
        let (o, barrier) = (o.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let topic = format!("bench/fanin/{p}");
            let stream = Stream {
                publisher: p as u32,
                topic: &topic,
                messages: o.messages,
                rate: None,
            };
            publish(c, &o, stream, base, deadline).await?;
            Ok::<Instant, String>(Instant::now())
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut acked_at = start;
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(at) => acked_at = acked_at.max(at),
            Err(e) => errors.push(e),
        }
    }
    done.store(true, Ordering::Relaxed);
    let seen = receiving.await.map_err(|e| e.to_string())?;
    let took = seen
        .last_at
        .unwrap_or(start)
        .saturating_duration_since(start);
    Ok(json!({
        "publishers": o.publishers,
        "messages": expected,
        "size": o.size.max(HEADER),
        "delivered": seen.delivered,
        "lost": expected - seen.delivered,
        "duplicates": seen.duplicates,
        "reordered": seen.reordered,
        "elapsed_s": round3(took.as_secs_f64()),
        "delivered_per_s": per_second(seen.delivered, took),
        "acked_per_s": per_second(expected, acked_at.saturating_duration_since(start)),
        "errors": errors,
        "timed_out": Instant::now() >= deadline,
    }))
}

async fn fanout(o: &Options, deadline: Instant) -> Result<Value, String> {
    let mut subs = Vec::with_capacity(o.subscribers);
    for k in 0..o.subscribers {
        subs.push(subscriber(o, &format!("bench-fanout-sub-{k}"), "bench/fanout", o.qos).await?);
    }
    let publisher = Client::connect(&o.target, "bench-fanout-pub").await?;
    let base = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let receiving: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(receive(s, 1, o.messages, (base, 0), done.clone(), deadline)))
        .collect();
    let start = Instant::now();
    let stream = Stream {
        publisher: 0,
        topic: "bench/fanout",
        messages: o.messages,
        rate: None,
    };
    let published = publish(publisher, o, stream, base, deadline).await;
    done.store(true, Ordering::Relaxed);
    let (mut delivered, mut duplicates, mut reordered, mut last) = (0, 0, 0, start);
    for r in receiving {
        let seen = r.await.map_err(|e| e.to_string())?;
        delivered += seen.delivered;
        duplicates += seen.duplicates;
        reordered += seen.reordered;
        last = last.max(seen.last_at.unwrap_or(start));
    }
    let took = last.saturating_duration_since(start);
    let expected = o.messages * o.subscribers;
    Ok(json!({
        "subscribers": o.subscribers,
        "messages": o.messages,
        "size": o.size.max(HEADER),
        "deliveries": delivered,
        "lost": expected - delivered,
        "duplicates": duplicates,
        "reordered": reordered,
        "elapsed_s": round3(took.as_secs_f64()),
        "deliveries_per_s": per_second(delivered, took),
        "errors": published.err().into_iter().collect::<Vec<_>>(),
        "timed_out": Instant::now() >= deadline,
    }))
}

async fn latency(o: &Options, deadline: Instant) -> Result<Value, String> {
    let sub = subscriber(o, "bench-latency-sub", "bench/latency", o.qos).await?;
    let publisher = Client::connect(&o.target, "bench-latency-pub").await?;
    let messages = (o.rate.max(1) * o.duration_secs.max(1)) as usize;
    // The first tenth warms caches and connections up; it is not measured.
    let warm_up = (messages / 10) as u32;
    let base = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let receiving = tokio::spawn(receive(
        sub,
        1,
        messages,
        (base, warm_up),
        done.clone(),
        deadline,
    ));
    let stream = Stream {
        publisher: 0,
        topic: "bench/latency",
        messages,
        rate: Some(o.rate.max(1)),
    };
    let published = publish(publisher, o, stream, base, deadline).await;
    done.store(true, Ordering::Relaxed);
    let mut seen = receiving.await.map_err(|e| e.to_string())?;
    seen.latencies.sort();
    Ok(json!({
        "rate": o.rate,
        "messages": messages,
        "measured": seen.latencies.len(),
        "lost": messages - seen.delivered,
        "p50_ms": percentile_ms(&seen.latencies, 50.0),
        "p99_ms": percentile_ms(&seen.latencies, 99.0),
        "p999_ms": percentile_ms(&seen.latencies, 99.9),
        "errors": published.err().into_iter().collect::<Vec<_>>(),
        "timed_out": Instant::now() >= deadline,
    }))
}

async fn flood(o: &Options, deadline: Instant) -> Result<Value, String> {
    let alone = latency(o, deadline).await?;
    let sent = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let mut flooders = tokio::task::JoinSet::new();
    for i in 0..o.publishers {
        let counts = (sent.clone(), connections.clone());
        flooders.spawn(flooder(o.target.clone(), i, o.size, counts, deadline));
    }
    let _ = timeout_at(deadline, tokio::time::sleep(FLOOD_WARM_UP)).await;
    let flooded = latency(o, deadline).await;
    flooders.abort_all();
    let flooded = flooded?;
    let p99 = |r: &Value| r["p99_ms"].as_f64().unwrap_or(0.0);
    let ratio = if p99(&alone) > 0.0 {
        p99(&flooded) / p99(&alone)
    } else {
        0.0
    };
    Ok(json!({
        "flooders": o.publishers,
        "flood_sent": sent.load(Ordering::Relaxed),
        "flood_connections": connections.load(Ordering::Relaxed),
        "alone": alone,
        "flooded": flooded,
        "p99_ratio": round3(ratio),
        "timed_out": Instant::now() >= deadline,
    }))
}

/// Publishes QoS 0 to its own topic as fast as the broker reads, and
/// connects again whenever it is dropped or refused, until aborted or the
/// deadline; counts what it wrote and the connections it made.
async fn flooder(
    target: client::Target,
    i: usize,
    size: usize,
    (sent, connections): (Arc<AtomicUsize>, Arc<AtomicUsize>),
    deadline: Instant,
) {
    let id = format!("bench-flood-{i}");
    let topic = format!("bench/flood/{i}");
    let payload = vec![0u8; size.max(HEADER)];
    let props = PublishProperties::default();
    let view = PublishView {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.as_bytes(),
        pkid: 0,
        properties: &props,
        message_expiry_interval: None,
        topic_alias: None,
        subscription_identifiers: &[],
        payload: &payload,
    };
    while Instant::now() < deadline {
        let Ok(Ok(mut c)) = timeout_at(deadline, Client::connect(&target, &id)).await else {
            let _ = timeout_at(deadline, tokio::time::sleep(FLOOD_RETRY)).await;
            continue;
        };
        connections.fetch_add(1, Ordering::Relaxed);
        loop {
            let mut batch = 0;
            while c.wbuf.len() < BATCH {
                crate::codec::encode_publish(&view, c.protocol(), &mut c.wbuf);
                batch += 1;
            }
            match timeout_at(deadline, c.flush()).await {
                Ok(Ok(())) => sent.fetch_add(batch, Ordering::Relaxed),
                _ => break,
            };
        }
    }
}

/// One device's updates of its own shadow, each after the previous answer;
/// the time from each request to its `update/accepted`.
async fn shadow_device(
    mut c: Client,
    device: &str,
    updates: usize,
    deadline: Instant,
) -> Result<Vec<Duration>, String> {
    let prefix = format!("$aws/things/{device}/shadow/update");
    let accepted = format!("{prefix}/accepted");
    let props = PublishProperties::default();
    let mut times = Vec::with_capacity(updates);
    for n in 0..updates {
        let body = format!(r#"{{"state":{{"reported":{{"n":{n}}}}}}}"#);
        let view = PublishView {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: prefix.as_bytes(),
            pkid: (n % usize::from(u16::MAX)) as u16 + 1,
            properties: &props,
            message_expiry_interval: None,
            topic_alias: None,
            subscription_identifiers: &[],
            payload: body.as_bytes(),
        };
        let t0 = Instant::now();
        crate::codec::encode_publish(&view, c.protocol(), &mut c.wbuf);
        timeout_at(deadline, c.flush())
            .await
            .map_err(|_| "timed out")??;
        'answer: loop {
            timeout_at(deadline, c.read())
                .await
                .map_err(|_| "timed out")??;
            while let Some(p) = c.try_next()? {
                if let Packet::Publish(p) = p {
                    if p.qos == QoS::AtLeastOnce {
                        c.queue(&Packet::PubAck(Ack::ok(p.pkid)));
                    }
                    if p.topic.as_str() == accepted {
                        times.push(t0.elapsed());
                        break 'answer;
                    }
                }
            }
        }
    }
    Ok(times)
}

async fn shadow(o: &Options, deadline: Instant) -> Result<Value, String> {
    let mut devices = Vec::with_capacity(o.publishers);
    for d in 0..o.publishers {
        let id = format!("bench-shadow-{d}");
        let filter = format!("$aws/things/{id}/shadow/update/accepted");
        // Answers at QoS 1, as the AWS IoT Device SDK subscribes.
        let c = subscriber(o, &id, &filter, QoS::AtLeastOnce).await?;
        devices.push((id, c));
    }
    let barrier = Arc::new(Barrier::new(o.publishers + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, c) in devices {
        let (barrier, updates) = (barrier.clone(), o.messages);
        tasks.spawn(async move {
            barrier.wait().await;
            shadow_device(c, &id, updates, deadline).await
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let (mut times, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(t) => times.extend(t),
            Err(e) => errors.push(e),
        }
    }
    let took = start.elapsed();
    times.sort();
    Ok(json!({
        "devices": o.publishers,
        "updates": times.len(),
        "elapsed_s": round3(took.as_secs_f64()),
        "updates_per_s": per_second(times.len(), took),
        "p50_ms": percentile_ms(&times, 50.0),
        "p99_ms": percentile_ms(&times, 99.0),
        "errors": errors,
        "timed_out": Instant::now() >= deadline,
    }))
}
