//! A publish shares one message among its subscribers: routing it allocates
//! nothing per subscriber, however many there are.

#[path = "../benches/support/fan_out.rs"]
mod fan_out;

use edgegate::codec::QoS;
use edgegate::router::{Delivery, MailboxLimits};
use fan_out::FanOut;
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
    let limits = MailboxLimits {
        queued: 1000,
        stored: 1000,
    };
    let fan = FanOut::new(n, qos, limits);
    let mut out: Vec<Delivery> = Vec::with_capacity(16);
    let mut route = || {
        let before = allocations();
        let routed = fan
            .router
            .publish(&fan.msg, Instant::now())
            .expect("routed");
        let made = allocations() - before;
        assert_eq!(routed.matched, n as usize);
        drop(routed);
        fan.drain_each(&mut out, Vec::clear);
        made
    };
    // The first publishes size the mailboxes' queues and the router's
    // scratch space; they are kept.
    for _ in 0..3 {
        route();
    }
    // The fewest of thirty: other threads (the store's writer, idle here,
    // starting; on a loaded machine, late) count too; an allocation per
    // subscriber would show in every one.
    (0..30).map(|_| route()).min().unwrap_or(0)
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
