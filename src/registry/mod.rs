//! The registry of principals: certificates (with their status and attached
//! policies), things, and which certificate is attached to which thing.
//!
//! Kept in memory behind one lock, written through to the store (`cert/<id>`
//! and `thing/<name>` records, JSON) in the same order as it changes, and
//! read back whole at startup. A connection asks [`Registry::admit`] once,
//! at CONNECT; what it gets is a snapshot of its principal.

pub mod identity;

pub use identity::ClientIdentity;

use crate::config::{Provisioning, Registration};
use crate::policy::compile::Context;
use crate::store::{Op, Store};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// A certificate's status, as AWS IoT names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertStatus {
    /// May connect.
    Active,
    /// Registered but switched off.
    Inactive,
    /// Revoked for good.
    Revoked,
    /// Registered by JITR, waiting for an operator.
    PendingActivation,
}

impl CertStatus {
    /// AWS's name for the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Revoked => "REVOKED",
            Self::PendingActivation => "PENDING_ACTIVATION",
        }
    }

    /// Parses AWS's name for a status.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Active,
            Self::Inactive,
            Self::Revoked,
            Self::PendingActivation,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// A registered certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Lowercase hex SHA-256 of the DER.
    pub id: String,
    /// The certificate, PEM encoded.
    pub pem: String,
    /// Status.
    pub status: CertStatus,
    /// Id of the CA that issued it, when known.
    pub ca_id: Option<String>,
    /// Registration time, ms since the epoch.
    pub created_ms: u64,
    /// Names of the policies attached to it.
    pub policies: Vec<String>,
    /// Names of the things it is attached to.
    pub things: Vec<String>,
}

impl Thing {
    /// A thing with a name and nothing else.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            thing_type: None,
            attributes: BTreeMap::new(),
        }
    }
}

/// A CA certificate trusted for client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertificate {
    /// Lowercase hex SHA-256 of the DER.
    pub id: String,
    /// The certificate, PEM encoded.
    pub pem: String,
    /// Its subject, to match the issuer of device certificates.
    pub subject: String,
    /// Whether certificates it issued may be registered on first connect
    /// (auto or JITR), as AWS's `autoRegistrationStatus`.
    pub auto_registration: bool,
    /// Registration time, ms since the epoch.
    pub created_ms: u64,
}

/// A registered thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    /// Name.
    pub name: String,
    /// Thing type, if any.
    pub thing_type: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such certificate.
    #[error("certificate {0} is not registered")]
    NoCertificate(String),
    /// No such thing.
    #[error("thing {0} does not exist")]
    NoThing(String),
    /// The status cannot be set by an operator (PENDING_ACTIVATION).
    #[error("a certificate cannot be set to {0:?}")]
    BadStatus(CertStatus),
    /// A name that AWS would refuse.
    #[error("`{0}` is not a valid thing name ([a-zA-Z0-9:_-], 1 to 128)")]
    BadThingName(String),
}

/// Whether a thing name is one AWS accepts: `[a-zA-Z0-9:_-]{1,128}`.
pub fn valid_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_-".contains(c))
}

/// Why a certificate may not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not registered, and the registration mode does not add it.
    #[error("certificate is not registered")]
    Unknown,
    /// Registered but not ACTIVE.
    #[error("certificate is {0:?}")]
    NotActive(CertStatus),
}

/// What a connection may act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Certificate id; `None` for an anonymous (plaintext) client.
    pub certificate_id: Option<String>,
    /// Policies that apply.
    pub policies: Vec<String>,
    /// The thing associated with this connection, if any.
    pub thing: Option<Thing>,
}

impl Principal {
    /// A client without a certificate, with the configured anonymous policies.
    pub fn anonymous(policies: &[String]) -> Self {
        Self {
            certificate_id: None,
            policies: policies.to_vec(),
            thing: None,
        }
    }

    /// Adds the thing variables of this principal to a policy context,
    /// replacing those of any principal added before.
    pub fn add_to(&self, ctx: &mut Context) {
        ctx.remove_prefix("iot:connection.thing.");
        if let Some(t) = &self.thing {
            ctx.set("iot:Connection.Thing.ThingName", t.name.clone());
            ctx.set("iot:Connection.Thing.IsAttached", "true");
            if let Some(ty) = &t.thing_type {
                ctx.set("iot:Connection.Thing.ThingTypeName", ty.clone());
            }
            for (k, v) in &t.attributes {
                ctx.set(&format!("iot:Connection.Thing.Attributes[{k}]"), v.clone());
            }
        } else if self.certificate_id.is_some() {
            ctx.set("iot:Connection.Thing.IsAttached", "false");
        }
    }
}

/// What `admit` did besides answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Nothing new.
    Known,
    /// The certificate was registered now (auto or JITR).
    New(CertStatus),
}

#[derive(Default)]
struct State {
    certs: HashMap<String, Certificate>,
    things: HashMap<String, Thing>,
    cas: HashMap<String, CaCertificate>,
}

/// Certificates and things.
pub struct Registry {
    state: RwLock<State>,
    store: Store,
    /// Bumped whenever a status or an attachment changes, so that live
    /// connections re-check their principal.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    /// A registry holding the stored records; every CA of `cas` (the
    /// configured trust) is registered if it is not yet, with auto
    /// registration as `auto_registration` says.
    pub fn new(
        store: Store,
        records: Vec<(String, Vec<u8>)>,
        cas: Vec<ClientIdentity>,
        auto_registration: bool,
    ) -> Self {
        let mut state = State::default();
        for (key, rec) in records {
            if let Some(id) = key.strip_prefix("cert/") {
                if let Some(c) = parse_record(&key, &rec) {
                    state.certs.insert(id.to_owned(), c);
                }
            } else if let Some(id) = key.strip_prefix("cacert/") {
                if let Some(c) = parse_record(&key, &rec) {
                    state.cas.insert(id.to_owned(), c);
                }
            } else if let Some(name) = key.strip_prefix("thing/")
                && let Some(t) = parse_record(&key, &rec)
            {
                state.things.insert(name.to_owned(), t);
            }
        }
        let mut ops = Vec::new();
        // The configured trust and registration mode govern: each start
        // brings the CA records in line with them.
        for ca in cas {
            let mut changed = false;
            let entry = state
                .cas
                .entry(ca.certificate_id.clone())
                .or_insert_with(|| {
                    changed = true;
                    CaCertificate {
                        id: ca.certificate_id.clone(),
                        pem: ca.pem,
                        subject: ca.subject.rfc4514,
                        auto_registration,
                        created_ms: now_ms(),
                    }
                });
            if entry.auto_registration != auto_registration {
                entry.auto_registration = auto_registration;
                changed = true;
            }
            if changed {
                ops.push(record("cacert/", &entry.id, &*entry));
            }
        }
        if !ops.is_empty() {
            store.enqueue(ops);
        }
        Self {
            state: RwLock::new(state),
            store,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Every registered CA certificate.
    pub fn ca_certificates(&self) -> Vec<CaCertificate> {
        let mut all: Vec<CaCertificate> = self.state.read().cas.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Changes whenever a certificate's status or attachments change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Sets a certificate's status; connections using it re-check at once.
    pub fn set_status(&self, id: &str, status: CertStatus) -> Result<(), RegistryError> {
        if status == CertStatus::PendingActivation {
            return Err(RegistryError::BadStatus(status));
        }
        self.update_cert(id, |c| c.status = status)
    }

    /// Attaches a policy to a certificate.
    pub fn attach_policy(&self, id: &str, policy: &str) -> Result<(), RegistryError> {
        self.update_cert(id, |c| {
            if !c.policies.iter().any(|p| p == policy) {
                c.policies.push(policy.to_owned());
            }
        })
    }

    /// Attaches a certificate to an existing thing.
    pub fn attach_thing(&self, id: &str, thing: &str) -> Result<(), RegistryError> {
        if !self.state.read().things.contains_key(thing) {
            return Err(RegistryError::NoThing(thing.to_owned()));
        }
        self.update_cert(id, |c| {
            if !c.things.iter().any(|t| t == thing) {
                c.things.push(thing.to_owned());
            }
        })
    }

    fn update_cert(
        &self,
        id: &str,
        change: impl FnOnce(&mut Certificate),
    ) -> Result<(), RegistryError> {
        {
            let mut state = self.state.write();
            let cert = state
                .certs
                .get_mut(id)
                .ok_or_else(|| RegistryError::NoCertificate(id.to_owned()))?;
            change(cert);
            self.store.enqueue(vec![record("cert/", &cert.id, &*cert)]);
        }
        self.notify();
        Ok(())
    }

    /// Creates a thing, or updates its type and attributes.
    pub fn put_thing(
        &self,
        name: &str,
        thing_type: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> Result<(), RegistryError> {
        if !valid_thing_name(name) {
            return Err(RegistryError::BadThingName(name.to_owned()));
        }
        {
            let mut state = self.state.write();
            let thing = Thing {
                name: name.to_owned(),
                thing_type,
                attributes,
            };
            self.store.enqueue(vec![record("thing/", name, &thing)]);
            state.things.insert(name.to_owned(), thing);
        }
        self.notify();
        Ok(())
    }

    /// Every thing, by name.
    pub fn things(&self) -> Vec<Thing> {
        let mut all: Vec<Thing> = self.state.read().things.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The principal a certificate has now for `client_id`, if it may still connect.
    pub fn principal(&self, id: &str, client_id: &str) -> Result<Principal, Refusal> {
        let state = self.state.read();
        let cert = state.certs.get(id).ok_or(Refusal::Unknown)?;
        if cert.status != CertStatus::Active {
            return Err(Refusal::NotActive(cert.status));
        }
        Ok(Principal {
            certificate_id: Some(cert.id.clone()),
            policies: cert.policies.clone(),
            thing: cert
                .things
                .iter()
                .find(|t| t.as_str() == client_id)
                .and_then(|t| state.things.get(t))
                .cloned(),
        })
    }

    /// Decides whether a certificate may connect, registering it first as the
    /// mode says, and returns its principal for `client_id`.
    ///
    /// The thing associated with the connection is the attached thing named
    /// like the client id (spec/aws-iot-auth.md §1.7).
    pub fn admit(
        &self,
        identity: &ClientIdentity,
        client_id: &str,
        mode: Registration,
        provisioning: &Provisioning,
    ) -> (Result<Principal, Refusal>, Registered) {
        let mut registered = Registered::Known;
        let mut state = self.state.write();
        if !state.certs.contains_key(&identity.certificate_id) {
            let ca_allows = ca_of(&state, identity)
                .and_then(|id| state.cas.get(&id))
                .is_some_and(|ca| ca.auto_registration);
            let status = match mode {
                Registration::Registry => return (Err(Refusal::Unknown), registered),
                _ if !ca_allows => return (Err(Refusal::Unknown), registered),
                Registration::Auto => CertStatus::Active,
                Registration::Jitr => CertStatus::PendingActivation,
            };
            let mut cert = new_certificate(&state, identity, status);
            let mut ops = Vec::new();
            if mode == Registration::Auto {
                cert.policies = provisioning.policies.clone();
                if let Some(name) = provisioning_thing_name(provisioning, identity) {
                    let thing = state
                        .things
                        .entry(name.clone())
                        .or_insert_with(|| Thing::named(&name));
                    ops.push(record("thing/", &thing.name, &*thing));
                    cert.things.push(name);
                }
            }
            ops.push(record("cert/", &cert.id, &cert));
            self.store.enqueue(ops);
            state.certs.insert(cert.id.clone(), cert);
            registered = Registered::New(status);
        }
        drop(state);
        (
            self.principal(&identity.certificate_id, client_id),
            registered,
        )
    }

    /// A registered certificate.
    pub fn certificate(&self, id: &str) -> Option<Certificate> {
        self.state.read().certs.get(id).cloned()
    }

    /// Every registered certificate.
    pub fn certificates(&self) -> Vec<Certificate> {
        let mut all: Vec<Certificate> = self.state.read().certs.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Registers a certificate that is not registered yet, checked and done
    /// under one lock; false if it already was.
    pub fn register_new(&self, identity: &ClientIdentity, status: CertStatus) -> bool {
        {
            let mut state = self.state.write();
            if state.certs.contains_key(&identity.certificate_id) {
                return false;
            }
            let cert = new_certificate(&state, identity, status);
            self.store.enqueue(vec![record("cert/", &cert.id, &cert)]);
            state.certs.insert(cert.id.clone(), cert);
        }
        self.notify();
        true
    }

    /// Registers a certificate (or updates one) with the given status and
    /// policies, attached to `thing` if given (created when missing).
    pub fn register(
        &self,
        identity: &ClientIdentity,
        status: CertStatus,
        policies: Vec<String>,
        thing: Option<&str>,
    ) {
        let mut state = self.state.write();
        let mut ops = Vec::new();
        if let Some(name) = thing {
            let t = state
                .things
                .entry(name.to_owned())
                .or_insert_with(|| Thing::named(name));
            ops.push(record("thing/", &t.name, &*t));
        }
        let fresh = new_certificate(&state, identity, status);
        let cert = state
            .certs
            .entry(identity.certificate_id.clone())
            .or_insert(fresh);
        cert.status = status;
        cert.policies = policies;
        if let Some(name) = thing
            && !cert.things.iter().any(|t| t == name)
        {
            cert.things.push(name.to_owned());
        }
        ops.push(record("cert/", &cert.id, &*cert));
        self.store.enqueue(ops);
        drop(state);
        self.notify();
    }
}

/// A certificate record for a newly registered identity.
fn new_certificate(state: &State, identity: &ClientIdentity, status: CertStatus) -> Certificate {
    Certificate {
        id: identity.certificate_id.clone(),
        pem: identity.pem.clone(),
        status,
        ca_id: ca_of(state, identity),
        created_ms: now_ms(),
        policies: Vec::new(),
        things: Vec::new(),
    }
}

/// The registered CA that issued a certificate, by subject.
fn ca_of(state: &State, identity: &ClientIdentity) -> Option<String> {
    state
        .cas
        .values()
        .find(|ca| ca.subject == identity.issuer.rfc4514)
        .map(|ca| ca.id.clone())
}

/// The CA certificates in a PEM file; unreadable entries are skipped.
pub fn read_ca_file(pem_file: &std::path::Path) -> Vec<ClientIdentity> {
    let Ok(data) = std::fs::read(pem_file) else {
        return Vec::new();
    };
    rustls_pemfile::certs(&mut data.as_slice())
        .filter_map(Result::ok)
        .filter_map(|der| ClientIdentity::from_der(&der))
        .collect()
}

/// The thing name the provisioning template gives a certificate, if it resolves.
fn provisioning_thing_name(p: &Provisioning, identity: &ClientIdentity) -> Option<String> {
    let template = p.thing_name.as_deref()?;
    let mut ctx = Context::new();
    identity.add_to(&mut ctx);
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        out.push_str(ctx.get(&after[..end])?.first()?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    // A name with MQTT wildcards would leak into topic filter resources.
    valid_thing_name(&out).then_some(out)
}

fn parse_record<T: serde::de::DeserializeOwned>(key: &str, rec: &[u8]) -> Option<T> {
    serde_json::from_slice(rec)
        .map_err(|e| tracing::warn!(%key, error = %e, "unreadable registry record skipped"))
        .ok()
}

fn record<T: Serialize>(prefix: &str, key: &str, value: &T) -> Op {
    Op::PutRegistry(
        format!("{prefix}{key}"),
        serde_json::to_vec(value).unwrap_or_default(),
    )
}
