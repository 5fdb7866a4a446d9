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

#[tokio::test]
async fn sigterm_during_a_qos1_load_loses_nothing_acknowledged() {
    let t = TestServer::prepare("");
    let limits = format!("[limits]\n{NO_RATE_LIMITS}");
    let (mut child, port, _) = spawn_binary(&t, &limits, &[]);
    let connect = |id: &'static str, clean: bool, port: u16| {
        let t = &t;
        async move { V4::connect_to(t, port, id, clean, None, |_| {}).await }
    };
    let mut dev = connect("keeper", false, port).await;
    dev.subscribe("load/#", QoS::AtLeastOnce).await;
    dev.disconnect().await;
    // A producer that does not wait for each acknowledgement.
    let mut p = connect("loader", true, port).await;
    const N: usize = 5000;
    let client = p.client.clone();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            if client
                .publish("load/x", QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Acknowledgements come in order [MQTT-4.6.0-2]: the first `acked`
    // messages are the acknowledged ones.
    let mut acked = 0;
    let pid = child.id().to_string();
    loop {
        match p.next().await {
            Ev4::Other(rumqttc::Packet::PubAck(_)) => {
                acked += 1;
                if acked == 200 {
                    let term = std::process::Command::new("kill")
                        .args(["-TERM", &pid])
                        .status()
                        .expect("kill");
                    assert!(term.success());
                }
            }
            Ev4::Error(_) => break,
            _ => {}
        }
    }
    sender.abort();
    assert!(acked >= 200, "{acked}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "a graceful stop: {status}");

    let (mut child, port, _) = spawn_binary(&t, &limits, &[]);
    let mut dev = connect("keeper", false, port).await;
    assert!(dev.session_present);
    let mut seen = vec![false; N];
    let mut missing = acked;
    while missing > 0 {
        let got = dev.recv().await;
        let i: usize = std::str::from_utf8(&got.payload)
            .expect("utf8")
            .parse()
            .expect("number");
        if i < acked && !seen[i] {
            seen[i] = true;
            missing -= 1;
        }
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
}
