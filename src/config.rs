//! `config.toml`: the gateway's one configuration file.
//!
//! Every section has safe defaults, unknown keys are errors, and loading
//! reports every problem at once (each section is read on its own, then the
//! whole is validated) so that an operator fixes a file in one pass. Paths
//! are resolved against the directory of the file they came from.
//!
//! Secure by default: the gateway refuses a configuration that would serve
//! plaintext MQTT or the admin API on a non-loopback address unless the
//! matching `allow_*` switch says so explicitly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository's `config.toml`, which is also the embedded default.
pub const DEFAULT_TOML: &str = include_str!("../config.toml");

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store and generated certificates live.
    pub data_dir: PathBuf,
    /// Account and region used to build ARNs.
    pub aws: Aws,
    /// TLS material for the MQTT listeners.
    pub tls: Tls,
    /// MQTT listeners and protocol settings.
    pub mqtt: Mqtt,
    /// The device HTTPS endpoint (mutual TLS).
    pub https: Https,
    /// More TLS listeners, each with options of its own.
    pub listeners: Vec<Listener>,
    /// Custom authorizers, in file order.
    pub authorizers: Vec<Authorizer>,
    /// The loopback admin listener (metrics, health).
    pub admin: Admin,
    /// Protocol limits, AWS IoT's by default.
    pub limits: Limits,
    /// Durability of the store.
    pub store: Store,
    /// Where policy documents live.
    pub policies: Policies,
    /// How certificates become principals, and what anonymous clients may do.
    pub auth: Auth,
    /// Where rule actions write and how they retry.
    pub actions: Actions,
    /// Which lifecycle events are published.
    pub events: Events,
    /// Fleet provisioning templates.
    pub provisioning: FleetProvisioning,
    /// Topic rules, in file order.
    pub rules: Vec<Rule>,
    /// The bridge to an upstream broker; none when absent.
    pub upstream: Option<Upstream>,
    /// The file this configuration was read from; rules reload from it.
    pub source: Option<PathBuf>,
}

/// `[aws]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aws {
    /// Region used in ARNs.
    pub region: String,
    /// Account id used in ARNs.
    pub account_id: String,
}

impl Default for Aws {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file of the CA(s) trusted for client certificates.
    pub ca: PathBuf,
    /// PEM certificate chain the server presents.
    pub cert: PathBuf,
    /// PEM private key of the server certificate.
    pub key: PathBuf,
    /// PEM file of certificate revocation lists from the trusted CA(s);
    /// a device certificate on one is refused at the handshake. Reread
    /// when it changes, for new connections.
    pub crl: Option<PathBuf>,
    /// On first run, create a CA, a server certificate and a device certificate.
    pub generate_if_missing: bool,
    /// One deadline for the TLS handshake and the CONNECT packet, in seconds.
    pub handshake_timeout_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            ca: "data/certs/ca.pem".into(),
            cert: "data/certs/server.pem".into(),
            key: "data/certs/server.key".into(),
            crl: None,
            generate_if_missing: true,
            handshake_timeout_secs: 10,
        }
    }
}

impl Tls {
    /// The handshake-plus-CONNECT deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// MQTT over mutual TLS listeners.
    pub listen: Vec<String>,
    /// Optional plaintext listener; its clients have no certificate identity.
    pub plaintext_listen: Option<String>,
    /// Allow `plaintext_listen` on a non-loopback address.
    pub allow_plaintext_on_network: bool,
    /// Keep alive used when a client asks for 0 or more than this (AWS IoT: 1200 s).
    pub max_keep_alive_secs: u16,
    /// Session expiry for 3.1.1 persistent sessions and the cap for MQTT 5 ones (AWS IoT: 1 h, at most 7 days).
    pub session_expiry_secs: u32,
    /// Largest session expiry a client may ask for.
    pub max_session_expiry_secs: u32,
    /// Most topic aliases a client may use (AWS IoT: 8).
    pub topic_alias_maximum: u16,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:8883".into()],
            plaintext_listen: None,
            allow_plaintext_on_network: false,
            max_keep_alive_secs: 1200,
            session_expiry_secs: 3600,
            max_session_expiry_secs: 7 * 24 * 3600,
            topic_alias_maximum: 8,
        }
    }
}

/// `[[listeners]]`: a TLS listener with options of its own; it serves
/// what every TLS listener does (MQTT, MQTT over WebSockets, HTTPS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The address.
    pub listen: String,
    /// Whether a client must present a certificate.
    #[serde(default)]
    pub client_cert: ClientCert,
    /// Whether each connection begins with a PROXY protocol header (v1 or
    /// v2) from a load balancer, whose source address is then the
    /// client's for policies, limits and logs.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The proxies trusted to send that header: addresses or CIDR blocks.
    /// A connection from anywhere else is refused.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Listener {
    /// The trusted proxies (checked when the configuration was read).
    pub fn trusted(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// `[[authorizers]]`: a custom authorizer, AWS's, with an HTTPS endpoint
/// in place of its Lambda function.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorizer {
    /// `authorizerName`.
    pub name: String,
    /// The endpoint sent AWS's request document (`https://`, or `http://`
    /// to a loopback host unless `actions.allow_plaintext_http`).
    pub endpoint: String,
    /// `tokenKeyName`: the parameter (header, query or MQTT username key)
    /// that holds the token.
    #[serde(default)]
    pub token_key_name: Option<String>,
    /// `tokenSigningPublicKeys`: names and PEM files of the RSA public keys
    /// a token's signature may verify with.
    #[serde(default)]
    pub token_signing_public_keys: BTreeMap<String, PathBuf>,
    /// `signingDisabled`: tokens are passed on unsigned.
    #[serde(default)]
    pub signing_disabled: bool,
    /// `status` ACTIVE (true) or INACTIVE.
    #[serde(default = "active")]
    pub active: bool,
    /// The default authorizer (`SetDefaultAuthorizer`): asked when a client
    /// names none.
    #[serde(default)]
    pub default: bool,
}

fn active() -> bool {
    true
}

/// An address block (`10.0.0.0/8`, `2001:db8::/32`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The block's first address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (a v4 address mapped into v6 is v4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| match a.to_canonical() {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = width - u32::from(self.len);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an address or a CIDR block"))?;
        let max = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        let len = match len {
            "" => max,
            n => n
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length is 0 to {max}"))?,
        };
        Ok(Self { addr, len })
    }
}

/// Whether a listener requires client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    /// Every client presents one, verified during the handshake.
    #[default]
    Required,
    /// A client may present none and authenticate another way (a
    /// SigV4-signed WebSocket upgrade); one it presents is still verified,
    /// and a client that authenticates no way at all is refused.
    Optional,
}

/// `[https]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Https {
    /// Address of the device HTTPS endpoint (the `iot-data` API with the
    /// client certificate as the principal, as AWS IoT serves it on 8443);
    /// none turns it off. It requires a client certificate like the MQTT
    /// listeners, so it may face the network.
    pub listen: Option<String>,
    /// A connection that reads and writes nothing this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for Https {
    fn default() -> Self {
        Self {
            listen: Some("0.0.0.0:8443".into()),
            idle_timeout_secs: 30,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, the
    /// AWS-shaped control plane).
    pub listen: Option<String>,
    /// Allow the admin listener on a non-loopback address.
    pub allow_network: bool,
    /// SigV4 access key id of one operator with full access (the
    /// `[[admin.users]]` list is the least-privilege way).
    pub access_key_id: Option<String>,
    /// Environment variable holding the matching secret (never in this file).
    pub secret_access_key_env: String,
    /// Operators: each access key with its secret and its operator policies.
    pub users: Vec<AdminUser>,
    /// Operator policy documents, one `NAME.json` per policy, IAM-style
    /// over `iot:<Operation>` actions; hot-reloaded.
    pub policies_dir: PathBuf,
    /// Serve the control plane on `admin.sock` in the data directory
    /// (owner-only), for the local CLI.
    pub socket: bool,
    /// The audit log (`audit.jsonl` in the data directory) is rotated at this size.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept.
    pub audit_max_files: u32,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:9080".into()),
            allow_network: false,
            access_key_id: None,
            secret_access_key_env: "EDGEGATE_ADMIN_SECRET".into(),
            users: Vec::new(),
            policies_dir: "operator-policies".into(),
            socket: true,
            audit_max_bytes: 16 * 1024 * 1024,
            audit_max_files: 4,
        }
    }
}

/// One `[[admin.users]]` entry: an operator's key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminUser {
    /// SigV4 access key id.
    pub access_key_id: String,
    /// Environment variable holding the secret.
    pub secret_env: Option<String>,
    /// File holding the secret (its first line).
    pub secret_file: Option<PathBuf>,
    /// Names of the operator policies that apply (none: every call is denied).
    pub policies: Vec<String>,
}

/// `[limits]`: AWS IoT's published limits (spec/aws-iot-auth.md §5.2) are the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest PUBLISH payload (AWS IoT: 128 KiB).
    pub max_payload_bytes: usize,
    /// Largest packet accepted from a client, header included.
    pub max_packet_bytes: usize,
    /// Longest topic name or filter in bytes (AWS IoT: 256).
    pub max_topic_bytes: usize,
    /// Most slashes in a topic or filter (AWS IoT: 7).
    pub max_topic_slashes: usize,
    /// Most client id bytes (AWS IoT: 128).
    pub max_client_id_bytes: usize,
    /// Most filters in one SUBSCRIBE (AWS IoT: 8).
    pub max_filters_per_subscribe: usize,
    /// Most subscriptions one session holds (AWS IoT: 50).
    pub max_subscriptions_per_connection: usize,
    /// Unacknowledged QoS 1/2 publishes in each direction (AWS IoT: 100).
    pub max_inflight: u16,
    /// Highest QoS granted; AWS IoT stops at 1, MQTT allows 2.
    pub max_qos: u8,
    /// Concurrent connections across all listeners.
    pub max_connections: usize,
    /// Messages waiting in a connected session's mailbox before QoS 0 is dropped.
    pub max_queued_messages: usize,
    /// Messages kept for a persistent session, online or offline, before the oldest QoS 0 and then new messages are refused.
    pub max_stored_messages: usize,
    /// Largest shadow state, desired plus reported (AWS IoT: 8 KB).
    pub shadow_max_bytes: usize,
    /// Nesting levels inside a shadow's desired and reported (AWS IoT: 6).
    pub shadow_max_depth: usize,
    /// Named shadows one thing may have (AWS IoT: no limit; an edge box keeps every shadow in memory).
    pub max_named_shadows_per_thing: usize,
    /// Shadows the gateway holds, deleted ones kept for their version included.
    pub max_shadows: usize,
    /// Publishes a second one connection may send (AWS IoT: 100; 0: no limit).
    pub publishes_per_second: u32,
    /// Payload bytes a second one connection may send; the excess is delayed
    /// (AWS IoT: 512 KiB; 0: no limit).
    pub publish_bytes_per_second: usize,
    /// Subscriptions a second one connection may make (0: no limit).
    pub subscriptions_per_second: u32,
    /// CONNECT attempts a second one client id may make after a burst of
    /// `connect_burst_per_client_id` (AWS IoT: 1; 0: no limit).
    pub connects_per_second_per_client_id: u32,
    /// The burst of CONNECT attempts one client id may make at once.
    pub connect_burst_per_client_id: u32,
    /// New connections a second from one source address after a burst of
    /// `connection_burst_per_address` (0: no limit).
    pub connections_per_second_per_address: u32,
    /// The burst of new connections one source address may open at once.
    pub connection_burst_per_address: u32,
    /// Sessions the gateway holds, connected or persistent; past it a new
    /// persistent session is refused, a clean one never (0: no limit).
    pub max_sessions: usize,
    /// Retained messages in all (0: no limit).
    pub max_retained_messages: usize,
    /// Topic and payload bytes of retained messages in all (0: no limit).
    pub max_retained_bytes: usize,
    /// Retained messages one certificate may set (0: no limit).
    pub max_retained_messages_per_principal: usize,
    /// Topic and payload bytes of the retained messages one certificate may
    /// set (0: no limit).
    pub max_retained_bytes_per_principal: usize,
}

impl Limits {
    /// The topic length and depth limits, for every way a message comes in.
    pub fn topics(&self) -> crate::topic::Limits {
        crate::topic::Limits {
            max_len: self.max_topic_bytes,
            max_slashes: self.max_topic_slashes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 128 * 1024,
            max_packet_bytes: 128 * 1024 + 4096,
            max_topic_bytes: 256,
            max_topic_slashes: 7,
            max_client_id_bytes: 128,
            max_filters_per_subscribe: 8,
            max_subscriptions_per_connection: 50,
            max_inflight: 100,
            max_qos: 2,
            max_connections: 100_000,
            max_queued_messages: 1000,
            max_stored_messages: 10_000,
            shadow_max_bytes: 8192,
            shadow_max_depth: 6,
            max_named_shadows_per_thing: 100,
            max_shadows: 100_000,
            publishes_per_second: 100,
            publish_bytes_per_second: 512 * 1024,
            subscriptions_per_second: 100,
            connects_per_second_per_client_id: 1,
            connect_burst_per_client_id: 5,
            connections_per_second_per_address: 100,
            connection_burst_per_address: 200,
            max_sessions: 10_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_retained_messages_per_principal: 1_000,
            max_retained_bytes_per_principal: 8 * 1024 * 1024,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// Flush every group commit to disk. Off trades crash safety for speed.
    pub fsync: bool,
}

impl Default for Store {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// `[policies]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// Directory of policy documents, one `NAME.json` per policy.
    pub dir: PathBuf,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            dir: "policies".into(),
        }
    }
}

/// How an unknown certificate that chains to a trusted CA is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Only registered, ACTIVE certificates connect (as on AWS IoT).
    Registry,
    /// Unknown certificates are registered ACTIVE on first connect, with the
    /// provisioning template's policies and thing.
    Auto,
    /// Unknown certificates are registered PENDING_ACTIVATION, an event is
    /// published, and the connection is refused until an operator activates it.
    Jitr,
}

/// What auto registration gives a new certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Provisioning {
    /// Policies attached to the certificate.
    pub policies: Vec<String>,
    /// Name of the thing created and attached, from certificate policy
    /// variables; none when absent.
    pub thing_name: Option<String>,
}

impl Default for Provisioning {
    fn default() -> Self {
        Self {
            policies: vec!["device".into()],
            thing_name: Some("${iot:Certificate.Subject.CommonName}".into()),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// `registry`, `auto` or `jitr`.
    pub registration: Registration,
    /// The template for auto registration.
    pub provisioning: Provisioning,
    /// Policies of clients on the plaintext listener, which have no
    /// certificate; none by default, so they can do nothing.
    pub anonymous_policies: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            registration: Registration::Auto,
            provisioning: Provisioning::default(),
            anonymous_policies: Vec::new(),
        }
    }
}

/// Every problem found in a configuration, each on its own line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problems are in, if any.
    pub file: Option<PathBuf>,
    /// One entry per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "embedded defaults".into(), |p| p.display().to_string());
        write!(f, "{} problem(s) in {file}:", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            problems: vec![format!("cannot read: {e}")],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = Self::parse(&text, base).map_err(|problems| ConfigError {
            file: Some(path.to_owned()),
            problems,
        })?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }

    /// The embedded defaults, with paths relative to `base`.
    pub fn embedded(base: &Path) -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_TOML, base).map_err(|problems| ConfigError {
            file: None,
            problems,
        })
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Vec<String>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut data_dir = PathBuf::from("data");
        for (key, value) in &table {
            match key.as_str() {
                "data_dir" => match value.as_str() {
                    Some(s) => data_dir = s.into(),
                    None => problems.push("data_dir: expected a string".into()),
                },
                "aws" | "tls" | "mqtt" | "https" | "listeners" | "authorizers" | "admin"
                | "limits" | "store" | "policies" | "auth" | "actions" | "events"
                | "provisioning" | "rules" | "upstream" => {}
                other => problems.push(format!("unknown key `{other}`")),
            }
        }
        let mut cfg = Self {
            data_dir,
            aws: section(&table, "aws", &mut problems),
            tls: section(&table, "tls", &mut problems),
            mqtt: section(&table, "mqtt", &mut problems),
            https: section(&table, "https", &mut problems),
            listeners: tables(&table, "listeners", "listen", &mut problems),
            authorizers: tables(&table, "authorizers", "name", &mut problems),
            admin: section(&table, "admin", &mut problems),
            limits: section(&table, "limits", &mut problems),
            store: section(&table, "store", &mut problems),
            policies: section(&table, "policies", &mut problems),
            auth: section(&table, "auth", &mut problems),
            actions: section(&table, "actions", &mut problems),
            events: section(&table, "events", &mut problems),
            provisioning: section(&table, "provisioning", &mut problems),
            rules: tables(&table, "rules", "name", &mut problems),
            upstream: table
                .contains_key("upstream")
                .then(|| section::<Upstream>(&table, "upstream", &mut problems)),
            source: None,
        };
        cfg.resolve_paths(base);
        problems.extend(cfg.validate());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems
                .into_iter()
                .map(|p| with_position(text, p))
                .collect())
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.tls.ca,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.policies.dir,
            &mut self.admin.policies_dir,
            &mut self.actions.file_root,
        ]
        .into_iter()
        .chain(&mut self.tls.crl)
        .chain(&mut self.actions.http_ca)
        .chain(
            self.admin
                .users
                .iter_mut()
                .filter_map(|u| u.secret_file.as_mut()),
        )
        .chain(
            self.upstream
                .iter_mut()
                .flat_map(|u| [&mut u.ca, &mut u.cert, &mut u.key]),
        )
        .chain(self.provisioning.templates.iter_mut().map(|t| &mut t.file))
        .chain(
            self.authorizers
                .iter_mut()
                .flat_map(|a| a.token_signing_public_keys.values_mut()),
        ) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Authorizers have AWS's names, unique, what signing needs, and one
    /// default at most.
    fn validate_authorizers(&self, problems: &mut Vec<String>) {
        let mut seen = Vec::new();
        for (i, a) in self.authorizers.iter().enumerate() {
            let at = format!("authorizers[{i}]");
            let name_ok = (1..=128).contains(&a.name.len())
                && a.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=,@-".contains(c));
            if !name_ok {
                problems.push(format!(
                    "{at}.name: `{}` is not 1 to 128 of [\\w=,@-]",
                    a.name
                ));
            } else if seen.contains(&&a.name) {
                problems.push(format!("{at}.name: `{}` is used twice", a.name));
            }
            seen.push(&a.name);
            if !a.signing_disabled
                && (a.token_key_name.is_none() || a.token_signing_public_keys.is_empty())
            {
                problems.push(format!(
                    "{at}: with signing on, token_key_name and token_signing_public_keys are required"
                ));
            }
            if let Some(key) = &a.token_key_name
                && !((1..=128).contains(&key.len())
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)))
            {
                problems.push(format!(
                    "{at}.token_key_name: `{key}` is not 1 to 128 of [a-zA-Z0-9_-]"
                ));
            }
        }
        if self.authorizers.iter().filter(|a| a.default).count() > 1 {
            problems.push("authorizers: at most one is the default".into());
        }
    }

    /// Each operator has a unique key, one source for its secret and valid policy names.
    fn validate_users(&self, problems: &mut Vec<String>) {
        let mut seen: Vec<&str> = self
            .admin
            .access_key_id
            .iter()
            .map(String::as_str)
            .collect();
        for (i, u) in self.admin.users.iter().enumerate() {
            let at = format!("admin.users[{i}]");
            if u.access_key_id.is_empty() {
                problems.push(format!("{at}.access_key_id: missing"));
            } else if seen.contains(&u.access_key_id.as_str()) {
                problems.push(format!(
                    "{at}.access_key_id: `{}` is used twice",
                    u.access_key_id
                ));
            }
            seen.push(&u.access_key_id);
            if u.secret_env.is_some() == u.secret_file.is_some() {
                problems.push(format!(
                    "{at}: give the secret as exactly one of secret_env or secret_file"
                ));
            }
            for name in &u.policies {
                if !valid_policy_name(name) {
                    problems.push(format!(
                        "{at}.policies: `{name}` is not a valid policy name"
                    ));
                }
            }
        }
        if self.admin.audit_max_bytes == 0 {
            problems.push("admin.audit_max_bytes: must be greater than 0".into());
        }
    }

    /// Semantic checks that serde cannot express; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.mqtt.listen.is_empty()
            && self.mqtt.plaintext_listen.is_none()
            && self.listeners.is_empty()
        {
            problems.push("mqtt.listen: at least one listener is needed".into());
        }
        for addr in &self.mqtt.listen {
            if let Err(e) = resolve(addr) {
                problems.push(format!("mqtt.listen: `{addr}`: {e}"));
            }
        }
        if let Some(addr) = &self.https.listen
            && let Err(e) = resolve(addr)
        {
            problems.push(format!("https.listen: `{addr}`: {e}"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = resolve(&l.listen) {
                problems.push(format!("listeners[{i}].listen: `{}`: {e}", l.listen));
            }
            for p in &l.trusted_proxies {
                if let Err(e) = p.parse::<Cidr>() {
                    problems.push(format!("listeners[{i}].trusted_proxies: {e}"));
                }
            }
            if l.proxy_protocol && l.trusted_proxies.is_empty() {
                problems.push(format!(
                    "listeners[{i}].trusted_proxies: name the proxies that send the PROXY header"
                ));
            }
        }
        check_exposure(
            "mqtt.plaintext_listen",
            self.mqtt.plaintext_listen.as_deref(),
            self.mqtt.allow_plaintext_on_network,
            "mqtt.allow_plaintext_on_network",
            &mut problems,
        );
        check_exposure(
            "admin.listen",
            self.admin.listen.as_deref(),
            self.admin.allow_network,
            "admin.allow_network",
            &mut problems,
        );
        self.validate_users(&mut problems);
        self.validate_authorizers(&mut problems);
        let l = &self.limits;
        if l.max_qos > 2 {
            problems.push(format!("limits.max_qos: {} is not 0, 1 or 2", l.max_qos));
        }
        for (name, value) in [
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_packet_bytes", l.max_packet_bytes),
            ("limits.max_topic_bytes", l.max_topic_bytes),
            ("limits.max_client_id_bytes", l.max_client_id_bytes),
            (
                "limits.max_filters_per_subscribe",
                l.max_filters_per_subscribe,
            ),
            (
                "limits.max_subscriptions_per_connection",
                l.max_subscriptions_per_connection,
            ),
            ("limits.max_inflight", usize::from(l.max_inflight)),
            ("limits.max_connections", l.max_connections),
            ("limits.max_queued_messages", l.max_queued_messages),
            ("limits.max_stored_messages", l.max_stored_messages),
            ("limits.shadow_max_bytes", l.shadow_max_bytes),
            ("limits.shadow_max_depth", l.shadow_max_depth),
            ("limits.max_shadows", l.max_shadows),
            (
                "https.idle_timeout_secs",
                self.https.idle_timeout_secs as usize,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if l.max_packet_bytes > 268_435_455 {
            problems.push("limits.max_packet_bytes: MQTT packets stop at 268435455 bytes".into());
        }
        if self.tls.handshake_timeout_secs == 0 {
            problems.push("tls.handshake_timeout_secs: must be greater than 0".into());
        }
        for name in self
            .auth
            .provisioning
            .policies
            .iter()
            .chain(&self.auth.anonymous_policies)
        {
            if !valid_policy_name(name) {
                problems.push(format!("auth: `{name}` is not a valid policy name"));
            }
        }
        if self.mqtt.session_expiry_secs > self.mqtt.max_session_expiry_secs {
            problems
                .push("mqtt.session_expiry_secs: larger than mqtt.max_session_expiry_secs".into());
        }
        let a = &self.actions;
        for (name, value) in [
            ("actions.spool_max_bytes", a.spool_max_bytes as u64),
            ("actions.file_max_bytes", a.file_max_bytes),
            ("actions.retry_initial_ms", a.retry_initial_ms),
            ("actions.retry_max_ms", a.retry_max_ms),
            ("actions.max_hops", u64::from(a.max_hops)),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if let Some(u) = &self.upstream {
            problems.extend(u.validate());
        }
        problems
    }
}

/// What a full spool does with a new record (`spool_overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Evict the oldest records (returned to the caller) to make room.
    DropOldest,
    /// Refuse the new record.
    RefuseNew,
}

/// `[upstream]`: the bridge to AWS IoT Core or any MQTT broker over mutual TLS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// `host:port`; port 443 speaks ALPN `x-amzn-mqtt-ca` as AWS IoT requires.
    pub endpoint: String,
    /// TLS server name, when it is not the endpoint's host.
    pub server_name: Option<String>,
    /// Client id (AWS IoT: the thing name, for thing policies).
    pub client_id: String,
    /// CA(s) that sign the upstream's server certificate.
    pub ca: PathBuf,
    /// This gateway's client certificate upstream.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// `3.1.1` or `5`.
    pub mqtt_version: String,
    /// Keep alive in seconds; a link silent past 1.5 times this is dead.
    pub keep_alive_secs: u16,
    /// Clean session (3.1.1) / clean start (5) on every connect. Off by
    /// default: with a persistent session the upstream sends again what it
    /// sent while the link was down or before this gateway acknowledged it.
    pub clean_session: bool,
    /// One deadline for TCP, TLS and CONNACK.
    pub connect_timeout_secs: u64,
    /// First reconnect delay; it doubles per failure, with jitter.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// Publishes sent upstream in any one second (AWS IoT: 100 per connection).
    pub max_publishes_per_second: u32,
    /// Unacknowledged QoS 1 publishes upstream (AWS IoT: 100).
    pub max_inflight: u16,
    /// Largest payload forwarded (AWS IoT: 128 KB); larger fails at once.
    pub max_payload_bytes: usize,
    /// Longest upstream topic (AWS IoT: 256 bytes).
    pub max_topic_bytes: usize,
    /// Most slashes in an upstream topic (AWS IoT: 7).
    pub max_topic_slashes: usize,
    /// Most bytes the upstream spool holds (also held in memory).
    pub spool_max_bytes: usize,
    /// Older messages are dropped and counted (0: no limit).
    pub spool_max_age_secs: u64,
    /// What a full spool does: `refuse_new` publishes (the default: nothing
    /// accepted is dropped) or `drop_oldest` (counted).
    pub spool_overflow: Overflow,
    /// Local messages sent upstream.
    pub forward: Vec<TopicMapping>,
    /// Upstream messages brought into the local broker.
    pub subscribe: Vec<TopicMapping>,
}

impl Upstream {
    /// The upstream's topic bounds (AWS IoT's by default).
    pub fn topics(&self) -> crate::topic::Limits {
        crate::topic::Limits {
            max_len: self.max_topic_bytes,
            max_slashes: self.max_topic_slashes,
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            server_name: None,
            client_id: String::new(),
            ca: "certs/upstream-ca.pem".into(),
            cert: "certs/upstream.pem".into(),
            key: "certs/upstream.key".into(),
            mqtt_version: "3.1.1".into(),
            keep_alive_secs: 60,
            clean_session: false,
            connect_timeout_secs: 10,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 60_000,
            max_publishes_per_second: 100,
            max_inflight: 100,
            max_payload_bytes: 128 * 1024,
            max_topic_bytes: 256,
            max_topic_slashes: 7,
            spool_max_bytes: 64 * 1024 * 1024,
            spool_max_age_secs: 0,
            spool_overflow: Overflow::RefuseNew,
            forward: Vec::new(),
            subscribe: Vec::new(),
        }
    }
}

impl Upstream {
    /// The endpoint's host and port.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.endpoint.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some((host, port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.host_port().is_none() {
            problems.push(format!(
                "upstream.endpoint: `{}` is not host:port",
                self.endpoint
            ));
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            problems.push("upstream.client_id: 1 to 128 bytes".into());
        }
        if !matches!(self.mqtt_version.as_str(), "3.1.1" | "5") {
            problems.push(format!(
                "upstream.mqtt_version: `{}` is not 3.1.1 or 5",
                self.mqtt_version
            ));
        }
        for (name, value) in [
            ("upstream.connect_timeout_secs", self.connect_timeout_secs),
            ("upstream.reconnect_initial_ms", self.reconnect_initial_ms),
            ("upstream.reconnect_max_ms", self.reconnect_max_ms),
            (
                "upstream.max_publishes_per_second",
                u64::from(self.max_publishes_per_second),
            ),
            ("upstream.max_inflight", u64::from(self.max_inflight)),
            ("upstream.spool_max_bytes", self.spool_max_bytes as u64),
            ("upstream.keep_alive_secs", u64::from(self.keep_alive_secs)),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        for (section, mappings) in [("forward", &self.forward), ("subscribe", &self.subscribe)] {
            for (i, m) in mappings.iter().enumerate() {
                if let Err(e) = crate::topic::validate_filter(&m.filter) {
                    problems.push(format!(
                        "upstream.{section}[{i}].filter `{}`: {e}",
                        m.filter
                    ));
                }
                if m.qos > 1 {
                    problems.push(format!("upstream.{section}[{i}].qos: 0 or 1"));
                }
            }
        }
        problems
    }
}

/// `[[upstream.forward]]` (local messages matching `filter` go upstream)
/// and `[[upstream.subscribe]]` (upstream messages matching `filter` are
/// published here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    /// Filter on the side the messages come from.
    pub filter: String,
    /// Topic template on the side they go to (`${topic()}`: the same topic).
    #[serde(default = "same_topic")]
    pub topic: String,
    /// QoS on the upstream side (its PUBACK, or its subscription): 1 by default.
    #[serde(default = "qos1")]
    pub qos: u8,
}

fn same_topic() -> String {
    "${topic()}".into()
}

fn qos1() -> u8 {
    1
}

/// `[events]`: the lifecycle events the gateway publishes on
/// `$aws/events/...`. AWS IoT publishes both families for every account;
/// here each may be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// `$aws/events/presence/connected|disconnected/<clientId>`.
    pub presence: bool,
    /// `$aws/events/subscriptions/subscribed|unsubscribed/<clientId>`.
    pub subscriptions: bool,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            presence: true,
            subscriptions: true,
        }
    }
}

/// `[provisioning]`: fleet provisioning by claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetProvisioning {
    /// The templates RegisterThing may name.
    pub templates: Vec<ProvisioningTemplate>,
}

/// `[[provisioning.templates]]`: one provisioning template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningTemplate {
    /// Its name: `$aws/provisioning-templates/<name>/provision/json`.
    pub name: String,
    /// The template body (AWS's template language, JSON).
    pub file: PathBuf,
    /// A disabled template refuses RegisterThing.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The pre-provisioning hook: an HTTPS endpoint asked, with AWS's
    /// request document, whether to provision each device.
    pub hook: Option<String>,
}

/// `[actions]`: settings every rule action shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    /// File actions write only below this directory.
    pub file_root: PathBuf,
    /// A file action's file is rotated before it grows past this size.
    pub file_max_bytes: u64,
    /// ... or once it is this old (0: never by age).
    pub file_max_age_secs: u64,
    /// How many rotated copies of each file are kept; older ones are
    /// removed when the file rotates again (0: none is kept).
    pub file_max_rotated: usize,
    /// How many files (rotated copies aside) file actions may make under
    /// `file_root` in all; a job that would make one more goes to the error
    /// action (0: no limit).
    pub file_max_files: usize,
    /// PEM roots HTTP actions trust instead of the system's.
    pub http_ca: Option<PathBuf>,
    /// HTTP actions may use `http://` to non-loopback hosts (loopback is always allowed).
    pub allow_plaintext_http: bool,
    /// Most bytes each action's spool holds (records are also kept in memory).
    pub spool_max_bytes: usize,
    /// Records older than this go to the error action (0: no limit).
    pub spool_max_age_secs: u64,
    /// What a full spool does: `drop_oldest` (to the error action) or `refuse_new` publishes.
    pub spool_overflow: Overflow,
    /// First retry delay of a failing action; it doubles per attempt, with jitter.
    pub retry_initial_ms: u64,
    /// Longest delay between retries.
    pub retry_max_ms: u64,
    /// How many rule republishes deep a message may be before rules stop
    /// matching it: a rule feeding itself stops there.
    pub max_hops: u8,
}

impl Default for Actions {
    fn default() -> Self {
        Self {
            file_root: "data/files".into(),
            file_max_bytes: 64 * 1024 * 1024,
            file_max_age_secs: 86_400,
            file_max_rotated: 10,
            file_max_files: 1000,
            http_ca: None,
            allow_plaintext_http: false,
            spool_max_bytes: 32 * 1024 * 1024,
            spool_max_age_secs: 7 * 86_400,
            spool_overflow: Overflow::DropOldest,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            max_hops: 8,
        }
    }
}

/// `[[rules]]`: one topic rule, shaped like AWS IoT's `TopicRulePayload`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `[a-zA-Z0-9_]{1,128}`; names the rule's metrics and spools.
    pub name: String,
    /// `SELECT ... FROM 'filter' WHERE ...`.
    pub sql: String,
    /// `2016-03-23` (the default) or `beta`.
    #[serde(default = "default_sql_version")]
    pub sql_version: String,
    /// A disabled rule matches nothing.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Where the rule's output goes; at most 10.
    #[serde(default)]
    pub actions: Vec<RuleAction>,
    /// Receives AWS's error document when an action gives up.
    pub error_action: Option<RuleAction>,
}

fn default_sql_version() -> String {
    "2016-03-23".into()
}

fn enabled() -> bool {
    true
}

/// One action: a table with exactly one key, as in AWS's rule actions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleAction {
    /// Publish the output to a topic of this gateway.
    Republish(RepublishAction),
    /// POST the output to a URL.
    Http(HttpAction),
    /// Append the output as one JSON line to a file under `actions.file_root`.
    File(FileAction),
    /// Send the output through the `[upstream]` bridge.
    Upstream(UpstreamAction),
}

/// `upstream = { topic, qos }`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAction {
    /// Upstream topic template.
    pub topic: String,
    /// 0 or 1 (the default).
    #[serde(default = "qos1")]
    pub qos: u8,
}

/// `republish = { topic, qos, retain, headers }`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishAction {
    /// Topic template; a leading `$$` publishes to a reserved `$` topic.
    pub topic: String,
    /// 0 or 1.
    #[serde(default)]
    pub qos: u8,
    /// Publish retained.
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 properties, each a template.
    #[serde(default)]
    pub headers: MqttHeaders,
    /// Accepted for AWS compatibility and ignored: the gateway publishes as itself.
    pub role_arn: Option<String>,
}

/// MQTT 5 properties of a republished message (AWS's `MqttHeaders`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttHeaders {
    /// Content Type.
    pub content_type: Option<String>,
    /// `UTF8_DATA` or `UNSPECIFIED_BYTES`.
    pub payload_format_indicator: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data, base64.
    pub correlation_data: Option<String>,
    /// Message Expiry Interval in seconds.
    pub message_expiry: Option<String>,
    /// User Properties; at most 100.
    #[serde(default)]
    pub user_properties: Vec<KeyValue>,
}

/// A key and a value template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Key (not a template).
    pub key: String,
    /// Value template.
    pub value: String,
}

/// `http = { url, headers, timeout_ms }`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    /// URL template; `https://`, or `http://` to a loopback host.
    pub url: String,
    /// Request headers; values are templates.
    #[serde(default)]
    pub headers: Vec<KeyValue>,
    /// Deadline of one attempt.
    #[serde(default = "http_timeout_ms")]
    pub timeout_ms: u64,
}

fn http_timeout_ms() -> u64 {
    3000
}

/// `file = { path }`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAction {
    /// Path template relative to `actions.file_root`; it may not leave it.
    pub path: String,
}

/// Reads `[[rules]]` one rule at a time, so one broken rule names itself
/// and does not hide the others' problems.
/// Reads `[[key]]` tables, each on its own so that one's errors do not
/// hide the others'; a problem names the table by its `label` key.
fn tables<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    label: &str,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let Some(value) = table.get(key) else {
        return Vec::new();
    };
    let Some(array) = value.as_array() else {
        problems.push(format!("{key}: expected [[{key}]] tables"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, v) in array.iter().enumerate() {
        match v.clone().try_into::<T>() {
            Ok(r) => out.push(r),
            Err(e) => {
                let name = v.get(label).and_then(|n| n.as_str()).unwrap_or("?");
                problems.push(format!("{key}[{i}] `{name}`: {}", e.to_string().trim()));
            }
        }
    }
    out
}

/// Whether a policy name is one AWS accepts: `[\w+=,.@-]{1,128}`.
pub fn valid_policy_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

/// Deserializes one section on its own so that its errors do not hide the others'.
/// Reads section `name`; a key that is unknown or has a bad value is
/// reported and left at its default, so that the section's other keys are
/// still read and checked (every problem in one report).
fn section<T: DeserializeOwned + Default>(
    table: &toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> T {
    let Some(value) = table.get(name) else {
        return T::default();
    };
    let mut value = value.clone();
    // Each failed attempt removes one key: at most as many attempts as keys.
    let keys = value.as_table().map_or(0, toml::Table::len);
    for _ in 0..=keys {
        let e = match value.clone().try_into() {
            Ok(v) => return v,
            Err(e) => e,
        };
        let message = e.to_string();
        let message = message.trim();
        let removed = offending_key(message).filter(|key| {
            value
                .as_table_mut()
                .is_some_and(|t| t.remove(key).is_some())
        });
        match removed {
            Some(key) => {
                let why = message.split("\nin `").next().unwrap_or(message);
                problems.push(format!("{name}.{key}: {}", why.trim()));
            }
            None => {
                problems.push(format!("[{name}]: {message}"));
                return T::default();
            }
        }
    }
    T::default()
}

/// The key a section's error names: `unknown field `k`` or `... in `k``.
fn offending_key(message: &str) -> Option<String> {
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_owned);
    if let Some(rest) = message.split("unknown field ").nth(1) {
        return quoted(rest);
    }
    message
        .rsplit("\nin ")
        .next()
        .filter(|_| message.contains("\nin "))
        .and_then(quoted)
}

/// `problem` with where it is in `text`, when it names a key:
/// `section.key: ...`, or `unknown key `k`` at the top level.
fn with_position(text: &str, problem: String) -> String {
    let located = if let Some(rest) = problem.strip_prefix("unknown key `") {
        rest.split('`').next().and_then(|k| locate(text, None, k))
    } else {
        let path = problem.split(':').next().unwrap_or_default();
        let mut parts = path.splitn(2, '.');
        match (parts.next(), parts.next()) {
            (Some(section), Some(key)) => {
                let key = key.split(['[', '.']).next().unwrap_or(key);
                locate(text, Some(section), key)
            }
            _ => None,
        }
    };
    match located {
        Some((line, column)) => format!("line {line}, column {column}: {problem}"),
        None => problem,
    }
}

/// Where `key` of `[section]` (the top level when `None`) is set in
/// `text`, as a 1-based line and column; a table of that name (`[[admin.users]]`) counts too.
fn locate(text: &str, section: Option<&str>, key: &str) -> Option<(usize, usize)> {
    let mut current: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let column = line.len() - t.len() + 1;
        if let Some(header) = t.strip_prefix('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim();
            if section.is_some_and(|s| name == format!("{s}.{key}")) {
                return Some((i + 1, column));
            }
            current = Some(name);
            continue;
        }
        if current == section
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some((i + 1, column));
        }
    }
    None
}

fn check_exposure(
    key: &str,
    addr: Option<&str>,
    allowed: bool,
    switch: &str,
    problems: &mut Vec<String>,
) {
    let Some(addr) = addr else { return };
    match resolve(addr) {
        Err(e) => problems.push(format!("{key}: `{addr}`: {e}")),
        Ok(all) if !allowed && all.iter().any(|a| !a.ip().is_loopback()) => {
            problems.push(format!(
                "{key}: `{addr}` is not a loopback address; set {switch} = true to expose it"
            ));
        }
        Ok(_) => {}
    }
}

/// The addresses a listen address stands for: an IP and port, or a host
/// name and port (`localhost:8883`), which must resolve.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    // The fuzzer's host names would wait on the system's resolver.
    if cfg!(fuzzing) {
        return Err("host names are not looked up while fuzzing".into());
    }
    use std::net::ToSocketAddrs;
    let all: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    if all.is_empty() {
        return Err("the host name resolves to no address".into());
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks_hold_what_they_should() {
        let cidr = |s: &str| s.parse::<Cidr>().expect(s);
        let ip = |s: &str| s.parse::<IpAddr>().expect(s);
        assert!(cidr("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(
            cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")),
            "v4 mapped"
        );
        assert!(!cidr("10.0.0.0/8").contains(ip("::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:1::7")));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "nowhere", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let problems = Config::parse(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
            Path::new("."),
        )
        .expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("listeners[0].trusted_proxies: name"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("listeners[1].trusted_proxies: `10.0.0.0/99`"))
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_column() {
        let text = "surprise = 1\n[mqtt]\nplaintext_listen = \"0.0.0.0:1883\"\nkeep = 3\n[admin]\n  listen = \"0.0.0.0:9080\"\n[limits]\nmax_qos = 7\nmax_payload_bytes = \"big\"\n[tls]\nhandshake_timeout_secs = -1\n";
        let problems = Config::parse(text, Path::new("/srv")).expect_err("seven mistakes");
        let all = problems.join("\n");
        // (where, what)
        let cases = [
            (
                "line 1, column 1: unknown key `surprise`",
                "a top-level key",
            ),
            (
                "line 4, column 1: mqtt.keep: unknown field",
                "an unknown key in a section",
            ),
            (
                "line 3, column 1: mqtt.plaintext_listen",
                "a value checked after parsing, in the same section",
            ),
            ("line 6, column 3: admin.listen", "an indented key"),
            (
                "line 9, column 1: limits.max_payload_bytes: invalid type",
                "a bad type",
            ),
            (
                "line 8, column 1: limits.max_qos",
                "checked after a bad type in its section",
            ),
            (
                "line 11, column 1: tls.handshake_timeout_secs: invalid value",
                "a bad value",
            ),
        ];
        for (want, what) in cases {
            assert!(all.contains(want), "{what}: `{want}` not in:\n{all}");
        }
        assert_eq!(problems.len(), cases.len(), "{all}");
    }

    #[test]
    fn listen_addresses_may_be_host_names() {
        let parse = |text: &str| {
            Config::parse(text, Path::new("/srv"))
                .map(|_| ())
                .map_err(|p| p.join("; "))
        };
        assert_eq!(parse("[mqtt]\nlisten = [\"localhost:8883\"]\n"), Ok(()));
        assert_eq!(
            parse("[mqtt]\nplaintext_listen = \"localhost:1883\"\n"),
            Ok(()),
            "localhost is loopback: no opt-in needed"
        );
        let bad = parse("[mqtt]\nlisten = [\"localhost:notaport\"]\n").expect_err("a bad port");
        assert!(bad.contains("mqtt.listen: `localhost:notaport`"), "{bad}");
    }

    #[test]
    fn the_compose_configuration_opens_the_admin_listener_only_with_a_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/edgegate.toml");
        let text = std::fs::read_to_string(&path).expect("docker/edgegate.toml");
        let cfg = Config::parse(&text, Path::new("/srv/edgegate")).expect("valid");
        assert_eq!(cfg.admin.listen.as_deref(), Some("0.0.0.0:9080"));
        assert!(cfg.admin.allow_network, "the explicit opt-in");
        assert!(cfg.admin.access_key_id.is_some(), "and a key");
        assert_eq!(cfg.data_dir, Path::new("/srv/edgegate/data"), "the volume");
        assert_eq!(
            cfg.mqtt.listen,
            ["0.0.0.0:8883"],
            "the rest is the embedded defaults"
        );
    }

    #[test]
    fn embedded_defaults_are_valid_and_secure() {
        let cfg = Config::embedded(Path::new("/srv")).expect("valid");
        assert_eq!(cfg.data_dir, Path::new("/srv/data"));
        assert_eq!(cfg.tls.ca, Path::new("/srv/data/certs/ca.pem"));
        assert!(cfg.mqtt.plaintext_listen.is_none());
        assert_eq!(cfg.admin.listen.as_deref(), Some("127.0.0.1:9080"));
        assert_eq!(cfg.limits.max_payload_bytes, 128 * 1024);
        // The documented [actions] are the built-in defaults.
        assert_eq!(
            cfg.actions,
            Actions {
                file_root: "/srv/data/files".into(),
                ..Actions::default()
            }
        );
        assert!(cfg.rules.is_empty());
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
            bogus = 1
            [mqtt]
            listen = ["nope"]
            plaintext_listen = "0.0.0.0:1883"
            typo = true
            [admin]
            listen = "0.0.0.0:9080"
            [limits]
            max_qos = 3
        "#;
        let problems = Config::parse(text, Path::new(".")).expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("unknown key `bogus`"), "{all}");
        assert!(all.contains("typo"), "{all}");
        assert!(all.contains("admin.listen"), "{all}");
        assert!(all.contains("max_qos"), "{all}");
        // The broken [mqtt] section still lets the others be checked.
        assert!(problems.len() >= 4, "{all}");
    }

    #[test]
    fn upstream_is_off_unless_configured_and_checked_when_it_is() {
        let cfg = Config::parse("", Path::new("/srv")).expect("valid");
        assert!(cfg.upstream.is_none());
        let text = r#"
            [upstream]
            endpoint = "broker.example:8883"
            client_id = "edge-1"
            [[upstream.forward]]
            filter = "telemetry/#"
        "#;
        let cfg = Config::parse(text, Path::new("/srv")).expect("valid");
        let u = cfg.upstream.expect("upstream");
        assert_eq!(u.host_port(), Some(("broker.example", 8883)));
        assert_eq!(u.ca, Path::new("/srv/certs/upstream-ca.pem"));
        assert_eq!(u.forward[0].topic, "${topic()}");
        assert_eq!(u.spool_overflow, Overflow::RefuseNew);
        let text = r#"
            [upstream]
            endpoint = "no-port"
            mqtt_version = "4"
            [[upstream.subscribe]]
            filter = "a/#/b"
            qos = 2
        "#;
        let all = Config::parse(text, Path::new("."))
            .expect_err("invalid")
            .join("\n");
        for needle in [
            "upstream.endpoint",
            "upstream.client_id",
            "mqtt_version",
            "subscribe[0].filter",
            "subscribe[0].qos",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn plaintext_on_network_needs_opt_in() {
        let text =
            "[mqtt]\nplaintext_listen = \"0.0.0.0:1883\"\nallow_plaintext_on_network = true\n";
        assert!(Config::parse(text, Path::new(".")).is_ok());
        let text = "[mqtt]\nplaintext_listen = \"127.0.0.1:1883\"\n";
        assert!(Config::parse(text, Path::new(".")).is_ok());
        let text = "[mqtt]\nplaintext_listen = \"0.0.0.0:1883\"\n";
        assert!(Config::parse(text, Path::new(".")).is_err());
    }
}
