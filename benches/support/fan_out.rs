//! One message routed to many subscribers in process, set up once for the
//! fan-out bench and the allocation test: a router on a throwaway store,
//! `n` online subscribers (half by `fan/out`, half by `fan/+`) and a
//! 64-byte message on `fan/out`.

use bytes::Bytes;
use edgegate::codec::{PublishProperties, QoS, SubOptions};
use edgegate::metrics::Metrics;
use edgegate::router::{Delivery, Mailbox, MailboxLimits, Message, Origin, Router, Subscriber};
use edgegate::store::Store;
use std::sync::Arc;
use tokio::time::Instant;

pub(crate) struct FanOut {
    pub(crate) router: Router,
    mailboxes: Vec<Arc<Mailbox>>,
    pub(crate) msg: Arc<Message>,
    _dir: tempfile::TempDir,
}

impl FanOut {
    /// `n` subscribers at `qos`, each mailbox bounded by `limits`.
    pub(crate) fn new(n: u64, qos: QoS, limits: MailboxLimits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new());
        let (store, _) =
            Store::open(&dir.path().join("db"), false, metrics.clone()).expect("store");
        let router = Router::new(store, metrics, Default::default());
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
            let options = SubOptions::qos(qos);
            let subscriber = Subscriber {
                mailbox: m.clone(),
                options,
                sub_id: None,
            };
            router.subscribe(filter, None, subscriber);
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
        Self {
            router,
            mailboxes,
            msg,
            _dir: dir,
        }
    }

    /// Empties each mailbox into `out` (reused, as a connection does) in
    /// turn and hands it to `each`, which leaves it empty.
    pub(crate) fn drain_each(
        &self,
        out: &mut Vec<Delivery>,
        mut each: impl FnMut(&mut Vec<Delivery>),
    ) {
        for m in &self.mailboxes {
            m.drain(out, usize::MAX);
            each(out);
        }
    }
}
