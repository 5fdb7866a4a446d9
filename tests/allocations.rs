//! A publish shares one message among its subscribers: routing it allocates
//! nothing per subscriber, however many there are.

use bytes::Bytes;
use edgegate::codec::{PublishProperties, QoS, SubOptions};
use edgegate::metrics::Metrics;
use edgegate::router::{Delivery, Mailbox, MailboxLimits, Message, Origin, Router, Subscriber};
use edgegate::store::Store;
use std::sync::Arc;
use tokio::time::Instant;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Blocks allocated so far, by every thread.
fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// Allocations made by routing one publish to `n` subscribers, half by an
/// exact filter and half by a wildcard, at `qos`, once their mailboxes are
/// warm.
fn allocations_per_publish(n: u64, qos: QoS) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let (store, _) = Store::open(&dir.path().join("db"), false, metrics.clone()).expect("store");
    let router = Router::new(store, metrics);
    let limits = MailboxLimits {
        queued: 1000,
        stored: 1000,
    };
    let mailboxes: Vec<Arc<Mailbox>> = (0..n)
        .map(|i| {
            Arc::new(Mailbox::new(
                i + 1,
                format!("sub-{i}").into(),
                false,
                limits,
            ))
        })
        .collect();
    for (i, m) in mailboxes.iter().enumerate() {
        m.set_online(true);
        let filter = if i % 2 == 0 { "fan/out" } else { "fan/+" };
        router.subscribe(
            filter,
            None,
            Subscriber {
                mailbox: m.clone(),
                options: SubOptions::qos(qos),
                sub_id: None,
            },
        );
    }
    let msg = Arc::new(Message::new(
        "fan/out".into(),
        Bytes::from(vec![0x5a; 64]),
        qos,
        false,
        PublishProperties::default(),
        Instant::now(),
        Origin::gateway(),
    ));
    let mut out: Vec<Delivery> = Vec::with_capacity(16);
    let mut route = || {
        let before = allocations();
        let routed = router.publish(&msg, Instant::now()).expect("routed");
        let made = allocations() - before;
        assert_eq!(routed.matched, n as usize);
        drop(routed);
        for m in &mailboxes {
            m.drain(&mut out, usize::MAX);
            out.clear();
        }
        made
    };
    // The first publishes size the mailboxes' queues and the router's
    // scratch space; they are kept.
    for _ in 0..3 {
        route();
    }
    // The fewest of ten: the store's writer thread, idle here, may still be
    // starting during one of them, and its allocations count too; an
    // allocation per subscriber would show in every one.
    (0..10).map(|_| route()).min().unwrap_or(0)
}

#[test]
fn routing_allocates_nothing_per_subscriber() {
    let _profiler = dhat::Profiler::builder().testing().build();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let few = allocations_per_publish(10, qos);
        let many = allocations_per_publish(1000, qos);
        assert_eq!(few, many, "{qos:?}: allocations grow with subscribers");
        assert_eq!(many, 0, "{qos:?}: a warm publish allocates");
    }
}
