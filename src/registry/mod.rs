//! The registry of principals: certificates (with their status and attached
//! policies), things, and which certificate is attached to which thing.
//!
//! Kept in memory behind one lock, written through to the store (`cert/<id>`
//! and `thing/<name>` records, JSON) in the same order as it changes, and
//! read back whole at startup. A connection asks [`Registry::admit`] once,
//! at CONNECT; what it gets is a snapshot of its principal.

pub mod groups;
pub mod identity;

pub use identity::ClientIdentity;

use crate::config::{Provisioning, Registration};
use crate::policy::compile::Context;
use crate::store::{Op, Store, now_ms};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Last change of status, ms since the epoch.
    #[serde(default)]
    pub modified_ms: u64,
    /// Bumped with every change, as AWS's `customerVersion`.
    #[serde(default = "first_version")]
    pub version: u64,
    /// Names of the policies attached to it.
    pub policies: Vec<String>,
    /// Names of the things it is attached to.
    pub things: Vec<String>,
    /// Whether its one thing is attached `EXCLUSIVE_THING`: that thing is
    /// then the connection's thing whatever the client id (spec §3.4).
    #[serde(default)]
    pub exclusive: bool,
}

fn first_version() -> u64 {
    1
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
    /// AWS's `thingId`, a UUID.
    #[serde(default)]
    pub id: String,
    /// Starts at 1; every update adds one.
    #[serde(default = "first_version")]
    pub version: u64,
    /// The static thing groups it is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Thing {
    /// A new thing with a name and nothing else.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            thing_type: None,
            attributes: BTreeMap::new(),
            id: identity::uuid_v4(),
            version: 1,
            groups: Vec::new(),
        }
    }
}

/// A thing type: immutable once made, except for its deprecation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingType {
    /// Name.
    pub name: String,
    /// AWS's `thingTypeId`, a UUID.
    pub id: String,
    /// `thingTypeDescription`.
    pub description: Option<String>,
    /// `searchableAttributes`.
    pub searchable_attributes: Vec<String>,
    /// When it was deprecated, ms since the epoch; deprecated types take no new things.
    pub deprecated_ms: Option<u64>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
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
    /// Whether devices it issued may connect (AWS's ACTIVE / INACTIVE).
    #[serde(default = "yes")]
    pub active: bool,
    /// Last change, ms since the epoch.
    #[serde(default)]
    pub modified_ms: u64,
    /// Bumped with every change.
    #[serde(default = "first_version")]
    pub version: u64,
    /// Trusted through `tls.ca` rather than registered through the API:
    /// the file governs it, so the API cannot delete it.
    #[serde(default)]
    pub configured: bool,
}

fn yes() -> bool {
    true
}

/// Why a registry operation failed, in the classes AWS answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such resource (`ResourceNotFoundException`).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, differently (`ResourceAlreadyExistsException`).
    #[error("{message}")]
    AlreadyExists {
        /// What AWS says.
        message: String,
        /// The existing resource's id.
        id: String,
    },
    /// It is still in use (`DeleteConflictException`).
    #[error("{0}")]
    DeleteConflict(String),
    /// `expectedVersion` did not match (`VersionConflictException`).
    #[error("{0}")]
    VersionConflict(String),
    /// The certificate's status forbids it (`CertificateStateException`).
    #[error("{0}")]
    CertificateState(String),
    /// Not acceptable as written (`InvalidRequestException`).
    #[error("{0}")]
    Invalid(String),
    /// A per-resource limit (`LimitExceededException`).
    #[error("{0}")]
    LimitExceeded(String),
}

/// Policies one certificate may carry (AWS IoT's quota).
pub const MAX_POLICIES_PER_CERTIFICATE: usize = 10;

/// Whether a thing (or thing type) name is one AWS accepts: `[a-zA-Z0-9:_-]{1,128}`.
pub fn valid_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_-".contains(c))
}

/// Checks attribute names and values against AWS's patterns, and their
/// number against its quota (3 without a thing type, 50 with one).
pub fn check_attributes(
    attributes: &BTreeMap<String, String>,
    typed: bool,
) -> Result<(), RegistryError> {
    let name_ok = |k: &str| {
        (1..=128).contains(&k.len())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c))
    };
    let value_ok = |v: &str| {
        v.len() <= 800
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c))
    };
    if let Some((k, v)) = attributes.iter().find(|(k, v)| !name_ok(k) || !value_ok(v)) {
        return Err(RegistryError::Invalid(format!(
            "attribute `{k}` = `{v}`: names are 1 to 128 of [a-zA-Z0-9_.,@/:#-], values up to 800 of [a-zA-Z0-9_.,@/:#=[]-]"
        )));
    }
    let max = if typed { 50 } else { 3 };
    if attributes.len() > max {
        return Err(RegistryError::Invalid(format!(
            "A thing {} a thing type can have at most {max} attributes",
            if typed { "with" } else { "without" }
        )));
    }
    Ok(())
}

/// A change to a thing (UpdateThing).
#[derive(Debug, Clone, Default)]
pub struct ThingUpdate {
    /// A new type.
    pub thing_type: Option<String>,
    /// Drop the type.
    pub remove_type: bool,
    /// New attributes, and whether they merge (an empty value removes one)
    /// or replace the map.
    pub attributes: Option<(BTreeMap<String, String>, bool)>,
    /// The version the caller last saw.
    pub expected_version: Option<u64>,
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
    /// Its CA is registered INACTIVE.
    #[error("the certificate's CA is INACTIVE")]
    CaInactive,
    /// A configured certificate revocation list names it.
    #[error("the certificate is on a revocation list")]
    Listed,
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
    certs: BTreeMap<String, Certificate>,
    things: BTreeMap<String, Thing>,
    types: BTreeMap<String, ThingType>,
    groups: BTreeMap<String, groups::ThingGroup>,
    cas: BTreeMap<String, CaCertificate>,
    registration_code: String,
    /// Certificates the configured revocation lists name.
    listed: std::collections::HashSet<String>,
    /// Which registry events are published (UpdateEventConfigurations).
    events: EventConfigurations,
}

/// The event types of UpdateEventConfigurations, in AWS's order.
pub const EVENT_TYPES: [&str; 11] = [
    "THING",
    "THING_GROUP",
    "THING_TYPE",
    "THING_GROUP_MEMBERSHIP",
    "THING_GROUP_HIERARCHY",
    "THING_TYPE_ASSOCIATION",
    "JOB",
    "JOB_EXECUTION",
    "POLICY",
    "CERTIFICATE",
    "CA_CERTIFICATE",
];

/// Which registry events are published, and when that was set; every
/// type is off until enabled, as on AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventConfigurations {
    /// The enabled event types.
    pub enabled: std::collections::BTreeSet<String>,
    /// First set, ms since the epoch (0: never).
    pub created_ms: u64,
    /// Last set, ms since the epoch.
    pub modified_ms: u64,
}

/// A change to things or thing types, for the events service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A thing was created, updated or deleted (as it is after the change,
    /// or was before a deletion).
    Thing(Operation, Thing),
    /// A thing type was created, updated (deprecated or not) or deleted.
    ThingType(Operation, ThingType),
    /// A thing gained (`true`) or lost its type.
    TypeAssociation(bool, Thing, String),
    /// A certificate was registered, changed (its status, policies or
    /// things) or deleted.
    Certificate(Operation, Certificate),
    /// A thing group was created, updated or deleted.
    ThingGroup(Operation, groups::GroupView),
    /// A thing joined (`true`) or left a group.
    GroupMembership(bool, groups::ThingGroup, Thing),
    /// A group was made (`true`) or deleted below its parent: (parent, child).
    GroupHierarchy(bool, groups::ThingGroup, groups::ThingGroup),
}

pub use crate::policy::versions::Operation;

/// Registry changes waiting for the events service; one that falls this
/// far behind misses some (and counts them).
const CHANGES: usize = 1024;

/// The record that holds the event configurations.
const EVENT_CONFIGURATIONS: &str = "eventconfigurations";

/// Certificates, CAs, things and thing types.
pub struct Registry {
    state: RwLock<State>,
    store: Store,
    /// Changes to things, thing types and certificates, for registry events.
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Bumped whenever a status or an attachment changes, so that live
    /// connections re-check their principal.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever the set of trusted CAs changes, so that the TLS
    /// listeners rebuild their client verifiers.
    trust: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

const REGISTRATION_CODE: &str = "meta/registration-code";

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
            } else if let Some(name) = key.strip_prefix("thing/") {
                if let Some(t) = parse_record(&key, &rec) {
                    state.things.insert(name.to_owned(), t);
                }
            } else if let Some(name) = key.strip_prefix("thingtype/") {
                if let Some(t) = parse_record(&key, &rec) {
                    state.types.insert(name.to_owned(), t);
                }
            } else if let Some(name) = key.strip_prefix("thinggroup/") {
                if let Some(g) = parse_record(&key, &rec) {
                    state.groups.insert(name.to_owned(), g);
                }
            } else if key == REGISTRATION_CODE {
                state.registration_code = String::from_utf8_lossy(&rec).into_owned();
            } else if key == EVENT_CONFIGURATIONS
                && let Some(e) = parse_record(&key, &rec)
            {
                state.events = e;
            }
        }
        let mut ops = Vec::new();
        if state.registration_code.len() != 64 {
            use ring::rand::SecureRandom;
            let mut b = [0u8; 32];
            let _ = ring::rand::SystemRandom::new().fill(&mut b);
            state.registration_code = identity::hex(&b);
            ops.push(Op::PutRegistry(
                REGISTRATION_CODE.into(),
                state.registration_code.clone().into_bytes(),
            ));
        }
        ops.extend(configure(&mut state, cas, auto_registration));
        if !ops.is_empty() {
            store.enqueue(ops);
        }
        Self {
            state: RwLock::new(state),
            store,
            changes: tokio::sync::broadcast::channel(CHANGES).0,
            changed: tokio::sync::watch::channel(0).0,
            trust: tokio::sync::watch::channel(0).0,
        }
    }

    /// Brings the CA records in line with the configured trust (`tls.ca`,
    /// re-read when it changes) and registration mode, so that devices of a
    /// rotated-in CA are registered as the mode says without a restart.
    pub fn configure_cas(&self, cas: Vec<ClientIdentity>, auto_registration: bool) {
        let ops = configure(&mut self.state.write(), cas, auto_registration);
        if !ops.is_empty() {
            self.store.enqueue(ops);
        }
    }

    /// Changes whenever a certificate's status or attachments change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes whenever a CA is registered, deleted, activated or deactivated.
    pub fn subscribe_trust(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Every change to things, thing types and certificates from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells the events service (if it listens) what changed.
    fn announce(&self, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            let _ = self.changes.send(c);
        }
    }

    /// Which registry events are published.
    pub fn event_configurations(&self) -> EventConfigurations {
        self.state.read().events.clone()
    }

    /// Whether events of `event_type` (`THING`, ...) are published.
    pub fn event_enabled(&self, event_type: &str) -> bool {
        self.state.read().events.enabled.contains(event_type)
    }

    /// Turns event types on or off; types not named keep their setting.
    pub fn update_event_configurations(
        &self,
        changes: &BTreeMap<String, bool>,
    ) -> Result<(), RegistryError> {
        if let Some(unknown) = changes.keys().find(|k| !EVENT_TYPES.contains(&k.as_str())) {
            return Err(RegistryError::Invalid(format!(
                "`{unknown}` is not an event type ({})",
                EVENT_TYPES.join(", ")
            )));
        }
        self.write(|state| {
            let e = &mut state.events;
            for (kind, on) in changes {
                if *on {
                    e.enabled.insert(kind.clone());
                } else {
                    e.enabled.remove(kind);
                }
            }
            let now = now_ms();
            if e.created_ms == 0 {
                e.created_ms = now;
            }
            e.modified_ms = now;
            let record = serde_json::to_vec(&*e).unwrap_or_default();
            Ok((
                (),
                vec![Op::PutRegistry(EVENT_CONFIGURATIONS.into(), record)],
            ))
        })
    }

    /// Applies `change` to the state under the lock and queues the records
    /// it returns, in order, before anyone sees the next change.
    ///
    /// Live connections are told only when a record their principals are
    /// made of changed (a certificate, a thing, a CA), not for a thing type
    /// or a change that changed nothing.
    fn write<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<(T, Vec<Op>), RegistryError>,
    ) -> Result<T, RegistryError> {
        let (out, principals) = {
            let mut state = self.state.write();
            let (out, ops) = change(&mut state)?;
            let principals = ops.iter().any(|op| match op {
                Op::PutRegistry(key, _) | Op::DelRegistry(key) => ["cert/", "thing/", "cacert/"]
                    .iter()
                    .any(|p| key.starts_with(p)),
                _ => false,
            });
            if !ops.is_empty() {
                self.store.enqueue(ops);
            }
            (out, principals)
        };
        if principals {
            self.notify();
        }
        Ok(out)
    }

    // ---- CA certificates -------------------------------------------------

    /// Every registered CA certificate, by id.
    pub fn ca_certificates(&self) -> Vec<CaCertificate> {
        self.state.read().cas.values().cloned().collect()
    }

    /// One registered CA certificate.
    pub fn ca_certificate(&self, id: &str) -> Result<CaCertificate, RegistryError> {
        self.state
            .read()
            .cas
            .get(id)
            .cloned()
            .ok_or_else(|| no_ca(id))
    }

    /// The PEM of every ACTIVE CA registered through the API, which the TLS
    /// listeners trust besides `tls.ca`.
    pub fn registered_roots(&self) -> Vec<String> {
        self.state
            .read()
            .cas
            .values()
            .filter(|c| c.active && !c.configured)
            .map(|c| c.pem.clone())
            .collect()
    }

    /// AWS's registration code: 64 hex characters, the same on every call.
    pub fn registration_code(&self) -> String {
        self.state.read().registration_code.clone()
    }

    /// Registers a CA certificate (its proof of possession already checked).
    pub fn register_ca(
        &self,
        ca: &ClientIdentity,
        active: bool,
        auto_registration: bool,
    ) -> Result<CaCertificate, RegistryError> {
        let out = self.write(|state| {
            if state.cas.contains_key(&ca.certificate_id) {
                return Err(RegistryError::AlreadyExists {
                    message: format!(
                        "The CA certificate is already registered: {}",
                        ca.certificate_id
                    ),
                    id: ca.certificate_id.clone(),
                });
            }
            let mut c = new_ca(ca, auto_registration, false);
            c.active = active;
            let ops = vec![record("cacert/", &c.id, &c)];
            state.cas.insert(c.id.clone(), c.clone());
            Ok((c, ops))
        })?;
        self.trust.send_modify(|g| *g += 1);
        Ok(out)
    }

    /// Changes a CA's status and auto-registration.
    pub fn update_ca(
        &self,
        id: &str,
        active: Option<bool>,
        auto_registration: Option<bool>,
    ) -> Result<(), RegistryError> {
        self.write(|state| {
            let c = state.cas.get_mut(id).ok_or_else(|| no_ca(id))?;
            if let Some(a) = active {
                c.active = a;
            }
            if let Some(a) = auto_registration {
                c.auto_registration = a;
            }
            c.modified_ms = now_ms();
            c.version += 1;
            Ok(((), vec![record("cacert/", id, &*c)]))
        })?;
        self.trust.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Deletes an INACTIVE CA registered through the API.
    pub fn delete_ca(&self, id: &str) -> Result<(), RegistryError> {
        self.write(|state| {
            let c = state.cas.get(id).ok_or_else(|| no_ca(id))?;
            if c.configured {
                return Err(RegistryError::Invalid(format!(
                    "CA certificate {id} is trusted through tls.ca in the configuration; remove it there"
                )));
            }
            if c.active {
                return Err(RegistryError::CertificateState(format!(
                    "The CA certificate must be deactivated before deletion. Id: {id}"
                )));
            }
            state.cas.remove(id);
            Ok(((), vec![Op::DelRegistry(format!("cacert/{id}"))]))
        })?;
        self.trust.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The registered CA whose subject issued `identity`.
    pub fn issuer_of(&self, identity: &ClientIdentity) -> Option<CaCertificate> {
        let state = self.state.read();
        ca_of(&state, identity).and_then(|id| state.cas.get(&id).cloned())
    }

    // ---- certificates ----------------------------------------------------

    /// A registered certificate.
    pub fn certificate(&self, id: &str) -> Option<Certificate> {
        self.state.read().certs.get(id).cloned()
    }

    /// Every registered certificate, by id.
    pub fn certificates(&self) -> Vec<Certificate> {
        self.state.read().certs.values().cloned().collect()
    }

    /// Sets a certificate's status; connections using it re-check at once.
    /// REVOKED is final, as on AWS IoT: a stolen key must not come back.
    pub fn set_status(&self, id: &str, status: CertStatus) -> Result<(), RegistryError> {
        if status == CertStatus::PendingActivation {
            return Err(RegistryError::CertificateState(
                "A certificate cannot be set to PENDING_ACTIVATION".into(),
            ));
        }
        self.update_cert(id, |c| {
            if c.status == CertStatus::Revoked && status != CertStatus::Revoked {
                return Err(RegistryError::CertificateState(format!(
                    "Certificate {id} is REVOKED; a revoked certificate cannot change status"
                )));
            }
            c.status = status;
            Ok(())
        })
    }

    /// Deletes a certificate that is not ACTIVE and attached to no thing;
    /// attached policies refuse it too unless `force` detaches them.
    pub fn delete_certificate(&self, id: &str, force: bool) -> Result<(), RegistryError> {
        self.write(|state| {
            let c = state.certs.get(id).ok_or_else(|| no_cert(id))?;
            if c.status == CertStatus::Active {
                return Err(RegistryError::CertificateState(format!(
                    "Certificate must be deactivated (not ACTIVE) before deletion. Id: {id}"
                )));
            }
            if !c.things.is_empty() {
                return Err(RegistryError::DeleteConflict(format!(
                    "Things must be detached before deletion (arn: cert/{id})"
                )));
            }
            if !c.policies.is_empty() && !force {
                return Err(RegistryError::DeleteConflict(format!(
                    "Certificate policies must be detached before deletion (arn: cert/{id})"
                )));
            }
            if let Some(gone) = state.certs.remove(id) {
                self.announce(Some(Change::Certificate(Operation::Deleted, gone)));
            }
            Ok(((), vec![Op::DelRegistry(format!("cert/{id}"))]))
        })
    }

    /// Attaches a policy to a certificate (at most ten; again is no change).
    pub fn attach_policy(&self, id: &str, policy: &str) -> Result<(), RegistryError> {
        self.update_cert(id, |c| {
            if c.policies.iter().any(|p| p == policy) {
                return Ok(());
            }
            if c.policies.len() >= MAX_POLICIES_PER_CERTIFICATE {
                return Err(RegistryError::LimitExceeded(format!(
                    "A certificate can have at most {MAX_POLICIES_PER_CERTIFICATE} policies attached"
                )));
            }
            c.policies.push(policy.to_owned());
            Ok(())
        })
    }

    /// Detaches a policy from a certificate.
    pub fn detach_policy(&self, id: &str, policy: &str) -> Result<(), RegistryError> {
        self.update_cert(id, |c| {
            let before = c.policies.len();
            c.policies.retain(|p| p != policy);
            if c.policies.len() == before {
                return Err(RegistryError::NotFound(format!(
                    "Policy {policy} is not attached to certificate {id}"
                )));
            }
            Ok(())
        })
    }

    /// The certificates a policy is attached to.
    pub fn policy_targets(&self, policy: &str) -> Vec<String> {
        self.state
            .read()
            .certs
            .values()
            .filter(|c| c.policies.iter().any(|p| p == policy))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Attaches a certificate to an existing thing. An exclusive attachment
    /// is the certificate's only one.
    pub fn attach_thing(
        &self,
        id: &str,
        thing: &str,
        exclusive: bool,
    ) -> Result<(), RegistryError> {
        if !self.state.read().things.contains_key(thing) {
            return Err(no_thing(thing));
        }
        self.update_cert(id, |c| {
            let attached = c.things.iter().any(|t| t == thing);
            let others = c.things.len() - usize::from(attached);
            if (c.exclusive || exclusive) && others > 0 {
                return Err(RegistryError::Invalid(format!(
                    "Certificate {id} is attached to another thing{}; an EXCLUSIVE_THING attachment must be its only one",
                    if c.exclusive { " exclusively" } else { "" }
                )));
            }
            if !attached {
                c.things.push(thing.to_owned());
            }
            c.exclusive = exclusive;
            Ok(())
        })
    }

    /// Detaches a certificate from a thing (no change if it was not attached).
    pub fn detach_thing(&self, id: &str, thing: &str) -> Result<(), RegistryError> {
        if !self.state.read().things.contains_key(thing) {
            return Err(no_thing(thing));
        }
        self.update_cert(id, |c| {
            c.things.retain(|t| t != thing);
            if c.things.is_empty() {
                c.exclusive = false;
            }
            Ok(())
        })
    }

    /// The certificates attached to a thing, each with whether it is exclusive.
    pub fn thing_principals(&self, thing: &str) -> Result<Vec<(String, bool)>, RegistryError> {
        let state = self.state.read();
        if !state.things.contains_key(thing) {
            return Err(RegistryError::NotFound(format!(
                "Failed to list principals for thing {thing} because the thing does not exist in your account"
            )));
        }
        Ok(state
            .certs
            .values()
            .filter(|c| c.things.iter().any(|t| t == thing))
            .map(|c| (c.id.clone(), c.exclusive))
            .collect())
    }

    fn update_cert(
        &self,
        id: &str,
        change: impl FnOnce(&mut Certificate) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        self.write(|state| {
            let cert = state.certs.get_mut(id).ok_or_else(|| no_cert(id))?;
            let before = cert.clone();
            change(cert)?;
            if *cert == before {
                return Ok(((), Vec::new()));
            }
            cert.modified_ms = now_ms();
            cert.version += 1;
            self.announce(Some(Change::Certificate(Operation::Updated, cert.clone())));
            Ok(((), vec![record("cert/", &cert.id, &*cert)]))
        })
    }

    /// Registers a certificate that is not registered yet, checked and done
    /// under one lock.
    pub fn register_new(
        &self,
        identity: &ClientIdentity,
        status: CertStatus,
    ) -> Result<(), RegistryError> {
        self.write(|state| {
            if state.certs.contains_key(&identity.certificate_id) {
                return Err(RegistryError::AlreadyExists {
                    message: "The certificate is already provisioned or registered".into(),
                    id: identity.certificate_id.clone(),
                });
            }
            let cert = new_certificate(identity, status, ca_of(state, identity));
            let ops = vec![record("cert/", &cert.id, &cert)];
            self.announce(Some(Change::Certificate(Operation::Created, cert.clone())));
            state.certs.insert(cert.id.clone(), cert);
            Ok(((), ops))
        })
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
        let _ = self.write(|state| {
            let mut ops = Vec::new();
            if let Some(name) = thing
                && !state.things.contains_key(name)
            {
                let t = Thing::named(name);
                ops.push(record("thing/", name, &t));
                self.announce(Some(Change::Thing(Operation::Created, t.clone())));
                state.things.insert(name.to_owned(), t);
            }
            let operation = if state.certs.contains_key(&identity.certificate_id) {
                Operation::Updated
            } else {
                Operation::Created
            };
            let ca = match operation {
                Operation::Created => ca_of(state, identity),
                _ => None,
            };
            let cert = state
                .certs
                .entry(identity.certificate_id.clone())
                .or_insert_with(|| new_certificate(identity, status, ca));
            cert.status = status;
            cert.policies = policies;
            if let Some(name) = thing
                && !cert.things.iter().any(|t| t == name)
            {
                cert.things.push(name.to_owned());
            }
            ops.push(record("cert/", &cert.id, &*cert));
            self.announce(Some(Change::Certificate(operation, cert.clone())));
            Ok(((), ops))
        });
    }

    // ---- things and thing types -----------------------------------------

    /// One thing.
    pub fn thing(&self, name: &str) -> Option<Thing> {
        self.state.read().things.get(name).cloned()
    }

    /// Every thing, by name.
    pub fn things(&self) -> Vec<Thing> {
        self.state.read().things.values().cloned().collect()
    }

    /// Creates a thing; creating it again with the same type and attributes
    /// answers the existing one (CreateThing is idempotent).
    pub fn create_thing(
        &self,
        name: &str,
        thing_type: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> Result<Thing, RegistryError> {
        if !valid_thing_name(name) {
            return Err(RegistryError::Invalid(format!(
                "`{name}` is not a valid thing name ([a-zA-Z0-9:_-], 1 to 128)"
            )));
        }
        check_attributes(&attributes, thing_type.is_some())?;
        self.write(|state| {
            if let Some(ty) = &thing_type {
                usable_type(state, ty)?;
            }
            if let Some(t) = state.things.get(name) {
                return if t.thing_type == thing_type && t.attributes == attributes {
                    Ok(((t.clone(), false), Vec::new()))
                } else {
                    Err(RegistryError::AlreadyExists {
                        message: format!(
                            "Thing {name} already exists in account with different attributes"
                        ),
                        id: t.id.clone(),
                    })
                };
            }
            let mut t = Thing::named(name);
            t.thing_type = thing_type;
            t.attributes = attributes;
            let ops = vec![record("thing/", name, &t)];
            state.things.insert(name.to_owned(), t.clone());
            Ok(((t, true), ops))
        })
        .map(|(t, created)| {
            if created {
                let typed = t.thing_type.clone();
                self.announce(Some(Change::Thing(Operation::Created, t.clone())));
                self.announce(typed.map(|ty| Change::TypeAssociation(true, t.clone(), ty)));
            }
            t
        })
    }

    /// Updates a thing's type and attributes; the version goes up by one.
    pub fn update_thing(&self, name: &str, update: ThingUpdate) -> Result<(), RegistryError> {
        self.write(|state| {
            if let Some(ty) = &update.thing_type {
                usable_type(state, ty)?;
            }
            let t = state.things.get_mut(name).ok_or_else(|| no_thing(name))?;
            check_version(name, t.version, update.expected_version)?;
            let mut next = t.clone();
            if update.remove_type {
                next.thing_type = None;
            }
            if update.thing_type.is_some() {
                next.thing_type = update.thing_type;
            }
            if let Some((attributes, merge)) = update.attributes {
                if merge {
                    for (k, v) in attributes {
                        if v.is_empty() {
                            next.attributes.remove(&k);
                        } else {
                            next.attributes.insert(k, v);
                        }
                    }
                } else {
                    next.attributes = attributes;
                }
            }
            check_attributes(&next.attributes, next.thing_type.is_some())?;
            next.version += 1;
            let before = std::mem::replace(t, next.clone());
            Ok(((before, next), vec![record("thing/", name, &*t)]))
        })
        .map(|(before, after)| {
            let mut changes = vec![Change::Thing(Operation::Updated, after.clone())];
            if before.thing_type != after.thing_type {
                changes.extend(
                    before
                        .thing_type
                        .clone()
                        .map(|ty| Change::TypeAssociation(false, before.clone(), ty)),
                );
                changes.extend(
                    after
                        .thing_type
                        .clone()
                        .map(|ty| Change::TypeAssociation(true, after.clone(), ty)),
                );
            }
            self.announce(changes);
        })
    }

    /// Deletes a thing that no certificate is attached to; a missing thing
    /// is no error (AWS's documented behaviour).
    pub fn delete_thing(&self, name: &str, expected: Option<u64>) -> Result<(), RegistryError> {
        self.write(|state| {
            let Some(t) = state.things.get(name) else {
                return Ok((None, Vec::new()));
            };
            check_version(name, t.version, expected)?;
            if state
                .certs
                .values()
                .any(|c| c.things.iter().any(|t| t == name))
            {
                return Err(RegistryError::Invalid(format!(
                    "Cannot delete. Thing {name} is still attached to one or more principals"
                )));
            }
            let gone = state.things.remove(name);
            Ok((gone, vec![Op::DelRegistry(format!("thing/{name}"))]))
        })
        .map(|gone| {
            self.announce(gone.map(|t| Change::Thing(Operation::Deleted, t)));
        })
    }

    /// The things a certificate is attached to, each with whether it is exclusive.
    pub fn principal_things(&self, id: &str) -> Result<Vec<(String, bool)>, RegistryError> {
        let state = self.state.read();
        let c = state.certs.get(id).ok_or_else(|| no_cert(id))?;
        Ok(c.things.iter().map(|t| (t.clone(), c.exclusive)).collect())
    }

    /// One thing type.
    pub fn thing_type(&self, name: &str) -> Option<ThingType> {
        self.state.read().types.get(name).cloned()
    }

    /// Every thing type, by name.
    pub fn thing_types(&self) -> Vec<ThingType> {
        self.state.read().types.values().cloned().collect()
    }

    /// Creates a thing type.
    pub fn create_thing_type(
        &self,
        name: &str,
        description: Option<String>,
        searchable_attributes: Vec<String>,
    ) -> Result<ThingType, RegistryError> {
        if !valid_thing_name(name) {
            return Err(RegistryError::Invalid(format!(
                "`{name}` is not a valid thing type name ([a-zA-Z0-9:_-], 1 to 128)"
            )));
        }
        self.write(|state| {
            if let Some(t) = state.types.get(name) {
                return Err(RegistryError::AlreadyExists {
                    message: format!("Thing type {name} already exists"),
                    id: t.id.clone(),
                });
            }
            let t = ThingType {
                name: name.to_owned(),
                id: identity::uuid_v4(),
                description,
                searchable_attributes,
                deprecated_ms: None,
                created_ms: now_ms(),
            };
            let ops = vec![record("thingtype/", name, &t)];
            state.types.insert(name.to_owned(), t.clone());
            Ok((t, ops))
        })
        .inspect(|t| {
            self.announce(Some(Change::ThingType(Operation::Created, t.clone())));
        })
    }

    /// Deprecates a thing type, or undoes that.
    pub fn deprecate_thing_type(&self, name: &str, undo: bool) -> Result<(), RegistryError> {
        self.write(|state| {
            let t = state.types.get_mut(name).ok_or_else(|| no_type(name))?;
            t.deprecated_ms = if undo { None } else { Some(now_ms()) };
            Ok((t.clone(), vec![record("thingtype/", name, &*t)]))
        })
        .map(|t| {
            self.announce(Some(Change::ThingType(Operation::Updated, t)));
        })
    }

    /// Deletes a deprecated thing type that no thing has.
    pub fn delete_thing_type(&self, name: &str) -> Result<(), RegistryError> {
        self.write(|state| {
            let t = state.types.get(name).ok_or_else(|| no_type(name))?;
            if t.deprecated_ms.is_none() {
                return Err(RegistryError::Invalid(format!(
                    "Thing type {name} must be deprecated before it is deleted"
                )));
            }
            if state
                .things
                .values()
                .any(|t| t.thing_type.as_deref() == Some(name))
            {
                return Err(RegistryError::Invalid(format!(
                    "Can not delete thing type {name}: things are still associated with it"
                )));
            }
            let gone = state.types.remove(name);
            Ok((gone, vec![Op::DelRegistry(format!("thingtype/{name}"))]))
        })
        .map(|gone| {
            self.announce(gone.map(|t| Change::ThingType(Operation::Deleted, t)));
        })
    }

    // ---- connections -----------------------------------------------------

    /// Takes the configured revocation lists: the certificates they name
    /// are refused from now on, and live connections are told to look
    /// again (so theirs close), when the set changed.
    pub fn apply_revocation_lists(&self, revoked: &crate::transport::tls::Revoked) {
        let listed: std::collections::HashSet<String> = self
            .state
            .read()
            .certs
            .values()
            .filter(|c| pem::parse(&c.pem).is_ok_and(|p| revoked.lists(p.contents())))
            .map(|c| c.id.clone())
            .collect();
        let mut state = self.state.write();
        if state.listed != listed {
            state.listed = listed;
            drop(state);
            self.notify();
        }
    }

    /// The principal a certificate has now for `client_id`, if it may still connect.
    pub fn principal(&self, id: &str, client_id: &str) -> Result<Principal, Refusal> {
        let state = self.state.read();
        principal(&state, id, client_id)
    }

    /// The principal a certificate would have for `client_id` whatever its
    /// status, as TestAuthorization evaluates it; an unknown one has nothing.
    pub fn principal_for(&self, id: &str, client_id: &str) -> Principal {
        let state = self.state.read();
        match state.certs.get(id) {
            Some(cert) => principal_of(&state, cert, client_id),
            None => Principal {
                certificate_id: Some(id.to_owned()),
                policies: Vec::new(),
                thing: None,
            },
        }
    }

    /// Decides whether a certificate may connect, registering it first as the
    /// mode says, and returns its principal for `client_id`.
    ///
    /// The thing associated with the connection is the attached thing named
    /// like the client id, or the exclusively attached one (spec/aws-iot-auth.md §3.4).
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
            let status = match mode {
                Registration::Registry => return (Err(Refusal::Unknown), registered),
                Registration::Auto => CertStatus::Active,
                Registration::Jitr => CertStatus::PendingActivation,
            };
            // The issuer is found once: it takes a signature check.
            let ca = ca_of(&state, identity);
            let ca_allows = ca
                .as_ref()
                .and_then(|id| state.cas.get(id))
                .is_some_and(|ca| ca.auto_registration && ca.active);
            if !ca_allows {
                return (Err(Refusal::Unknown), registered);
            }
            let mut cert = new_certificate(identity, status, ca);
            let mut ops = Vec::new();
            if mode == Registration::Auto {
                cert.policies = provisioning.policies.clone();
                if let Some(name) = provisioning_thing_name(provisioning, identity) {
                    if !state.things.contains_key(&name) {
                        let thing = Thing::named(&name);
                        ops.push(record("thing/", &name, &thing));
                        self.announce(Some(Change::Thing(Operation::Created, thing.clone())));
                        state.things.insert(name.clone(), thing);
                    }
                    cert.things.push(name);
                }
            }
            ops.push(record("cert/", &cert.id, &cert));
            self.store.enqueue(ops);
            self.announce(Some(Change::Certificate(Operation::Created, cert.clone())));
            state.certs.insert(cert.id.clone(), cert);
            registered = Registered::New(status);
        }
        (
            principal(&state, &identity.certificate_id, client_id),
            registered,
        )
    }
}

fn principal(state: &State, id: &str, client_id: &str) -> Result<Principal, Refusal> {
    let cert = state.certs.get(id).ok_or(Refusal::Unknown)?;
    if cert.status != CertStatus::Active {
        return Err(Refusal::NotActive(cert.status));
    }
    if state.listed.contains(id) {
        return Err(Refusal::Listed);
    }
    if let Some(ca) = cert.ca_id.as_ref().and_then(|ca| state.cas.get(ca))
        && !ca.active
    {
        return Err(Refusal::CaInactive);
    }
    Ok(principal_of(state, cert, client_id))
}

/// The thing of a connection is the exclusively attached one, or the
/// attached one named like the client id (spec/aws-iot-auth.md §3.4).
fn principal_of(state: &State, cert: &Certificate, client_id: &str) -> Principal {
    let thing = if cert.exclusive {
        cert.things.first()
    } else {
        cert.things.iter().find(|t| t.as_str() == client_id)
    };
    Principal {
        certificate_id: Some(cert.id.clone()),
        policies: cert.policies.clone(),
        thing: thing.and_then(|t| state.things.get(t)).cloned(),
    }
}

/// The configured CAs as records: each registered if it is not yet, with
/// auto registration as the mode says; the records to store.
fn configure(state: &mut State, cas: Vec<ClientIdentity>, auto_registration: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    for ca in cas {
        let mut changed = false;
        let entry = state
            .cas
            .entry(ca.certificate_id.clone())
            .or_insert_with(|| {
                changed = true;
                new_ca(&ca, auto_registration, true)
            });
        if entry.auto_registration != auto_registration || !entry.configured {
            entry.auto_registration = auto_registration;
            entry.configured = true;
            changed = true;
        }
        if changed {
            ops.push(record("cacert/", &entry.id, &*entry));
        }
    }
    ops
}

fn check_version(name: &str, have: u64, expected: Option<u64>) -> Result<(), RegistryError> {
    match expected {
        Some(e) if e != have => Err(RegistryError::VersionConflict(format!(
            "The version for thing {name} does not match the expected version."
        ))),
        _ => Ok(()),
    }
}

/// A thing type that new things may have.
fn usable_type(state: &State, name: &str) -> Result<(), RegistryError> {
    match state.types.get(name) {
        None => Err(no_type(name)),
        Some(t) if t.deprecated_ms.is_some() => Err(RegistryError::Invalid(format!(
            "Can not create new thing with deprecated thing type: {name}"
        ))),
        Some(_) => Ok(()),
    }
}

fn no_cert(id: &str) -> RegistryError {
    RegistryError::NotFound(format!("Certificate {id} does not exist"))
}

fn no_ca(id: &str) -> RegistryError {
    RegistryError::NotFound(format!("CA certificate {id} does not exist"))
}

fn no_thing(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("Thing {name} cannot be found."))
}

fn no_type(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("Thing type {name} cannot be found."))
}

fn new_ca(ca: &ClientIdentity, auto_registration: bool, configured: bool) -> CaCertificate {
    let now = now_ms();
    CaCertificate {
        id: ca.certificate_id.clone(),
        pem: ca.pem.clone(),
        subject: ca.subject.rfc4514.clone(),
        auto_registration,
        created_ms: now,
        active: true,
        modified_ms: now,
        version: 1,
        configured,
    }
}

/// A certificate record for a newly registered identity.
fn new_certificate(
    identity: &ClientIdentity,
    status: CertStatus,
    ca_id: Option<String>,
) -> Certificate {
    let now = now_ms();
    Certificate {
        id: identity.certificate_id.clone(),
        pem: identity.pem.clone(),
        status,
        ca_id,
        created_ms: now,
        modified_ms: now,
        version: 1,
        policies: Vec::new(),
        things: Vec::new(),
        exclusive: false,
    }
}

/// The registered CA that issued a certificate: its subject is the
/// certificate's issuer and its key made the signature.
fn ca_of(state: &State, identity: &ClientIdentity) -> Option<String> {
    state
        .cas
        .values()
        .find(|ca| ca.subject == identity.issuer.rfc4514 && identity::issued_by(identity, &ca.pem))
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
