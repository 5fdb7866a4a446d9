//! Test harness: a real gateway on 127.0.0.1:0 with certificates made in
//! the test, and real MQTT clients (rumqttc v4 and v5 over rustls, or raw
//! bytes over TLS for what no client library sends).
#![allow(dead_code, unreachable_pub)]

use edgegate::config::Config;
use edgegate::server::Server;
use edgegate::transport::pki::{self, Ca, KeyKind, Pem};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// Allows everything: tests of the broker itself run under it; the
/// authorization tests write their own policies.
pub const OPEN_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}"#;

/// `[limits]` lines that turn the per-connection rate limits off, for tests
/// of other things that publish faster than AWS IoT's 100 a second.
pub const NO_RATE_LIMITS: &str = "publishes_per_second = 0\npublish_bytes_per_second = 0\n";

/// The key and secret of [`TestServer::prepare_with_operator`]'s operator.
pub const OPERATOR: (&str, &str) = ("AKIDADMIN", "secret-of-admin");

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub extra_toml: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts with extra TOML appended to the test configuration (sections
    /// given there replace the defaults, so name whole sections).
    pub async fn start_with(extra_toml: &str) -> Self {
        let mut t = Self::prepare(extra_toml);
        t.boot().await;
        t
    }

    /// Makes the directory and certificates without starting a gateway.
    pub fn prepare(extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let ca = Ca::generate("test CA").expect("ca");
        pki::write_pair(&certs, "ca", &ca.pem).expect("write ca");
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .expect("server cert");
        pki::write_pair(&certs, "server", &server).expect("write server");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        std::fs::write(policies.join("open.json"), OPEN_POLICY).expect("write policy");
        Self {
            server: None,
            dir,
            ca,
            extra_toml: extra_toml.to_owned(),
        }
    }

    /// The configuration, written to `config.toml` and loaded from there,
    /// as the binary does (rules reload from that file).
    pub fn config(&self) -> Config {
        Config::load(&self.config_file()).expect("test config is valid")
    }

    /// Writes the test configuration to `config.toml` in the test directory, for the binary.
    pub fn config_file(&self) -> PathBuf {
        write_config(self.dir.path(), &self.config_text())
    }

    fn config_text(&self) -> String {
        config_text(&self.extra_toml)
    }

    pub async fn boot(&mut self) {
        let server = Server::bind(self.config()).await.expect("gateway starts");
        self.server = Some(server);
    }

    /// Clean shutdown and start again on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.boot().await;
    }

    /// Writes `policies/NAME.json`.
    pub fn write_policy(&self, name: &str, text: &str) {
        std::fs::write(
            self.dir
                .path()
                .join("policies")
                .join(format!("{name}.json")),
            text,
        )
        .expect("write policy");
    }

    /// [`Self::prepare`] with the admin listener and one operator of full
    /// access, whose key and secret are [`OPERATOR`].
    pub fn prepare_with_operator(extra_toml: &str) -> Self {
        let (key, secret) = OPERATOR;
        let t = Self::prepare(&format!(
            "{extra_toml}[admin]\nlisten = \"127.0.0.1:0\"\npolicies_dir = \"operator-policies\"\n\
             [[admin.users]]\naccess_key_id = \"{key}\"\nsecret_file = \"admin.secret\"\npolicies = [\"Everything\"]\n",
        ));
        t.write_operator_files(secret);
        t
    }

    /// The operator policy `Everything` (all of `iot:*`) in
    /// `operator-policies/`, and `secret` in `admin.secret`.
    pub fn write_operator_files(&self, secret: &str) {
        let dir = self.dir.path().join("operator-policies");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("Everything.json"),
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
        )
        .expect("policy");
        std::fs::write(self.dir.path().join("admin.secret"), format!("{secret}\n"))
            .expect("secret");
    }

    /// The control plane, signed by the operator of [`Self::prepare_with_operator`].
    pub fn operator(&self) -> Aws {
        Aws::new(self.admin(), OPERATOR.0, OPERATOR.1)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.server().mqtt[0]
    }

    pub fn admin(&self) -> SocketAddr {
        self.server().admin.expect("admin listener")
    }

    pub fn device(&self, cn: &str) -> Pem {
        self.ca
            .issue_device(cn, KeyKind::EcdsaP256)
            .expect("device cert")
    }

    pub fn tls_config(&self, pem: Option<&Pem>) -> Arc<rustls::ClientConfig> {
        client_tls(&self.ca.pem.cert, pem)
    }

    pub async fn v4(&self, id: &str, clean: bool) -> V4 {
        V4::connect(self, id, clean, None, |_| {}).await
    }

    pub async fn v5(&self, id: &str) -> V5 {
        V5::connect(self, id, |_| {}).await
    }

    /// A raw TLS connection with a valid device certificate.
    pub async fn raw(&self, cn: &str) -> Raw {
        let pem = self.device(cn);
        Raw::connect(self.addr(), self.tls_config(Some(&pem)))
            .await
            .expect("tls handshake")
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin(), "/metrics").await
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("admin answers")
        .expect("read");
    out
}

/// Value of a metric line (exact name with labels) in Prometheus text.
/// The value of one series in a Prometheus text page; a series that is not
/// there fails the test, so a misspelled name cannot pass a `== 0.0` check.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series `{series}` in:\n{text}"))
}

pub fn client_tls(ca_pem: &str, device: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match device {
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut pem.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("cert pem");
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.key.as_bytes())
                .expect("key pem")
                .expect("a key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

pub struct Raw {
    pub stream: TlsStream<TcpStream>,
}

impl Raw {
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        Self::connect_to(
            addr,
            config,
            ServerName::try_from("localhost").expect("name"),
        )
        .await
    }

    /// Connects asking for `name`: a DNS name is sent as SNI, an address is not.
    pub async fn connect_to(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut stream = connector.connect(name, tcp).await?;
        // With TLS 1.3 a refused client certificate shows only on the first read.
        stream.flush().await?;
        Ok(Self { stream })
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Reads until the server closes (or `WAIT` passes, which fails the test).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let res = tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(res.is_ok(), "server did not close the connection");
        out
    }

    /// Reads at least `n` bytes.
    pub async fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut out))
            .await
            .expect("bytes arrive")
            .expect("read");
        out
    }
}

/// A CONNECT packet as raw bytes.
pub fn connect_bytes(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

pub enum Ev4 {
    Publish(rumqttc::Publish),
    Other(rumqttc::Packet),
    Error(String),
}

pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Ev4>,
    pub session_present: bool,
    task: tokio::task::JoinHandle<()>,
}

impl V4 {
    pub async fn connect(
        t: &TestServer,
        id: &str,
        clean: bool,
        will: Option<rumqttc::LastWill>,
        tweak: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> Self {
        Self::connect_to(t, t.addr().port(), id, clean, will, tweak).await
    }

    pub async fn connect_to(
        t: &TestServer,
        port: u16,
        id: &str,
        clean: bool,
        will: Option<rumqttc::LastWill>,
        tweak: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> Self {
        Self::connect_with(t, port, id, &t.device(id), clean, will, tweak).await
    }

    /// Connects as client `id` with the given certificate.
    pub async fn connect_as(t: &TestServer, id: &str, pem: &Pem) -> Self {
        Self::connect_with(t, t.addr().port(), id, pem, true, None, |_| {}).await
    }

    /// Connects as client `id` with the given certificate to `port`.
    pub async fn connect_with(
        t: &TestServer,
        port: u16,
        id: &str,
        pem: &Pem,
        clean: bool,
        will: Option<rumqttc::LastWill>,
        tweak: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> Self {
        let mut opts = rumqttc::MqttOptions::new(id, "localhost", port);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(t.tls_config(Some(pem))),
        ));
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(w) = will {
            opts.set_last_will(w);
        }
        tweak(&mut opts);
        Self::start(opts).await
    }

    /// Connects as client `id` over WebSockets to `url` (`wss://...` on
    /// `port`), with `pem` as its certificate if given.
    pub async fn wss(t: &TestServer, url: &str, port: u16, id: &str, pem: Option<&Pem>) -> Self {
        let mut opts = rumqttc::MqttOptions::new(id, url, port);
        opts.set_transport(rumqttc::Transport::wss_with_config(
            rumqttc::TlsConfiguration::Rustls(t.tls_config(pem)),
        ));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        Self::start(opts).await
    }

    async fn start(opts: rumqttc::MqttOptions) -> Self {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send(Ev4::Publish(p));
                    }
                    Ok(rumqttc::Event::Incoming(p)) => {
                        let _ = tx.send(Ev4::Other(p));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Ev4::Error(e.to_string()));
                        return;
                    }
                }
            }
        });
        let session_present = loop {
            match tokio::time::timeout(WAIT, events.recv()).await {
                Ok(Some(Ev4::Other(rumqttc::Packet::ConnAck(a)))) => {
                    assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                    break a.session_present;
                }
                Ok(Some(Ev4::Error(e))) => panic!("connect failed: {e}"),
                Ok(Some(_)) => {}
                _ => panic!("no CONNACK"),
            }
        };
        Self {
            client,
            events,
            session_present,
            task,
        }
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue subscribe");
        loop {
            match self.next().await {
                Ev4::Other(rumqttc::Packet::SubAck(a)) => return a.return_codes,
                Ev4::Error(e) => panic!("subscribe failed: {e}"),
                _ => {}
            }
        }
    }

    pub async fn publish(&self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("queue publish");
    }

    pub async fn next(&mut self) -> Ev4 {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("event loop alive")
    }

    pub async fn recv(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Ev4::Publish(p) => return p,
                Ev4::Error(e) => panic!("connection failed: {e}"),
                Ev4::Other(_) => {}
            }
        }
    }

    /// Waits for the PUBACK of a QoS 1 publish.
    pub async fn puback(&mut self) {
        loop {
            match self.next().await {
                Ev4::Other(rumqttc::Packet::PubAck(_)) => return,
                Ev4::Error(e) => panic!("connection failed: {e}"),
                _ => {}
            }
        }
    }

    /// Asserts nothing is published to this client for `d`.
    /// Asserts nothing is published to this client for `d`, and that it
    /// stays connected all along: a dropped subscriber receives nothing
    /// either, and must not pass for one that was denied.
    pub async fn nothing_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ev4::Publish(p))) => panic!("unexpected publish on {}", p.topic),
                Ok(Some(Ev4::Error(e))) => panic!("the connection ended: {e}"),
                Ok(Some(Ev4::Other(_))) => {}
                Ok(None) => panic!("the event loop stopped"),
            }
        }
    }

    /// Drops the connection without DISCONNECT (as a crashed device would).
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(ev) = self.events.recv().await {
                if matches!(ev, Ev4::Error(_)) {
                    break;
                }
            }
        })
        .await;
        self.task.abort();
    }
}

pub enum Ev5 {
    Publish(rumqttc::v5::mqttbytes::v5::Publish),
    Other(rumqttc::v5::mqttbytes::v5::Packet),
    Error(String),
}

pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Ev5>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    task: tokio::task::JoinHandle<()>,
}

impl V5 {
    pub async fn connect(
        t: &TestServer,
        id: &str,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> Self {
        Self::connect_to(t, t.addr().port(), id, tweak).await
    }

    pub async fn connect_to(
        t: &TestServer,
        port: u16,
        id: &str,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> Self {
        Self::connect_with(t, port, id, &t.device(id), tweak).await
    }

    /// Connects as client `id` with the given certificate to `port`.
    pub async fn connect_with(
        t: &TestServer,
        port: u16,
        id: &str,
        pem: &Pem,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> Self {
        let pem = pem.clone();
        let mut opts = rumqttc::v5::MqttOptions::new(id, "localhost", port);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(t.tls_config(Some(&pem))),
        ));
        opts.set_keep_alive(Duration::from_secs(30));
        tweak(&mut opts);
        Self::start(opts).await
    }

    /// Connects as client `id` over WebSockets to `url` (`wss://...` on
    /// `port`), with `pem` as its certificate if given.
    pub async fn wss(t: &TestServer, url: &str, port: u16, id: &str, pem: Option<&Pem>) -> Self {
        let mut opts = rumqttc::v5::MqttOptions::new(id, url, port);
        opts.set_transport(rumqttc::Transport::wss_with_config(
            rumqttc::TlsConfiguration::Rustls(t.tls_config(pem)),
        ));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(Some(256 * 1024));
        Self::start(opts).await
    }

    pub async fn start(opts: rumqttc::v5::MqttOptions) -> Self {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use rumqttc::v5::mqttbytes::v5::Packet;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Ev5::Publish(p));
                    }
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        let _ = tx.send(Ev5::Other(p));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Ev5::Error(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(WAIT, events.recv()).await {
                Ok(Some(Ev5::Other(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a)))) => break a,
                Ok(Some(Ev5::Error(e))) => panic!("connect failed: {e}"),
                Ok(Some(_)) => {}
                _ => panic!("no CONNACK"),
            }
        };
        Self {
            client,
            events,
            connack,
            task,
        }
    }

    pub async fn next(&mut self) -> Ev5 {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("event loop alive")
    }

    pub async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        loop {
            match self.next().await {
                Ev5::Other(rumqttc::v5::mqttbytes::v5::Packet::SubAck(a)) => return a.return_codes,
                Ev5::Error(e) => panic!("subscribe failed: {e}"),
                _ => {}
            }
        }
    }

    pub async fn recv(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            match self.next().await {
                Ev5::Publish(p) => return p,
                Ev5::Error(e) => panic!("connection failed: {e}"),
                Ev5::Other(_) => {}
            }
        }
    }

    /// Publishes `payload` at QoS 1 and waits for its PUBACK's reason.
    pub async fn publish_qos1(
        &mut self,
        topic: &str,
        retain: bool,
        payload: &str,
    ) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
        self.client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                retain,
                payload.to_owned(),
            )
            .await
            .expect("queue publish");
        self.puback().await
    }

    /// The reason of the next PUBACK.
    pub async fn puback(&mut self) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
        loop {
            match self.next().await {
                Ev5::Other(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a)) => return a.reason,
                Ev5::Error(e) => panic!("connection failed: {e}"),
                _ => {}
            }
        }
    }

    /// Asserts nothing is published to this client for `d`, and that it
    /// stays connected all along.
    pub async fn nothing_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ev5::Publish(p))) => {
                    panic!(
                        "unexpected publish on {}",
                        String::from_utf8_lossy(&p.topic)
                    )
                }
                Ok(Some(Ev5::Error(e))) => panic!("the connection ended: {e}"),
                Ok(Some(Ev5::Other(_))) => {}
                Ok(None) => panic!("the event loop stopped"),
            }
        }
    }

    /// Waits until the connection ends and returns how (DISCONNECT or error text).
    pub async fn ended(&mut self) -> String {
        loop {
            match self.next().await {
                Ev5::Other(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(d)) => {
                    return format!("disconnect {:?}", d.reason_code);
                }
                Ev5::Error(e) => return e,
                _ => {}
            }
        }
    }

    pub fn kill(self) {
        self.task.abort();
    }
}

/// The test configuration: the directory's certificates, loopback
/// listeners and the open policy, with `extra` TOML (sections given there
/// replace these defaults, so name whole sections).
pub fn config_text(extra: &str) -> String {
    let mut text = format!(
        r#"
data_dir = "data"
[tls]
ca = "certs/ca.pem"
cert = "certs/server.pem"
key = "certs/server.key"
generate_if_missing = false
handshake_timeout_secs = 2
{extra}
"#
    );
    if !extra.contains("[mqtt]") {
        text.push_str("[mqtt]\nlisten = [\"127.0.0.1:0\"]\n");
    }
    if !extra.contains("[https]") {
        text.push_str("[https]\nlisten = \"127.0.0.1:0\"\n");
    }
    if !extra.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    if !extra.contains("[auth]") {
        text.push_str("[auth]\nprovisioning = { policies = [\"open\"] }\n");
    }
    text
}

/// Writes a temporary config file for running the binary.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs the gateway binary on `t`'s directory (its certificates and
/// policies) with `extra` configuration and environment; returns the child,
/// its MQTT port and its admin address.
pub fn spawn_binary(
    t: &TestServer,
    extra: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, String) {
    let config = write_config(t.dir.path(), &config_text(extra));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .envs(env.iter().copied());
    spawn_serving(command)
}

/// Starts a command that runs `edgegate serve`; returns once it listens, with
/// its MQTT port and admin address.
pub fn spawn_serving(command: std::process::Command) -> (std::process::Child, u16, String) {
    let (child, port, admin, _) = spawn_logging(command);
    (child, port, admin)
}

/// The lines a spawned gateway logged after it started listening.
#[derive(Clone, Default)]
pub struct Log(Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    /// Every line so far that contains `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        let lines = self.0.lock().expect("log lock");
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits (bounded by [`WAIT`]) for a line containing every one of `needles`.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = {
                let lines = self.0.lock().expect("log lock");
                lines
                    .iter()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .cloned()
            };
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {needles:?} in:\n{}",
                self.0.lock().expect("log lock").join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// [`spawn_serving`], keeping what the gateway logs after it listens.
pub fn spawn_logging(
    mut command: std::process::Command,
) -> (std::process::Child, u16, String, Log) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .env("RUST_LOG", "edgegate=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut port = None;
    let mut admin = None;
    while port.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("the gateway logs its listeners before anything else")
            .expect("read stderr");
        if let Some(rest) = line.split("MQTT over mutual TLS addr=").nth(1) {
            port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line
            .split("addr=")
            .nth(1)
            .filter(|_| line.contains("admin listener"))
        {
            admin = Some(rest.trim().to_owned());
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    let log = Log::default();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.0.lock().expect("log lock").push(line);
        }
    });
    (child, port.expect("port"), admin.expect("admin"), log)
}

/// One HTTP/1.1 request over TLS with `device`'s certificate (or none) to
/// `addr`; the status and body, or the TLS error.
pub async fn https(
    t: &TestServer,
    addr: SocketAddr,
    device: Option<&Pem>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let io = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(t.tls_config(device));
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(body).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let at = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP response")?
            + 4;
        let status = String::from_utf8_lossy(&out[..at])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        Ok((status, out[at..].to_vec()))
    };
    tokio::time::timeout(WAIT, io)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// The first line of the gateway's audit log that `pick` accepts; the
/// audit writer is a thread of its own, so this waits for it (bounded).
pub async fn audit_line(t: &TestServer, pick: impl Fn(&str) -> bool) -> String {
    let file = t.dir.path().join("data/audit.jsonl");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| pick(l)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such audit line in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SigV4-signing client of the admin listener, as boto3 signs (service `iot`).
pub struct Aws {
    pub addr: SocketAddr,
    pub key: String,
    pub secret: String,
}

impl Aws {
    pub fn new(addr: SocketAddr, key: &str, secret: &str) -> Self {
        Self {
            addr,
            key: key.into(),
            secret: secret.into(),
        }
    }

    /// One signed call; the status and the JSON body (`{}` when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        use edgegate::http::sigv4;
        let host = self.addr.to_string();
        let date = sigv4::amz_date_now();
        let mut all: Vec<(&str, &str)> = vec![("host", &host), ("x-amz-date", &date)];
        all.extend_from_slice(headers);
        let request = sigv4::Request {
            method,
            path,
            query,
            headers: &all,
            body: body.as_bytes(),
        };
        let auth = sigv4::sign(&request, &self.key, &self.secret, "us-east-1", "iot");
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut text = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &all {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str(&format!(
            "authorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        s.write_all(text.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .expect("answer in time")
            .expect("read");
        let (head, payload) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let json = if payload.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, query: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, query, &[], "").await
    }

    pub async fn post(
        &self,
        path: &str,
        query: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call("POST", path, query, &[], &body.to_string()).await
    }
}

/// A watcher subscribed to the event `filters`, connected before the
/// event `types` are enabled through the control plane.
pub async fn watch_events(t: &TestServer, aws: &Aws, types: &[&str], filters: &[&str]) -> V4 {
    let mut w = t.v4("watcher", true).await;
    for filter in filters {
        w.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
    }
    let enabled: serde_json::Map<String, serde_json::Value> = types
        .iter()
        .map(|t| ((*t).to_owned(), serde_json::json!({"Enabled": true})))
        .collect();
    let body = serde_json::json!({ "eventConfigurations": enabled });
    let (status, answer) = aws
        .call("PATCH", "/event-configurations", "", &[], &body.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    w
}

/// Runs `edgegate ARGS --config CONFIG`: success, stdout, stderr.
pub fn run_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgegate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The MQTT 3.1.1 CONNACK return code a client with `config` gets as `id`,
/// or `None` when the TLS handshake (or the connection) fails first.
pub async fn connack_code(
    t: &TestServer,
    config: Arc<rustls::ClientConfig>,
    id: &str,
) -> Option<u8> {
    let mut raw = Raw::connect(t.addr(), config).await.ok()?;
    raw.send(&connect_bytes(4, id, 30)).await;
    let mut got = [0u8; 4];
    tokio::time::timeout(WAIT, raw.stream.read_exact(&mut got))
        .await
        .expect("an answer or a close in time")
        .ok()?;
    Some(got[3])
}
