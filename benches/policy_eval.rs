//! Policy decisions per message: a realistic device policy (10 statements,
//! policy variables, a condition), decided uncached and through the
//! per-connection cache, for an allowed and a denied topic.

use criterion::{Criterion, criterion_group, criterion_main};
use edgegate::policy::compile::{ArnHead, Context, compile};
use edgegate::policy::document::parse;
use edgegate::policy::eval::{Action, DecisionCache, ResourceType};
use std::hint::black_box;
use std::sync::Arc;

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
     "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/things/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/broadcast/${iot:Connection.Thing.Attributes[site]}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/broadcast/${iot:Connection.Thing.Attributes[site]}/*"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/telemetry/${iot:ClientId}/?????"},
    {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/admin/*"},
    {"Effect": "Deny", "Action": "iot:*", "Resource": "arn:aws:iot:*:*:topic/$aws/events/*"}
  ]
}"#;

fn bench(c: &mut Criterion) {
    let doc = parse(POLICY).expect("valid policy");
    let name: Arc<str> = "device".into();
    let mut ctx = Context::new();
    ctx.set("iot:ClientId", "sensor-0042")
        .set("iot:Connection.Thing.ThingName", "sensor-0042")
        .set("iot:Connection.Thing.IsAttached", "true")
        .set("iot:Connection.Thing.Attributes[site]", "berlin");
    let head = ArnHead::new("us-east-1", "000000000000");
    let set = compile([(&name, &doc)], &head, &ctx);
    let allowed = "things/sensor-0042/temperature";
    let denied = "things/sensor-0043/temperature";

    let mut group = c.benchmark_group("policy_eval");
    group.noise_threshold(0.2);
    group.bench_function("uncached_allowed", |b| {
        b.iter(|| set.decide(Action::Publish, ResourceType::Topic, black_box(allowed)))
    });
    group.bench_function("uncached_denied", |b| {
        b.iter(|| set.decide(Action::Publish, ResourceType::Topic, black_box(denied)))
    });
    let mut cache = DecisionCache::default();
    group.bench_function("cached_allowed", |b| {
        b.iter(|| {
            cache.decide(
                &set,
                Action::Publish,
                ResourceType::Topic,
                black_box(allowed),
            )
        })
    });
    group.bench_function("cached_denied", |b| {
        b.iter(|| {
            cache.decide(
                &set,
                Action::Publish,
                ResourceType::Topic,
                black_box(denied),
            )
        })
    });
    group.bench_function("compile_per_connection", |b| {
        b.iter(|| compile([(&name, &doc)], &head, black_box(&ctx)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
