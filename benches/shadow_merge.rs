//! A device shadow update as the service applies it: a 100-byte update to
//! a 1 KiB document (validation, merge, metadata, delta and the three
//! response documents), against parsing the request alone and against the
//! update without `update/documents` (written only when anyone listens). Nothing here
//! depends on subscribers: the service publishes each response once.

use criterion::{Criterion, criterion_group, criterion_main};
use edgegate::shadow::document::parse_update;
use std::hint::black_box;

#[path = "support/shadow_update.rs"]
mod shadow_update;
use shadow_update::shadow_and_update;

fn bench(c: &mut Criterion) {
    let (shadow, update, limits) = shadow_and_update();
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
