//! A device shadow update as the service applies it: a 100-byte update to
//! a 1 KiB document (validation, merge, metadata, delta and the three
//! response documents), against parsing the request alone and against the
//! update without `update/documents` (written only when anyone listens). Nothing here
//! depends on subscribers: the service publishes each response once.

use criterion::{Criterion, criterion_group, criterion_main};
use edgegate::shadow::document::{Limits, Shadow, parse_update};
use serde_json::{Map, json};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut fields = Map::new();
    for i in 0..28 {
        fields.insert(format!("sensor_{i:02}"), json!({"value": i, "unit": "C"}));
    }
    let document = json!({"state": {"desired": {"mode": "eco", "target": 21}, "reported": fields}});
    let created = parse_update(document.to_string().as_bytes(), &limits).expect("valid");
    let shadow = Shadow::default()
        .update(&created, 1, &limits)
        .expect("accepted")
        .shadow;
    assert!(
        (900..=1200).contains(&shadow.state_bytes()),
        "{}",
        shadow.state_bytes()
    );
    let update = br#"{"state":{"reported":{"sensor_03":{"value":22.5,"unit":"F"},"mode":"eco"}},"clientToken":"tok-0001"}"#;
    assert!((90..=110).contains(&update.len()));
    let mut group = c.benchmark_group("shadow_merge");
    group.noise_threshold(0.2);
    group.bench_function("parse_update", |b| {
        b.iter(|| parse_update(black_box(update), &limits).map(|u| u.version))
    });
    group.bench_function("parse_and_apply_1k", |b| {
        b.iter(|| {
            let req = parse_update(black_box(update), &limits).expect("valid");
            let done = shadow.update(&req, 2, &limits).expect("accepted");
            let documents = shadow.documents(&done.shadow, req.client_token.as_deref(), 2);
            (
                done.accepted.len(),
                documents.len(),
                done.delta.map(|d| d.len()),
            )
        })
    });
    group.bench_function("parse_and_apply_1k_unheard_documents", |b| {
        b.iter(|| {
            let req = parse_update(black_box(update), &limits).expect("valid");
            let done = shadow.update(&req, 2, &limits).expect("accepted");
            (done.accepted.len(), done.delta.map(|d| d.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
