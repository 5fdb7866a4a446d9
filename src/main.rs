//! The `edgegate` command line: serve the gateway, make certificates.

use anyhow::Context;
use clap::{Parser, Subcommand};
use control_client::segment;
use edgegate::config::Config;
use edgegate::registry::ClientIdentity;
use edgegate::server::Server;
use edgegate::transport::pki::{self, Ca, KeyKind};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod control_client;

/// jemalloc, not glibc's malloc: after 10,000 connections closed, glibc kept
/// every page they had used (RSS 9x what it was before they opened, 30 s
/// later, even with one arena and a low trim threshold: the live
/// allocations left among the freed ones pin the heap), and mimalloc 8.5x;
/// jemalloc with its background thread purging freed pages (see `serve`)
/// was back within 1.25x, at the same throughput. Measured with
/// `benches/compare.sh`'s `release` scenario; PERFORMANCE.md has the figures.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a configuration that cannot be used (sysexits EX_USAGE).
const EX_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "edgegate",
    version,
    about = "An MQTT gateway that devices talk to as they talk to AWS IoT Core"
)]
struct Cli {
    /// How log lines are written: text (values escaped) or one JSON object a line.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: edgegate::oplog::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file; without it `config.toml` in the working
        /// directory is used if present, else the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Manage things.
    Thing {
        #[command(subcommand)]
        command: ThingCommand,
    },
    /// Check policy documents and try requests against them.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage topic rules made through the control plane.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Drive an MQTT broker on 127.0.0.1 with load; prints one JSON line.
    Bench(BenchArgs),
}

/// `edgegate bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// `conn`, `fanin`, `fanout`, `latency`, `shadow` or `flood`.
    scenario: String,
    /// Broker address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8883")]
    broker: std::net::SocketAddr,
    /// CA that signs the broker's certificate (with --cert and --key: mutual TLS).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// MQTT 5 instead of 3.1.1.
    #[arg(long)]
    v5: bool,
    /// `mqtt` (over TLS, or TCP without certificates) or `ws` (MQTT over
    /// WebSockets: `wss` with certificates).
    #[arg(long, default_value = "mqtt")]
    transport: String,
    /// conn: connections to make.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// conn: connections in progress at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// conn: seconds to hold every connection open (to read the broker's RSS).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// fanin: publishers; shadow: devices; flood: flooding clients.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// fanin, fanout: messages per publisher; shadow: updates per device.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// QoS 0, 1 or 2.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// fanout: subscribers.
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// latency, flood: messages per second (of the well-behaved client).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// latency, flood: seconds of publishing (each phase of flood).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Bound on the whole run, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// Where the configuration (and so the data directory) is.
#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file; default as for `serve`.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// A thing or a policy, by name, and a certificate.
#[derive(clap::Args)]
struct NamedCert {
    /// The thing's or the policy's name.
    name: String,
    /// Certificate id or PEM file.
    #[arg(long)]
    cert: String,
    #[command(flatten)]
    config: ConfigArg,
}

/// A certificate by id or by its PEM file.
#[derive(clap::Args)]
struct CertRef {
    /// Certificate id (64 hex characters) or a PEM file.
    cert: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum ThingCommand {
    /// Create a thing, or update its type and attributes.
    Create {
        /// Thing name.
        name: String,
        /// Thing type.
        #[arg(long = "type")]
        thing_type: Option<String>,
        /// Attributes, KEY=VALUE (repeat).
        #[arg(long = "attr", value_parser = key_value)]
        attributes: Vec<(String, String)>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Attach a certificate to a thing.
    Attach {
        #[command(flatten)]
        target: NamedCert,
        /// EXCLUSIVE_THING: the certificate's only thing, whatever the client id.
        #[arg(long)]
        exclusive: bool,
    },
    /// Detach a certificate from a thing.
    Detach(NamedCert),
    /// Create a thing type.
    CreateType {
        /// Thing type name.
        name: String,
        /// Its description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete a thing (no certificate may be attached).
    Delete {
        /// Thing name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List things.
    List(ConfigArg),
}

#[derive(Subcommand)]
enum RuleCommand {
    /// List every rule: name, where it comes from, state, topic filter.
    List(ConfigArg),
    /// Print a rule as AWS's TopicRulePayload.
    Show(RuleName),
    /// Create a rule from a TopicRulePayload JSON file (as `aws iot create-topic-rule`).
    Create(RulePayload),
    /// Replace a rule made through the control plane.
    Replace(RulePayload),
    /// Enable a rule.
    Enable(RuleName),
    /// Disable a rule.
    Disable(RuleName),
    /// Delete a rule made through the control plane.
    Delete(RuleName),
}

/// A rule by name.
#[derive(clap::Args)]
struct RuleName {
    /// Rule name.
    name: String,
    #[command(flatten)]
    config: ConfigArg,
}

/// A rule and its payload.
#[derive(clap::Args)]
struct RulePayload {
    /// Rule name.
    name: String,
    /// TopicRulePayload JSON file: sql, actions, errorAction, ruleDisabled, ...
    #[arg(long)]
    payload: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate every policy document in DIR (default: the configured
    /// policies directory); every error with file, statement and reason.
    Check {
        /// Directory of NAME.json policy documents.
        dir: Option<PathBuf>,
        /// Configuration file naming the policies directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Evaluate one request as AWS TestAuthorization does, and say which
    /// statement decided.
    Test(Box<TestArgs>),
    /// Attach a policy to a certificate.
    Attach(NamedCert),
    /// Detach a policy from a certificate.
    Detach(NamedCert),
    /// List policies with their default version and targets.
    List(ConfigArg),
}

/// The request `policy test` evaluates.
#[derive(clap::Args)]
struct TestArgs {
    /// The client certificate (PEM) whose variables apply.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The MQTT client id.
    #[arg(long = "client-id")]
    client_id: Option<String>,
    /// The thing associated with the connection.
    #[arg(long)]
    thing: Option<String>,
    /// That thing's type (iot:Connection.Thing.ThingTypeName).
    #[arg(long = "thing-type", requires = "thing")]
    thing_type: Option<String>,
    /// One of that thing's attributes, KEY=VALUE (repeat).
    #[arg(long = "thing-attr", requires = "thing", value_parser = key_value)]
    thing_attrs: Vec<(String, String)>,
    /// iot:ConnectAttributes: PersistentConnect, LastWill (comma-separated).
    #[arg(long = "connect-attributes", value_delimiter = ',')]
    connect_attributes: Vec<ConnectAttribute>,
    /// The will's topic (iot:LastWillTopic); implies LastWill.
    #[arg(long = "last-will-topic")]
    last_will_topic: Option<String>,
    /// The domain name the client connected to (iot:DomainName).
    #[arg(long = "domain-name")]
    domain_name: Option<String>,
    /// The client's address, for aws:SourceIp.
    #[arg(long = "source-ip")]
    source_ip: Option<std::net::IpAddr>,
    /// How the request comes: over MQTT, or over HTTPS, which has no client
    /// id (so neither iot:ClientId nor the thing variables resolve).
    #[arg(long, value_enum, default_value_t = Protocol::Mqtt)]
    protocol: Protocol,
    /// The action, e.g. iot:Publish.
    #[arg(long)]
    action: String,
    /// The resource, e.g. topic/a/b, client/dev-1, a full ARN, or `*` for
    /// actions on no resource (iot:ListRetainedMessages).
    #[arg(long)]
    resource: String,
    /// Policies to evaluate (repeat); default: the certificate's attached
    /// policies in the registry, or with no certificate (or with --dir)
    /// every policy in the directory.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Directory of NAME.json policy documents.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Configuration file naming the policies directory and the ARN region and account.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// A value of iot:ConnectAttributes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConnectAttribute {
    /// A persistent session.
    #[value(name = "PersistentConnect")]
    PersistentConnect,
    /// A will (give its topic with --last-will-topic).
    #[value(name = "LastWill")]
    LastWill,
}

/// The protocol a tested request comes over.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    /// MQTT (or MQTT over WebSockets).
    Mqtt,
    /// HTTPS.
    Https,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a new CA (ca.pem, ca.key).
    Ca {
        /// Directory to write to.
        #[arg(long, default_value = "data/certs")]
        out: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Register a certificate (ACTIVE unless --inactive), with policies and a thing.
    Register {
        /// The certificate, PEM.
        #[arg(long)]
        cert: PathBuf,
        /// Register it INACTIVE.
        #[arg(long)]
        inactive: bool,
        /// Policies to attach (repeat).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// A thing to attach it to (created if missing).
        #[arg(long)]
        thing: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Let a certificate connect again.
    Activate(CertRef),
    /// Stop a certificate from connecting; its live connections close.
    Deactivate(CertRef),
    /// Revoke a certificate for good; its live connections close.
    Revoke(CertRef),
    /// Delete a certificate that is not ACTIVE and has no thing.
    Delete {
        #[command(flatten)]
        cert: CertRef,
        /// Detach its policies first.
        #[arg(long)]
        force: bool,
    },
    /// List registered certificates: id, status, common name, things, policies, expiry.
    List(ConfigArg),
    /// Issue a device certificate (NAME.pem, NAME.key) signed by the CA.
    Issue {
        /// Common name, which is also the thing name.
        #[arg(long)]
        cn: String,
        /// Directory to write to.
        #[arg(long, default_value = "data/certs")]
        out: PathBuf,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "data/certs")]
        ca_dir: PathBuf,
        /// RSA 2048 instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edgegate::oplog::init(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => return serve(config),
        Command::Cert { command } => cert(command),
        Command::Policy { command } => return policy(command),
        Command::Thing { command } => thing(command),
        Command::Rule { command } => rule(command),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, edgegate::config::ConfigError> {
    match path {
        Some(p) => Config::load(&p),
        None if Path::new("config.toml").exists() => Config::load(Path::new("config.toml")),
        None => Config::embedded(Path::new(".")),
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // A broken rule is a configuration error like any other.
    if let Err(problems) = edgegate::rules::RuleSet::compile(&config) {
        let e = edgegate::config::ConfigError {
            file: config.source.clone(),
            problems,
        };
        eprintln!("error: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    // Without its background thread jemalloc purges freed pages only when
    // the thread that freed them allocates again: a gateway gone quiet after
    // a burst would keep the burst's memory.
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: freed memory is returned to the system only under load: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one, as far as
/// `limits.max_connections` needs: every connection is a file, and a soft
/// limit of 1024 (common) would refuse clients long before the configured
/// bound. Warns, naming the fix, only when `max_connections` was set above
/// what even the hard limit allows; the default bound is a ceiling, not a
/// request, and says nothing.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // Listeners, the store, watchers and logs.
    const SPARE: u64 = 64;
    let mut limit = getrlimit(Resource::Nofile);
    let want = (max_connections as u64).saturating_add(SPARE);
    let current = limit.current.unwrap_or(u64::MAX);
    if current < want {
        limit.current = Some(limit.maximum.map_or(want, |hard| hard.min(want)));
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
    }
    let open_files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let configured = max_connections != edgegate::config::Limits::default().max_connections;
    if open_files < want && configured {
        tracing::warn!(
            open_files,
            max_connections,
            "the open files limit allows fewer connections than limits.max_connections; \
             raise the hard limit: `ulimit -n {want}` in the shell that starts the gateway, \
             `LimitNOFILE={want}` in its systemd unit, or `--ulimit nofile={want}:{want}` for docker run"
        );
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    raise_open_files_limit(config.limits.max_connections);
    let server = Server::bind(config.clone())
        .await
        .context("starting the gateway")?;
    for addr in &server.mqtt {
        tracing::info!(%addr, "MQTT over mutual TLS");
    }
    if let Some(addr) = server.plaintext {
        tracing::warn!(%addr, "plaintext MQTT listener: clients there have no certificate identity");
    }
    if let Some(addr) = server.https {
        tracing::info!(%addr, "device HTTPS listener (mutual TLS: publish, shadows)");
    }
    for (addr, l) in server.listeners.iter().zip(&config.listeners) {
        let client_cert = match l.client_cert {
            edgegate::config::ClientCert::Required => "required",
            edgegate::config::ClientCert::Optional => "optional",
        };
        tracing::info!(%addr, client_cert, "TLS listener (MQTT, MQTT over WebSockets, HTTPS)");
    }
    if let Some(addr) = server.admin {
        tracing::info!(%addr, "admin listener (/metrics, /healthz, control plane)");
    }
    if let Some(port) = server.mqtt.first().map(|a| a.port()) {
        let made_now = server.first_run.is_some();
        print_quickstart(&config, port, server.https.map(|a| a.port()), made_now);
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Prints client command lines that work against this gateway as configured:
/// the operator watches every thing's topics, the device publishes on its own.
fn print_quickstart(config: &Config, port: u16, https: Option<u16>, made_now: bool) {
    let certs = config.data_dir.join("certs");
    let files = |name: &str| {
        (
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}.key")),
        )
    };
    let (device_cert, device_key) = files(pki::FIRST_DEVICE);
    let (op_cert, op_key) = files(pki::FIRST_OPERATOR);
    if ![&device_cert, &device_key, &op_cert, &op_key]
        .iter()
        .all(|p| p.exists())
    {
        return;
    }
    let ca = config.tls.ca.display();
    let (dev, op) = (pki::FIRST_DEVICE, pki::FIRST_OPERATOR);
    let which = if made_now {
        format!(
            "the certificates this first run made in {}",
            certs.display()
        )
    } else {
        format!("the certificates in {}", certs.display())
    };
    println!(
        "\nedgegate is listening. Try it with {which}:\n\n  \
         mosquitto_sub -h localhost -p {port} --cafile {ca} --cert {} --key {} -i {op} -t 'things/#' -v\n  \
         mosquitto_pub -h localhost -p {port} --cafile {ca} --cert {} --key {} -i {dev} -t 'things/{dev}/hello' -m 'hello from {dev}'\n",
        op_cert.display(),
        op_key.display(),
        device_cert.display(),
        device_key.display(),
    );
    if let Some(https) = https {
        let curl = format!(
            "curl --cacert {ca} --cert {} --key {}",
            device_cert.display(),
            device_key.display()
        );
        println!(
            "  {curl} -d '{{\"state\":{{\"reported\":{{\"temp\":21}}}}}}' https://localhost:{https}/things/{dev}/shadow\n  \
             {curl} https://localhost:{https}/things/{dev}/shadow\n"
        );
    }
    println!(
        "A device may use only its own topics and shadow (policies/device.json); the operator may watch\n\
         every thing's topics (policies/operator.json). More device certificates: edgegate cert issue --cn NAME\n"
    );
}

/// Runs the load tool and prints its report as one JSON line.
fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use edgegate::codec::{Protocol, QoS};
    let tls = match (&a.ca, &a.cert, &a.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(std::sync::Arc::new(
            edgegate::transport::tls::client_config(ca, cert, key, None)?,
        )),
        _ => anyhow::bail!("--ca, --cert and --key go together (mutual TLS) or not at all"),
    };
    let options = edgegate::loadgen::Options {
        scenario: a.scenario,
        target: edgegate::loadgen::client::Target {
            addr: a.broker,
            tls,
            protocol: if a.v5 { Protocol::V5 } else { Protocol::V4 },
            websocket: match a.transport.as_str() {
                "mqtt" => false,
                "ws" | "wss" => true,
                other => anyhow::bail!("--transport `{other}` is not mqtt, ws or wss"),
            },
        },
        connections: a.connections,
        concurrency: a.concurrency,
        hold_secs: a.hold_secs,
        publishers: a.publishers,
        messages: a.messages,
        size: a.size,
        qos: QoS::from_u8(a.qos).context("--qos is 0, 1 or 2")?,
        subscribers: a.subscribers,
        rate: a.rate,
        duration_secs: a.duration_secs,
        window: a.window.max(1),
        timeout: std::time::Duration::from_secs(a.timeout_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(edgegate::loadgen::run(&options))
        .map_err(anyhow::Error::msg)?;
    println!("{report}");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn policy(command: PolicyCommand) -> ExitCode {
    let config_for = |path: Option<PathBuf>| match load_config(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EX_CONFIG))
        }
    };
    match command {
        PolicyCommand::Check { dir, config } => {
            let dir = match dir {
                Some(d) => d,
                None => match config_for(config) {
                    Ok(c) => c.policies.dir,
                    Err(code) => return code,
                },
            };
            let loaded = edgegate::policy::load_dir(&dir);
            for e in &loaded.errors {
                println!("{e}");
            }
            if loaded.errors.is_empty() {
                println!(
                    "{}: {} policies, all valid",
                    dir.display(),
                    loaded.documents.len()
                );
                ExitCode::SUCCESS
            } else {
                println!("{} problem(s)", loaded.errors.len());
                ExitCode::FAILURE
            }
        }
        PolicyCommand::Test(request) => {
            let config = match config_for(request.config.clone()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match test_authorization(&config, *request) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        PolicyCommand::Attach(t) => outcome(attach_policy(t, true)),
        PolicyCommand::Detach(t) => outcome(attach_policy(t, false)),
        PolicyCommand::List(config) => outcome(list_policies(config)),
    }
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Evaluates one request as the gateway would; ALLOWED exits 0, a deny 1.
fn test_authorization(config: &Config, r: TestArgs) -> anyhow::Result<bool> {
    use edgegate::policy::compile::{ArnHead, compile, missing};
    use edgegate::policy::document::Document;
    use edgegate::policy::eval::{Action, ResourceType};
    let action = Action::parse(&r.action).with_context(|| {
        format!(
            "unknown action `{}` (iot:Connect, iot:Publish, ...)",
            r.action
        )
    })?;
    // A full ARN or just its path; `*` for an action on no resource, which
    // the gateway checks as the topic `*`.
    let path = if r.resource.starts_with("arn:") {
        r.resource.splitn(6, ':').nth(5).unwrap_or_default()
    } else {
        r.resource.as_str()
    };
    let (ty, name) = if path == "*" {
        (ResourceType::Topic, "*")
    } else {
        [
            ResourceType::TopicFilter,
            ResourceType::Topic,
            ResourceType::Client,
            ResourceType::Thing,
        ]
        .into_iter()
        .find_map(|t| path.strip_prefix(t.prefix()).map(|n| (t, n)))
        .with_context(|| {
            format!(
                "resource `{}` is not client/, topic/, topicfilter/, thing/ or *",
                r.resource
            )
        })?
    };
    let identity = r.cert.as_deref().map(read_identity).transpose()?;
    let chosen: Vec<(std::sync::Arc<str>, std::sync::Arc<Document>)> = match &identity {
        Some(id) if r.policies.is_empty() && r.dir.is_none() => attached_policies(config, id)?,
        _ => {
            let dir = r.dir.clone().unwrap_or_else(|| config.policies.dir.clone());
            let loaded = edgegate::policy::load_dir(&dir);
            for e in &loaded.errors {
                eprintln!("skipped: {e}");
            }
            if r.policies.is_empty() {
                loaded
                    .documents
                    .iter()
                    .map(|(n, d)| (n.clone(), d.clone()))
                    .collect()
            } else {
                r.policies
                    .iter()
                    .map(|p| {
                        loaded
                            .documents
                            .get_key_value(p.as_str())
                            .map(|(n, d)| (n.clone(), d.clone()))
                            .with_context(|| format!("no valid policy `{p}` in {}", dir.display()))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        }
    };
    let https = r.protocol == Protocol::Https;
    // HTTPS has no client id, and so no thing of the connection (spec §1.8).
    let thing = r.thing.as_deref().filter(|_| !https).map(|name| {
        let mut t = edgegate::registry::Thing::named(name);
        t.thing_type = r.thing_type.clone();
        t.attributes = r.thing_attrs.iter().cloned().collect();
        t
    });
    let principal = edgegate::registry::Principal {
        certificate_id: identity.as_ref().map(|i| i.certificate_id.clone()),
        policies: Vec::new(),
        thing,
    };
    let will_topic = r.last_will_topic.as_deref();
    if r.connect_attributes.contains(&ConnectAttribute::LastWill) && will_topic.is_none() {
        anyhow::bail!("LastWill needs --last-will-topic");
    }
    let head = ArnHead::new(&config.aws.region, &config.aws.account_id);
    // The context the gateway would build for this connection, by its own builder.
    let ctx = edgegate::session::authz::context(
        identity.as_ref(),
        &principal,
        edgegate::session::authz::ConnectFacts {
            client_id: r.client_id.as_deref().filter(|_| !https),
            peer: r.source_ip,
            persistent: r
                .connect_attributes
                .contains(&ConnectAttribute::PersistentConnect),
            will_topic,
            domain_name: r.domain_name.as_deref(),
            vars: &[],
        },
        &head,
    );
    let set = compile(chosen.iter().map(|(n, d)| (n, &**d)), &head, &ctx);
    let (decision, statement) = set.explain(action, ty, name);
    println!("{}", decision.name());
    match statement {
        Some(st) => println!(
            "  decided by policy `{}`, statement {}{}",
            st.policy,
            st.index,
            st.sid
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        None => println!(
            "  no statement allows {} on {}{}",
            r.action,
            ty.prefix(),
            name
        ),
    }
    let names: Vec<&str> = chosen.iter().map(|(n, _)| &**n).collect();
    println!(
        "  evaluated: {}",
        if names.is_empty() {
            "(no policies)".into()
        } else {
            names.join(", ")
        }
    );
    let missing = missing(chosen.iter().map(|(_, d)| &**d), &ctx);
    if !missing.is_empty() {
        println!("  missing context values: {}", missing.join(", "));
    }
    Ok(decision.is_allowed())
}

/// The policies attached to a certificate in the registry, with their
/// default versions, through the control plane.
fn attached_policies(
    config: &Config,
    id: &ClientIdentity,
) -> anyhow::Result<
    Vec<(
        std::sync::Arc<str>,
        std::sync::Arc<edgegate::policy::document::Document>,
    )>,
> {
    with_control(config, |client| {
        let arn = client.cert_arn(&id.certificate_id);
        let attached = client.call(
            "POST",
            &format!("/attached-policies/{}", segment(&arn)),
            "",
            &[],
            None,
        )?;
        let mut out = Vec::new();
        for p in attached["policies"].as_array().into_iter().flatten() {
            let name = p["policyName"].as_str().unwrap_or_default();
            let got = client.policy(name)?;
            let text = got["policyDocument"].as_str().unwrap_or_default();
            let document = edgegate::policy::document::parse(text).map_err(|errors| {
                anyhow::anyhow!(
                    "policy `{name}` does not parse: {}",
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })?;
            out.push((std::sync::Arc::from(name), std::sync::Arc::new(document)));
        }
        Ok(out)
    })
}

fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Ca { out, force } => {
            let cert = out.join("ca.pem");
            if cert.exists() && !force {
                anyhow::bail!("{} exists; pass --force to replace it", cert.display());
            }
            let ca = Ca::generate("edgegate local CA")?;
            pki::write_pair(&out, "ca", &ca.pem)?;
            println!(
                "wrote {} and {}",
                cert.display(),
                out.join("ca.key").display()
            );
        }
        CertCommand::Issue {
            cn,
            out,
            ca_dir,
            rsa,
        } => {
            if cn.is_empty() || cn.contains(['/', '\\']) || cn.starts_with('.') {
                anyhow::bail!("--cn must be a plain name (it names the files)");
            }
            let ca = Ca::load(&ca_dir)
                .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
            let kind = if rsa {
                KeyKind::Rsa2048
            } else {
                KeyKind::EcdsaP256
            };
            let pem = ca.issue_device(&cn, kind)?;
            let (cert, key) = pki::write_pair(&out, &cn, &pem)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertCommand::Register {
            cert,
            inactive,
            policies,
            thing,
            config,
        } => {
            let identity = read_identity(&cert)?;
            let status = if inactive { "INACTIVE" } else { "ACTIVE" };
            control(config, |c| {
                let id = &identity.certificate_id;
                let arn = c.cert_arn(id);
                let body = json!({ "certificatePem": identity.pem, "status": status });
                match c.call("POST", "/certificate/register-no-ca", "", &[], Some(body)) {
                    Ok(_) => {}
                    Err(e) if e.to_string().starts_with("ResourceAlreadyExistsException") => {
                        c.call(
                            "PUT",
                            &format!("/certificates/{id}"),
                            &format!("newStatus={status}"),
                            &[],
                            None,
                        )?;
                    }
                    Err(e) => return Err(e),
                }
                for p in &policies {
                    c.call(
                        "PUT",
                        &format!("/target-policies/{}", segment(p)),
                        "",
                        &[],
                        Some(json!({ "target": arn })),
                    )?;
                }
                if let Some(t) = &thing {
                    match c.call("POST", &format!("/things/{}", segment(t)), "", &[], None) {
                        Err(e) if !e.to_string().starts_with("ResourceAlreadyExistsException") => {
                            return Err(e);
                        }
                        _ => {}
                    }
                    c.call(
                        "PUT",
                        &format!("/things/{}/principals", segment(t)),
                        "",
                        &[("x-amzn-principal", &arn)],
                        None,
                    )?;
                }
                println!("registered certificate {id} {status}");
                Ok(())
            })?;
        }
        CertCommand::Activate(r) => set_status(r, "ACTIVE", "activated")?,
        CertCommand::Deactivate(r) => set_status(r, "INACTIVE", "deactivated")?,
        CertCommand::Revoke(r) => set_status(r, "REVOKED", "revoked")?,
        CertCommand::Delete { cert, force } => {
            let id = cert_id(&cert.cert)?;
            control(cert.config, |c| {
                c.call(
                    "DELETE",
                    &format!("/certificates/{id}"),
                    &format!("forceDelete={force}"),
                    &[],
                    None,
                )?;
                println!("deleted certificate {id}");
                Ok(())
            })?;
        }
        CertCommand::List(config) => control(config, |c| {
            for listed in c.all("/certificates", "certificates", ("marker", "nextMarker"))? {
                let id = listed["certificateId"].as_str().unwrap_or_default();
                let described = c.call("GET", &format!("/certificates/{id}"), "", &[], None)?;
                let d = &described["certificateDescription"];
                let cn = d["certificatePem"]
                    .as_str()
                    .and_then(ClientIdentity::from_pem)
                    .and_then(|i| i.subject.common_name)
                    .unwrap_or_default();
                let expires = d["validity"]["notAfter"]
                    .as_i64()
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    .map(|t| t.date().to_string())
                    .unwrap_or_default();
                println!(
                    "{id}\t{}\tcn={cn}\tthings={}\tpolicies={}\texpires={expires}",
                    listed["status"].as_str().unwrap_or_default(),
                    strings(&listed["things"]).join(","),
                    strings(&listed["policies"]).join(","),
                );
            }
            Ok(())
        })?,
    }
    Ok(())
}

fn thing(command: ThingCommand) -> anyhow::Result<()> {
    match command {
        ThingCommand::Create {
            name,
            thing_type,
            attributes,
            config,
        } => {
            let attributes: serde_json::Map<String, Value> = attributes
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect();
            control(config, |c| {
                let body = json!({ "thingTypeName": thing_type, "attributePayload": { "attributes": attributes } });
                let path = format!("/things/{}", segment(&name));
                match c.call("POST", &path, "", &[], Some(body)) {
                    Ok(made) => println!(
                        "created thing {name} ({})",
                        made["thingId"].as_str().unwrap_or_default()
                    ),
                    // It exists: this command updates its type and attributes.
                    Err(e) if e.to_string().contains("ResourceAlreadyExistsException") => {
                        let update = json!({
                            "thingTypeName": thing_type,
                            "attributePayload": { "attributes": attributes, "merge": true },
                        });
                        c.call("PATCH", &path, "", &[], Some(update))?;
                        println!("updated thing {name}");
                    }
                    Err(e) => return Err(e),
                }
                Ok(())
            })
        }
        ThingCommand::Attach { target, exclusive } => attach_thing(target, Some(exclusive)),
        ThingCommand::Detach(target) => attach_thing(target, None),
        ThingCommand::CreateType {
            name,
            description,
            config,
        } => control(config, |c| {
            let body = json!({ "thingTypeProperties": { "thingTypeDescription": description } });
            c.call(
                "POST",
                &format!("/thing-types/{}", segment(&name)),
                "",
                &[],
                Some(body),
            )?;
            println!("created thing type {name}");
            Ok(())
        }),
        ThingCommand::Delete { name, config } => control(config, |c| {
            c.call(
                "DELETE",
                &format!("/things/{}", segment(&name)),
                "",
                &[],
                None,
            )?;
            println!("deleted thing {name}");
            Ok(())
        }),
        ThingCommand::List(config) => control(config, |c| {
            for t in c.all("/things", "things", ("nextToken", "nextToken"))? {
                let attrs: Vec<String> = t["attributes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{}\ttype={}\t{}",
                    t["thingName"].as_str().unwrap_or_default(),
                    t["thingTypeName"].as_str().unwrap_or_default(),
                    attrs.join(",")
                );
            }
            Ok(())
        }),
    }
}

fn rule(command: RuleCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/rules/{}", segment(name));
    let simple = |r: RuleName, method: &str, suffix: &str, done: &str| {
        let target = format!("{}{suffix}", path(&r.name));
        control(r.config, |c| {
            c.call(method, &target, "", &[], None)?;
            println!("{done} rule {}", r.name);
            Ok(())
        })
    };
    match command {
        RuleCommand::List(config) => control(config, |c| {
            for r in c.all("/rules", "rules", ("nextToken", "nextToken"))? {
                let state = if r["ruleDisabled"].as_bool() == Some(true) {
                    "disabled"
                } else {
                    "enabled"
                };
                println!(
                    "{}\t{}\t{state}\t{}",
                    r["ruleName"].as_str().unwrap_or_default(),
                    r["source"].as_str().unwrap_or_default(),
                    r["topicPattern"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }),
        RuleCommand::Show(r) => control(r.config, |c| {
            let got = c.call("GET", &path(&r.name), "", &[], None)?;
            println!("{}", serde_json::to_string_pretty(&got["rule"])?);
            Ok(())
        }),
        RuleCommand::Create(r) => put_rule(r, "POST", "created"),
        RuleCommand::Replace(r) => put_rule(r, "PATCH", "replaced"),
        RuleCommand::Enable(r) => simple(r, "POST", "/enable", "enabled"),
        RuleCommand::Disable(r) => simple(r, "POST", "/disable", "disabled"),
        RuleCommand::Delete(r) => simple(r, "DELETE", "", "deleted"),
    }
}

/// CreateTopicRule or ReplaceTopicRule with the payload in a file.
fn put_rule(r: RulePayload, method: &str, done: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&r.payload)
        .with_context(|| format!("reading {}", r.payload.display()))?;
    let payload: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", r.payload.display()))?;
    control(r.config, |c| {
        c.call(
            method,
            &format!("/rules/{}", segment(&r.name)),
            "",
            &[],
            Some(payload),
        )?;
        println!("{done} rule {}", r.name);
        Ok(())
    })
}

/// Attaches or detaches a policy.
fn attach_policy(t: NamedCert, attach: bool) -> anyhow::Result<()> {
    let id = cert_id(&t.cert)?;
    control(t.config, |c| {
        let method = if attach { "PUT" } else { "POST" };
        let body = json!({ "target": c.cert_arn(&id) });
        let path = format!("/target-policies/{}", segment(&t.name));
        c.call(method, &path, "", &[], Some(body))?;
        let (done, to) = if attach {
            ("attached", "to")
        } else {
            ("detached", "from")
        };
        println!("{done} policy {} {to} certificate {id}", t.name);
        Ok(())
    })
}

/// Attaches a certificate to a thing (exclusively or not), or with `None`
/// detaches it.
fn attach_thing(t: NamedCert, exclusive: Option<bool>) -> anyhow::Result<()> {
    let id = cert_id(&t.cert)?;
    control(t.config, |c| {
        let path = format!("/things/{}/principals", segment(&t.name));
        let principal = c.cert_arn(&id);
        let headers = [("x-amzn-principal", principal.as_str())];
        match exclusive {
            Some(exclusive) => {
                let kind = if exclusive {
                    "EXCLUSIVE_THING"
                } else {
                    "NON_EXCLUSIVE_THING"
                };
                let query = format!("thingPrincipalType={kind}");
                c.call("PUT", &path, &query, &headers, None)?;
                println!("attached certificate {id} to thing {}", t.name);
            }
            None => {
                c.call("DELETE", &path, "", &headers, None)?;
                println!("detached certificate {id} from thing {}", t.name);
            }
        }
        Ok(())
    })
}

fn list_policies(config: ConfigArg) -> anyhow::Result<()> {
    control(config, |c| {
        for p in c.all("/policies", "policies", ("marker", "nextMarker"))? {
            let name = p["policyName"].as_str().unwrap_or_default();
            let got = c.policy(name)?;
            let targets = c.call(
                "POST",
                &format!("/policy-targets/{}", segment(name)),
                "",
                &[],
                None,
            )?;
            println!(
                "{name}\tversion={}\tcertificates={}",
                got["defaultVersionId"].as_str().unwrap_or_default(),
                strings(&targets["targets"]).len()
            );
        }
        Ok(())
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set_status(r: CertRef, status: &str, done: &str) -> anyhow::Result<()> {
    let id = cert_id(&r.cert)?;
    control(r.config, |c| {
        c.call(
            "PUT",
            &format!("/certificates/{id}"),
            &format!("newStatus={status}"),
            &[],
            None,
        )?;
        println!("{done} certificate {id}");
        Ok(())
    })
}

fn read_identity(path: &Path) -> anyhow::Result<ClientIdentity> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .context("no certificate in the file")??;
    ClientIdentity::from_der(&der).context("unreadable certificate")
}

/// A certificate id given as such, or read from a PEM file.
fn cert_id(arg: &str) -> anyhow::Result<String> {
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(arg.to_ascii_lowercase());
    }
    Ok(read_identity(Path::new(arg))?.certificate_id)
}

/// Runs a control-plane command on the gateway the configuration describes.
fn control(
    config: ConfigArg,
    f: impl FnOnce(&control_client::Client) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    with_control(&load_config(config.config)?, f)
}

/// Runs `f` against the control plane of `config`'s gateway.
fn with_control<T>(
    config: &Config,
    f: impl FnOnce(&control_client::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let client = control_client::Client::open(config)?;
    let result = f(&client);
    client.close();
    result
}
