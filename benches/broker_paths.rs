//! The broker's per-message paths in process: a PUBLISH decoded and encoded
//! again (v3.1.1 and v5), the subscription trie matched with 1,000 and
//! 100,000 filters, and one message routed to 50 subscribers.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use edgegate::codec::{self, Packet, Protocol, Publish, PublishProperties, QoS};
use edgegate::router::trie::{Entry, Trie};
use edgegate::router::{FilterIndex, MailboxLimits};
use std::hint::black_box;
use tokio::time::Instant;

#[path = "support/fan_out.rs"]
mod fan_out;
use fan_out::FanOut;

fn codec_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, protocol) in [("v4", Protocol::V4), ("v5", Protocol::V5)] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "things/sensor-0042/telemetry".into(),
            pkid: 7,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0x5a; 64]),
        });
        let mut wire = BytesMut::new();
        codec::encode(&p, protocol, &mut wire);
        let wire = wire.freeze();
        group.bench_function(format!("publish_64b_round_trip_{name}"), |b| {
            let mut out = BytesMut::with_capacity(256);
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let p = codec::decode(&mut buf, protocol, usize::MAX)
                    .ok()
                    .flatten()
                    .expect("a packet");
                out.clear();
                codec::encode(black_box(&p), protocol, &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

#[derive(Clone)]
struct Sub(u64);

impl Entry for Sub {
    fn owner(&self) -> u64 {
        self.0
    }
}

fn trie_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie");
    for n in [1_000u64, 100_000] {
        let mut trie = Trie::default();
        // Per-device filters as a fleet has them, plus a few wildcards.
        for i in 0..n {
            trie.insert(&format!("things/dev-{i}/cmd/#"), None, Sub(i));
        }
        trie.insert("things/+/telemetry", None, Sub(n));
        trie.insert("#", None, Sub(n + 1));
        let topic = format!("things/dev-{}/cmd/reboot", n / 2);
        group.bench_function(format!("match_{n}_filters"), |b| {
            b.iter(|| {
                let mut hits = 0;
                trie.for_each_match(black_box(&topic), &mut |_| hits += 1);
                hits
            })
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let limits = MailboxLimits {
        queued: usize::MAX,
        stored: usize::MAX,
    };
    let fan = FanOut::new(50, QoS::AtMostOnce, limits);
    // Drained into one reused vector, as a connection does, so that the
    // figure is routing's alone.
    let mut out = Vec::with_capacity(16);
    c.bench_function("router/fan_out_1_to_50", |b| {
        b.iter(|| {
            let routed = fan
                .router
                .publish(&fan.msg, Instant::now())
                .expect("routed");
            fan.drain_each(&mut out, Vec::clear);
            routed.matched
        })
    });
}

/// The publish path's question for the rules engine (does any rule's FROM
/// match?) with 10 and 1,000 rules.
fn rule_filters(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules");
    for n in [10usize, 1000] {
        let index = FilterIndex::new(
            (0..n)
                .map(|i| format!("site/{i}/+/temp"))
                .collect::<Vec<_>>()
                .iter()
                .enumerate()
                .map(|(i, f)| (i, f.as_str())),
        );
        group.bench_function(format!("offer_{n}_rules"), |b| {
            b.iter(|| index.matches_any(std::hint::black_box("site/7/kitchen/temp")))
        });
    }
    group.finish();
}

criterion_group!(benches, codec_round_trip, trie_match, fan_out, rule_filters);
criterion_main!(benches);
