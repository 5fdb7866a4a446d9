//! Durable state across restarts: a clean shutdown, and `kill -9` of the binary.

mod common;

use common::*;
use rumqttc::QoS;

#[tokio::test]
async fn retained_and_queued_messages_survive_a_clean_restart() {
    let mut t = TestServer::start().await;
    let mut dev = t.v4("keeper", false).await;
    dev.subscribe("inbox/keeper", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut p = t.v4("sender", true).await;
    p.publish("config/site", QoS::AtLeastOnce, true, b"v1")
        .await;
    p.puback().await;
    for i in 0..3 {
        p.publish(
            "inbox/keeper",
            QoS::AtLeastOnce,
            false,
            format!("q{i}").as_bytes(),
        )
        .await;
        p.puback().await;
    }
    p.disconnect().await;

    t.restart().await;

    let mut dev = t.v4("keeper", false).await;
    assert!(dev.session_present, "the persistent session came back");
    for i in 0..3 {
        assert_eq!(&dev.recv().await.payload[..], format!("q{i}").as_bytes());
    }
    let mut s = t.v4("late", true).await;
    s.subscribe("config/#", QoS::AtLeastOnce).await;
    let got = s.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("config/site", &b"v1"[..], true)
    );
    // Messages delivered before are not delivered again after another restart.
    dev.disconnect().await;
    t.restart().await;
    let mut dev = t.v4("keeper", false).await;
    dev.nothing_for(std::time::Duration::from_millis(500)).await;
}

#[tokio::test]
async fn acknowledged_qos1_messages_survive_kill_9() {
    // The TestServer only provides certificates and the directory; the
    // gateway under test is the built binary.
    let t = TestServer::prepare("");
    let (mut child, port, _) = spawn_binary(&t, "", &[]);
    let connect = |id: &'static str, clean: bool, port: u16| {
        let t = &t;
        async move { V4::connect_to(t, port, id, clean, None, |_| {}).await }
    };
    let mut dev = connect("survivor", false, port).await;
    dev.subscribe("orders/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    let mut p = connect("producer", true, port).await;
    const N: usize = 50;
    for i in 0..N {
        p.publish(
            &format!("orders/{i}"),
            QoS::AtLeastOnce,
            i == N - 1,
            format!("{i}").as_bytes(),
        )
        .await;
        p.puback().await;
    }
    // Every message above is acknowledged; now the machine loses power.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let (mut child, port, _) = spawn_binary(&t, "", &[]);
    let mut dev = connect("survivor", false, port).await;
    assert!(dev.session_present);
    let mut seen = Vec::new();
    while seen.len() < N {
        let got = dev.recv().await;
        let i: usize = std::str::from_utf8(&got.payload)
            .expect("utf8")
            .parse()
            .expect("number");
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "nothing lost, in order");
    let mut late = connect("late-reader", true, port).await;
    late.subscribe(&format!("orders/{}", N - 1), QoS::AtLeastOnce)
        .await;
    assert!(
        late.recv().await.retain,
        "the retained message survived too"
    );
    child.kill().expect("stop");
    child.wait().expect("reaped");
}
