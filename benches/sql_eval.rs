//! A typical rule on a typical message: parse once, evaluate
//! `SELECT a, b.c FROM 'x/+' WHERE temp > 30` on a 200-byte JSON payload,
//! payload parsing included (it happens once per message), against parsing
//! alone.

use criterion::{Criterion, criterion_group, criterion_main};
use edgegate::sql::{Message, evaluate, parse};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let stmt = parse("SELECT a, b.c FROM 'x/+' WHERE temp > 30").expect("valid");
    let payload = br#"{"a": 17, "b": {"c": "kitchen", "d": [1, 2, 3]}, "temp": 31.5, "humidity": 40, "device": "sensor-0042", "firmware": "1.4.2", "battery": 0.93, "ts": 1700000000000, "tags": ["indoor", "ground-floor"]}"#;
    assert!((190..=210).contains(&payload.len()));
    let mut group = c.benchmark_group("sql_eval");
    group.noise_threshold(0.2);
    // The baseline: what every rule engine pays for a JSON payload.
    group.bench_function("parse_payload", |b| {
        b.iter(|| Message::parse_payload(black_box(payload)))
    });
    group.bench_function("parse_payload_and_evaluate", |b| {
        b.iter(|| {
            let json = Message::parse_payload(black_box(payload));
            let msg = Message {
                topic: "x/y",
                payload,
                json: json.as_ref(),
                client_id: Some("sensor-0042"),
                principal: None,
                timestamp_ms: 0,
                account: "000000000000",
            };
            evaluate(&stmt, &msg).output.map(|o| o.to_bytes().len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
