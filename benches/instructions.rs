//! Instruction counts of the paths every message takes, under valgrind's
//! callgrind (through iai-callgrind): the same binary and inputs give the
//! same count whatever else the machine is doing, where a timing on these
//! shared machines moves by half. Each path runs once after a warm-up (its
//! caches filled and its buffers grown, as on a connection that has been
//! up a while), and each benchmark returns what it worked on, so that
//! tearing it down is not counted.
//!
//! `cargo bench --bench instructions`, with
//! valgrind and `iai-callgrind-runner` of the same version installed
//! (`.ci/run` installs both).

use bytes::{Bytes, BytesMut};
use edgegate::codec::{self, Packet, Protocol, Publish, PublishProperties, QoS};
use edgegate::policy::compile::{ArnHead, Context, compile};
use edgegate::policy::document::parse;
use edgegate::policy::eval::{Action, DecisionCache, PolicySet, ResourceType};
use edgegate::router::{Delivery, MailboxLimits, Message, Origin};
use edgegate::session::state::outbound;
use edgegate::shadow::document::{Limits, Shadow, parse_update};
use edgegate::transport::record::{Content, Records, Secret, Suite};
use iai_callgrind::{library_benchmark, library_benchmark_group, main};
use std::hint::black_box;
use std::sync::Arc;
use tokio::time::Instant;

#[path = "support/fan_out.rs"]
mod fan_out;
use fan_out::FanOut;

#[path = "support/shadow_update.rs"]
mod shadow_update;
use shadow_update::shadow_and_update;

/// A device's policy as AWS's examples write them: its own topics by
/// thing name, a broadcast topic by attribute.
const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/fan/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fan/*"},
    {"Effect": "Deny", "Action": "iot:*", "Resource": "arn:aws:iot:*:*:topic/$aws/events/*"}
  ]
}"#;

/// Subscribers each message is routed to.
const SUBSCRIBERS: u64 = 10;

/// A connection's compiled policies and its decision cache.
struct Authorizer {
    set: PolicySet,
    cache: DecisionCache,
}

impl Authorizer {
    fn new() -> Self {
        let doc = parse(POLICY).expect("valid policy");
        let name: Arc<str> = "device".into();
        let mut ctx = Context::new();
        ctx.set("iot:ClientId", "sensor-0042")
            .set("iot:Connection.Thing.ThingName", "sensor-0042");
        let head = ArnHead::new("us-east-1", "000000000000");
        Self {
            set: compile([(&name, &doc)], &head, &ctx),
            cache: DecisionCache::default(),
        }
    }

    fn allows(&mut self, action: Action, topic: &str) -> bool {
        self.cache
            .decide(&self.set, action, ResourceType::Topic, topic)
            .is_allowed()
    }
}

/// One publish from the wire to every subscriber's write buffer.
struct PublishPath {
    fan: FanOut,
    wire: Bytes,
    publisher: Authorizer,
    subscriber: Authorizer,
    deliveries: Vec<Delivery>,
    out: BytesMut,
}

impl PublishPath {
    fn new(qos: QoS) -> Self {
        // Mailboxes notify tasks; they need a runtime to belong to.
        let runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        ));
        std::mem::forget(runtime.enter());
        let limits = MailboxLimits {
            queued: usize::MAX,
            stored: usize::MAX,
        };
        let fan = FanOut::new(SUBSCRIBERS, qos, limits);
        let mut wire = BytesMut::new();
        codec::encode(
            &Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: fan.msg.topic.clone(),
                pkid: 7,
                properties: PublishProperties::default(),
                payload: fan.msg.payload.clone(),
            }),
            Protocol::V4,
            &mut wire,
        );
        let mut path = Self {
            fan,
            wire: wire.freeze(),
            publisher: Authorizer::new(),
            subscriber: Authorizer::new(),
            deliveries: Vec::with_capacity(16),
            out: BytesMut::with_capacity(4096),
        };
        for _ in 0..3 {
            path.run();
        }
        path
    }

    /// Decodes the PUBLISH, decides iot:Publish, routes it, then for every
    /// delivery decides iot:Receive and encodes it; the number of bytes
    /// encoded.
    fn run(&mut self) -> usize {
        let mut buf = BytesMut::from(&self.wire[..]);
        let Ok(Some(Packet::Publish(p))) = codec::decode(&mut buf, Protocol::V4, usize::MAX) else {
            panic!("a PUBLISH");
        };
        assert!(self.publisher.allows(Action::Publish, p.topic.as_str()));
        let now = Instant::now();
        let msg = Arc::new(Message::published(p, now, Origin::gateway()));
        let routed = self.fan.router.publish(&msg, now).expect("routed");
        assert_eq!(routed.matched as u64, SUBSCRIBERS);
        self.out.clear();
        self.fan.drain_each(&mut self.deliveries, |deliveries| {
            for d in deliveries.drain(..) {
                if self
                    .subscriber
                    .allows(Action::Receive, d.msg.topic.as_str())
                {
                    let pkid = if d.qos == QoS::AtMostOnce { 0 } else { 1 };
                    codec::encode_publish(
                        &outbound::view(&d, pkid, false, None),
                        Protocol::V4,
                        &mut self.out,
                    );
                }
            }
        });
        self.out.len()
    }
}

#[library_benchmark]
#[bench::qos0(PublishPath::new(QoS::AtMostOnce))]
#[bench::qos1(PublishPath::new(QoS::AtLeastOnce))]
fn publish_to_10_subscribers(mut path: PublishPath) -> PublishPath {
    let encoded = path.run();
    assert!(encoded > 0);
    path
}

/// Both ends of a TLS 1.3 connection past its handshake, in the suite
/// rustls clients ask for first (AES-256-GCM): the server's records as a
/// connection holds them, and the client's.
struct TlsPair {
    server: Records,
    client: Records,
    record: Vec<u8>,
    reply: Vec<u8>,
    plain: Vec<u8>,
}

impl TlsPair {
    fn new() -> Self {
        let suite = Suite::Aes256GcmSha384;
        let secret = |seed: u8| Secret::new(&[seed; 48]).expect("a secret");
        let side = |rx, tx| Records::new(suite, (0, secret(rx)), (0, secret(tx))).expect("records");
        let mut pair = Self {
            server: side(1, 2),
            client: side(2, 1),
            record: Vec::with_capacity(4096),
            reply: Vec::new(),
            plain: vec![0x5a; 1024],
        };
        for _ in 0..3 {
            pair.run();
        }
        pair
    }

    /// 1 KiB of packets sealed into a record by the client and opened by
    /// the server; how many bytes it read.
    fn run(&mut self) -> usize {
        self.record.clear();
        self.client
            .seal(&self.plain, &mut self.record)
            .expect("sealed");
        match self.server.open(&mut self.record, &mut self.reply) {
            Ok(Some((_, Content::Data(plain)))) => plain.len(),
            other => panic!("not opened: {other:?}"),
        }
    }
}

#[library_benchmark]
#[bench::record_1k(TlsPair::new())]
fn tls_record_sealed_and_opened(mut pair: TlsPair) -> TlsPair {
    assert_eq!(pair.run(), 1024);
    pair
}

/// A connection's authorizer that has decided on `topic` once.
fn decided(topic: &'static str) -> (Authorizer, &'static str, bool) {
    let mut auth = Authorizer::new();
    let allowed = auth.allows(Action::Publish, topic);
    (auth, topic, allowed)
}

#[library_benchmark]
#[bench::allowed(decided("things/sensor-0042/temperature"))]
#[bench::denied(decided("things/sensor-0043/temperature"))]
fn cached_policy_decision(
    (mut auth, topic, allowed): (Authorizer, &'static str, bool),
) -> Authorizer {
    assert_eq!(black_box(auth.allows(Action::Publish, topic)), allowed);
    auth
}

#[library_benchmark]
#[bench::update_1k(shadow_and_update())]
fn shadow_merge((shadow, update, limits): (Shadow, &'static [u8], Limits)) -> (Shadow, Shadow) {
    let req = parse_update(update, &limits).expect("valid");
    let done = shadow.update(&req, 2, &limits).expect("accepted");
    let documents = shadow.documents(&done.shadow, req.client_token.as_deref(), 2);
    assert!(!documents.is_empty() && done.delta.is_some());
    (shadow, done.shadow)
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = publish_to_10_subscribers, tls_record_sealed_and_opened, cached_policy_decision, shadow_merge
);

main!(library_benchmark_groups = hot_paths);
