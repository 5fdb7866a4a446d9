//! The fleet provisioning service: an internal client of the router with
//! its own task, fed by the router's provisioning tap. Requests are
//! answered one after the other, each only once what it changed is durable,
//! and each answer goes to the requesting session alone: an accepted
//! CreateKeysAndCertificate carries a private key.

use super::catalog::{Catalog, CatalogError, Hook, Live};
use super::hook;
use super::template::{CERTIFICATE_ID, Override, Plan, Template, TemplateError};
use super::tokens::{self, Tokens};
use super::{REQUEST_FILTERS, Request};
use crate::audit::{Audit, Entry};
use crate::metrics::{Metrics, ProvisioningOutcome};
use crate::policy::Enforce;
use crate::policy::compile::ArnHead;
use crate::policy::versions::Versions;
use crate::registry::{CertStatus, ClientIdentity, Registry, RegistryError, ThingUpdate};
use crate::router::{FilterIndex, Message, Router, Tapped, release};
use crate::store::Store;
use crate::transport::pki::Ca;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests taken from the tap at once.
const TURN: usize = 16;

/// RegisterThing requests waiting for their template's hook at once; more
/// wait in the tap, whose bound holds their publishers back.
const HOOKS_IN_FLIGHT: usize = 64;

/// Longest CSR accepted, as AWS's control plane allows.
const MAX_CSR: usize = 4096;

/// What the service needs besides the router.
pub struct Settings {
    /// Where the CA key and certificate are, to issue certificates.
    pub ca_dir: PathBuf,
    /// The templates RegisterThing may name.
    pub catalog: Arc<Catalog>,
    /// For template ARNs.
    pub head: ArnHead,
    /// Calls the templates' pre-provisioning hooks.
    pub http: reqwest::Client,
    /// Where requests are recorded.
    pub audit: Option<Audit>,
    /// Policies, for those templates bring as documents.
    pub policies: Arc<Versions>,
    /// Puts the policies directory in force at once.
    pub enforce: Enforce,
}

/// Starts the service: the router offers it the request topics.
pub fn start(
    router: Arc<Router>,
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    settings: Settings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    router
        .provisioning_tap()
        .set_filters(Arc::new(FilterIndex::new(
            REQUEST_FILTERS.into_iter().enumerate(),
        )));
    let service = Service {
        router,
        registry,
        store,
        metrics,
        settings,
        tokens: Tokens::default(),
    };
    tracker.spawn(service.run(shutdown));
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("ca_dir", &self.ca_dir)
            .finish_non_exhaustive()
    }
}

struct Service {
    router: Arc<Router>,
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    settings: Settings,
    tokens: Tokens,
}

/// A refusal, as the `/rejected` document says it.
#[derive(Debug)]
struct Rejected {
    status: u16,
    code: &'static str,
    message: String,
}

fn rejected(status: u16, code: &'static str, message: impl Into<String>) -> Rejected {
    Rejected {
        status,
        code,
        message: message.into(),
    }
}

impl From<RegistryError> for Rejected {
    fn from(e: RegistryError) -> Self {
        let (status, code) = match e {
            RegistryError::NotFound(_) => (404, "ResourceNotFound"),
            RegistryError::AlreadyExists { .. }
            | RegistryError::DeleteConflict(_)
            | RegistryError::VersionConflict(_) => (409, "ResourceConflict"),
            _ => (400, "InvalidRequest"),
        };
        rejected(status, code, e.to_string())
    }
}

impl From<TemplateError> for Rejected {
    fn from(e: TemplateError) -> Self {
        let code = match e {
            TemplateError::Unresolved(_) | TemplateError::BadValue(_) => "InvalidParameters",
            TemplateError::Invalid(_) => "InvalidRequest",
        };
        rejected(400, code, e.to_string())
    }
}

fn unix_secs() -> u64 {
    crate::store::now_ms() / 1000
}

impl Service {
    async fn run(mut self, shutdown: CancellationToken) {
        let router = self.router.clone();
        let tap = router.provisioning_tap();
        let mut batch = Vec::with_capacity(TURN);
        let mut hooks = JoinSet::new();
        loop {
            while let Some(asked) = hooks.try_join_next() {
                self.after_hook(asked).await;
            }
            let room = HOOKS_IN_FLIGHT.saturating_sub(hooks.len());
            tap.take(&mut batch, TURN.min(room));
            if batch.is_empty() {
                tokio::select! {
                    _ = tap.offered(), if room > 0 => {}
                    Some(asked) = hooks.join_next() => self.after_hook(asked).await,
                    _ = shutdown.cancelled() => {
                        // Answer what was offered before the end, so that no
                        // device waits for an answer forever; hooks have
                        // their deadline.
                        tap.take(&mut batch, usize::MAX);
                        for t in batch.drain(..) {
                            self.handle(t, &mut hooks).await;
                        }
                        while let Some(asked) = hooks.join_next().await {
                            self.after_hook(asked).await;
                        }
                        return;
                    }
                }
                continue;
            }
            for t in batch.drain(..) {
                self.handle(t, &mut hooks).await;
            }
        }
    }

    /// Answers one request on `<request topic>/accepted` or `/rejected`,
    /// once what it changed is durable, and lets its publisher's
    /// acknowledgement go. A RegisterThing whose template has a hook is
    /// answered once the hook has (see [`Service::after_hook`]).
    async fn handle(&mut self, t: Tapped, hooks: &mut JoinSet<Asked>) {
        let Tapped { msg, durable, done } = t;
        self.forget_expired();
        let mut certificate = None;
        let result = match Request::of(msg.topic.as_str()) {
            Some(Request::CreateKeys) => self.create_keys().await,
            Some(Request::FromCsr) => self.create_from_csr(&msg.payload),
            Some(Request::Register(template)) => match self.prepare(template, &msg) {
                Ok((registration, Some(hook))) => {
                    release(durable, done).await;
                    let asked = self.ask(&msg, registration, hook);
                    hooks.spawn(asked);
                    return;
                }
                Ok((registration, None)) => {
                    certificate = Some(registration.certificate_id.clone());
                    self.register(registration)
                }
                Err(r) => Err(r),
            },
            // `+` matched an empty level.
            None => Err(rejected(404, "ResourceNotFound", "a template has a name")),
        };
        self.reply(&msg, certificate.as_deref(), result).await;
        release(durable, done).await;
    }

    /// The hook's question about one RegisterThing, as a task of its own:
    /// other devices are answered meanwhile.
    fn ask(
        &self,
        msg: &Arc<Message>,
        registration: Registration,
        hook: Hook,
    ) -> impl Future<Output = Asked> + Send + 'static {
        let client = self.settings.http.clone();
        let msg = msg.clone();
        let template_arn = self.arn("provisioningtemplate", &registration.template_name);
        let pem = self
            .registry
            .certificate(&registration.certificate_id)
            .map(|c| c.pem)
            .unwrap_or_default();
        async move {
            let verdict = hook::ask(
                &client,
                &hook,
                &hook::Asked {
                    claim_certificate_id: msg.origin.principal.as_deref().unwrap_or_default(),
                    certificate_id: &registration.certificate_id,
                    certificate_pem: &pem,
                    template_arn: &template_arn,
                    client_id: msg.origin.client_id.as_deref().unwrap_or_default(),
                    parameters: &registration.parameters,
                },
            )
            .await;
            Asked {
                msg,
                registration,
                verdict,
            }
        }
    }

    /// Provisions the device the hook allowed, with its parameter
    /// overrides, or refuses it as AWS does (403 AccessDenied).
    async fn after_hook(&mut self, joined: Result<Asked, JoinError>) {
        let asked = match joined {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "a pre-provisioning hook call was lost");
                return;
            }
        };
        let Asked {
            msg,
            mut registration,
            verdict,
        } = asked;
        let certificate = registration.certificate_id.clone();
        let result = match verdict {
            Ok(overrides) => {
                registration.parameters.extend(overrides);
                self.register(registration)
            }
            Err(why) => Err(rejected(403, "AccessDenied", why)),
        };
        self.reply(&msg, Some(&certificate), result).await;
    }

    /// Answers `msg` to its requester alone, once what it changed (for
    /// `certificate`, if the request names one) is durable, and audits it.
    async fn reply(
        &self,
        msg: &Message,
        certificate: Option<&str>,
        result: Result<Value, Rejected>,
    ) {
        let topic = msg.topic.as_str();
        let result = match result {
            Ok(body) => self.durable().await.map(|()| body),
            Err(r) => Err(r),
        };
        self.audit(msg, certificate, &result);
        let (suffix, body, outcome) = match result {
            Ok(body) => ("accepted", body, ProvisioningOutcome::Accepted),
            Err(r) => {
                crate::refusal!(
                    msg.origin.principal.as_deref().unwrap_or("gateway"),
                    "provisioning_rejected",
                    topic,
                    code = r.code,
                    why = %r.message,
                    "provisioning request rejected"
                );
                let doc = json!({
                    "statusCode": r.status,
                    "errorCode": r.code,
                    "errorMessage": r.message,
                });
                ("rejected", doc, ProvisioningOutcome::Rejected)
            }
        };
        self.metrics.provisioning_request(outcome);
        let answer =
            Message::from_gateway(format!("{topic}/{suffix}"), body.to_string().into_bytes());
        self.router.answer(&answer, msg.origin.session);
    }

    /// Writes the audit line of a request: the device, the operation, and
    /// the template, certificate and thing it named or made.
    fn audit(&self, msg: &Message, certificate: Option<&str>, result: &Result<Value, Rejected>) {
        let Some(audit) = &self.settings.audit else {
            return;
        };
        let request = Request::of(msg.topic.as_str());
        let operation = match request {
            Some(Request::CreateKeys) => "CreateKeysAndCertificate",
            Some(Request::FromCsr) => "CreateCertificateFromCsr",
            Some(Request::Register(_)) | None => "RegisterThing",
        };
        let mut resources = Vec::new();
        if let Some(Request::Register(name)) = request {
            resources.push(self.arn("provisioningtemplate", name));
        }
        let accepted = result.as_ref().ok();
        let made = accepted.and_then(|body| body["certificateId"].as_str());
        if let Some(id) = certificate.or(made) {
            resources.push(self.arn("cert", id));
        }
        if let Some(thing) = accepted
            .and_then(|body| body["thingName"].as_str())
            .filter(|t| !t.is_empty())
        {
            resources.push(self.arn("thing", thing));
        }
        let (status, error) = match result {
            Ok(_) => (200, None),
            Err(r) => (r.status, Some(r.code.to_owned())),
        };
        audit.record(Entry {
            time: crate::audit::now(),
            principal: msg
                .origin
                .principal
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            source: None,
            operation: operation.to_owned(),
            resources,
            decision: "allow",
            status,
            error,
        });
    }

    fn arn(&self, kind: &str, name: &str) -> String {
        self.settings.head.arn(kind, name)
    }

    /// Deletes the certificates whose tokens expired unredeemed, as AWS
    /// does an hour after it issued them.
    fn forget_expired(&mut self) {
        for id in self.tokens.expire(unix_secs()) {
            let pending = self
                .registry
                .certificate(&id)
                .is_some_and(|c| c.status == CertStatus::PendingActivation);
            if pending && let Err(e) = self.registry.delete_certificate(&id, true) {
                tracing::warn!(certificate_id = %id, error = %e, "an unclaimed certificate was not deleted");
            }
        }
    }

    /// Waits until every change queued so far is durable.
    async fn durable(&self) -> Result<(), Rejected> {
        self.store.barrier().await.map_err(|e| {
            tracing::error!(error = %e, "a provisioning change is not durable");
            rejected(
                500,
                "InternalFailure",
                "the change could not be made durable",
            )
        })
    }

    fn issuing_ca(&self) -> Result<Ca, Rejected> {
        Ca::load(&self.settings.ca_dir).map_err(|e| {
            tracing::error!(error = %e, "fleet provisioning has no CA key to issue certificates with");
            rejected(500, "InternalFailure", "this gateway cannot issue certificates")
        })
    }

    /// Registers an issued certificate PENDING_ACTIVATION and gives it a
    /// token: `certificateId`, `certificatePem` and
    /// `certificateOwnershipToken`.
    fn issued(&mut self, pem: &str) -> Result<Value, Rejected> {
        let der = pem::parse(pem).map_err(|e| rejected(500, "InternalFailure", e.to_string()))?;
        let identity = ClientIdentity::from_der(der.contents())
            .ok_or_else(|| rejected(500, "InternalFailure", "issued certificate does not parse"))?;
        // The token first: a certificate is registered only with one.
        let token = new_token();
        if !self
            .tokens
            .issue(token.clone(), &identity.certificate_id, unix_secs())
        {
            return Err(rejected(
                429,
                "Throttling",
                format!(
                    "{} certificate ownership tokens are waiting to be redeemed",
                    tokens::MAX_TOKENS
                ),
            ));
        }
        if let Err(e) = self
            .registry
            .register_new(&identity, CertStatus::PendingActivation)
        {
            self.tokens.redeem(&token);
            return Err(e.into());
        }
        Ok(json!({
            "certificateId": identity.certificate_id,
            "certificatePem": pem,
            "certificateOwnershipToken": token,
        }))
    }

    async fn create_keys(&mut self) -> Result<Value, Rejected> {
        let ca = self.issuing_ca()?;
        // RSA key generation takes a while; keep it off the reactor.
        let made = tokio::task::spawn_blocking(move || ca.issue_keys_and_certificate())
            .await
            .map_err(|e| rejected(500, "InternalFailure", e.to_string()))?
            .map_err(|e| rejected(500, "InternalFailure", e.to_string()))?;
        let mut body = self.issued(&made.cert)?;
        body["privateKey"] = json!(made.private_key);
        Ok(body)
    }

    fn create_from_csr(&mut self, payload: &[u8]) -> Result<Value, Rejected> {
        let request: Value = serde_json::from_slice(payload)
            .map_err(|_| rejected(400, "InvalidPayload", "the request is not a JSON object"))?;
        let Some(csr) = request["certificateSigningRequest"].as_str() else {
            return Err(rejected(
                400,
                "InvalidPayload",
                "certificateSigningRequest is required",
            ));
        };
        if csr.len() > MAX_CSR {
            return Err(rejected(
                400,
                "InvalidCsr",
                format!("certificateSigningRequest is longer than {MAX_CSR} characters"),
            ));
        }
        let pem = self.issuing_ca()?.sign_csr(csr).map_err(|e| {
            rejected(
                400,
                "InvalidCsr",
                format!("The certificate signing request is not valid: {e}"),
            )
        })?;
        self.issued(&pem)
    }

    /// Reads a RegisterThing request: the template's default version and
    /// hook, the token's certificate, and the parameters.
    fn prepare(&self, name: &str, msg: &Message) -> Result<(Registration, Option<Hook>), Rejected> {
        let Live { template, hook } = self.settings.catalog.live(name).map_err(|e| match e {
            CatalogError::NotFound(m) => rejected(404, "ResourceNotFound", m),
            other => rejected(400, "InvalidRequest", other.to_string()),
        })?;
        let request: Value = serde_json::from_slice(&msg.payload)
            .map_err(|_| rejected(400, "InvalidPayload", "the request is not a JSON object"))?;
        let token = request["certificateOwnershipToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let certificate_id = self.token_certificate(&token)?;
        let mut parameters = BTreeMap::new();
        match &request["parameters"] {
            Value::Null => {}
            Value::Object(given) => {
                for (k, v) in given {
                    let Some(v) = v.as_str() else {
                        return Err(rejected(
                            400,
                            "InvalidPayload",
                            format!("parameter {k} is not a string"),
                        ));
                    };
                    parameters.insert(k.clone(), v.to_owned());
                }
            }
            _ => {
                return Err(rejected(
                    400,
                    "InvalidPayload",
                    "parameters is not an object",
                ));
            }
        }
        let registration = Registration {
            template_name: name.to_owned(),
            template,
            token,
            certificate_id,
            parameters,
        };
        Ok((registration, hook))
    }

    /// The certificate a token is for, if it is good now.
    fn token_certificate(&self, token: &str) -> Result<String, Rejected> {
        self.tokens
            .certificate(token, unix_secs())
            .map(str::to_owned)
            .map_err(|why| {
                rejected(
                    400,
                    "InvalidCertificateOwnershipToken",
                    match why {
                        tokens::Invalid::Empty => "Certificate ownership token cannot be empty.",
                        tokens::Invalid::Unknown => "Certificate ownership token is invalid.",
                    },
                )
            })
    }

    /// RegisterThing: the token's certificate gets the template's thing,
    /// policies and status, all or nothing; the token is used up.
    fn register(&mut self, mut r: Registration) -> Result<Value, Rejected> {
        // A hook's wait may have outlived the token, or another request
        // may have used it meanwhile.
        if self.token_certificate(&r.token)? != r.certificate_id {
            return Err(rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token is invalid.",
            ));
        }
        // The certificate is the token's, whatever the device or a hook says.
        r.parameters
            .insert(CERTIFICATE_ID.to_owned(), r.certificate_id.clone());
        let plan = r.template.evaluate(&r.parameters)?;
        let mut undo = Undo::default();
        let done = self.apply(&r.certificate_id, &plan, &mut undo);
        if done.is_err() {
            undo.run(&self.registry, &self.settings.policies, &r.certificate_id);
        } else if !undo.made_policies.is_empty() {
            // In force before the device can connect with its certificate.
            (self.settings.enforce)();
        }
        let thing_name = done?;
        self.tokens.redeem(&r.token);
        Ok(json!({
            "deviceConfiguration": plan.device_configuration,
            "thingName": thing_name.unwrap_or_default(),
        }))
    }

    /// Makes what `plan` says, noting in `undo` how to take it back.
    fn apply(
        &self,
        certificate_id: &str,
        plan: &Plan,
        undo: &mut Undo,
    ) -> Result<Option<String>, Rejected> {
        let registry = &self.registry;
        let existing = plan
            .thing
            .as_ref()
            .filter(|t| registry.thing(&t.name).is_some());
        if let Some(t) = existing {
            // Refused before anything is made.
            let set_type = t.thing_type.is_some() && t.type_override == Override::Fail;
            let set_attributes =
                !t.attributes.is_empty() && t.attributes_override == Override::Fail;
            let set_groups = !t.groups.is_empty() && t.groups_override == Override::Fail;
            if set_type || set_attributes || set_groups {
                return Err(rejected(
                    409,
                    "ResourceConflict",
                    format!(
                        "Thing {} exists and the template's OverrideSettings say FAIL",
                        t.name
                    ),
                ));
            }
        }
        for policy in &plan.policies {
            if let Some(text) = &policy.document
                && self.settings.policies.get(&policy.name).is_err()
            {
                self.settings
                    .policies
                    .create(&policy.name, text)
                    .map_err(|e| rejected(400, "InvalidRequest", e.to_string()))?;
                undo.made_policies.push(policy.name.clone());
            }
            registry.attach_policy(certificate_id, &policy.name)?;
            undo.policies.push(policy.name.clone());
        }
        let Some(t) = &plan.thing else {
            registry.set_status(certificate_id, status(plan))?;
            return Ok(None);
        };
        let exists = existing.is_some();
        if !exists {
            registry.create_thing(&t.name, t.thing_type.clone(), t.attributes.clone())?;
            undo.thing = Some(t.name.clone());
        }
        registry.attach_thing(certificate_id, &t.name, false)?;
        undo.attached = Some(t.name.clone());
        let joins = !exists || matches!(t.groups_override, Override::Replace | Override::Merge);
        if joins {
            let had = registry
                .thing(&t.name)
                .map(|t| t.groups)
                .unwrap_or_default();
            for group in t.groups.iter().filter(|g| !had.contains(g)) {
                registry.add_thing_to_group(group, &t.name)?;
                undo.joined.push(group.clone());
            }
            if exists && t.groups_override == Override::Replace {
                for group in had.iter().filter(|g| !t.groups.contains(g)) {
                    registry.remove_thing_from_group(group, &t.name)?;
                    undo.left.push(group.clone());
                }
            }
        }
        // An existing thing changes last: nothing after it fails but a
        // certificate deleted meanwhile.
        if exists {
            registry.update_thing(
                &t.name,
                ThingUpdate {
                    thing_type: match t.type_override {
                        Override::Replace => t.thing_type.clone(),
                        _ => None,
                    },
                    remove_type: false,
                    attributes: match t.attributes_override {
                        Override::Replace => Some((t.attributes.clone(), false)),
                        Override::Merge => Some((t.attributes.clone(), true)),
                        Override::DoNothing | Override::Fail => None,
                    },
                    expected_version: None,
                },
            )?;
        }
        registry.set_status(certificate_id, status(plan))?;
        Ok(Some(t.name.clone()))
    }
}

fn status(plan: &Plan) -> CertStatus {
    if plan.active {
        CertStatus::Active
    } else {
        CertStatus::Inactive
    }
}

/// What a RegisterThing that failed half-way had made, to take back (and,
/// when it succeeded, whether it made policies).
#[derive(Debug, Default)]
struct Undo {
    thing: Option<String>,
    made_policies: Vec<String>,
    policies: Vec<String>,
    attached: Option<String>,
    joined: Vec<String>,
    left: Vec<String>,
}

impl Undo {
    fn run(self, registry: &Registry, policies: &Versions, certificate_id: &str) {
        let mut failed = Vec::new();
        if let Some(thing) = &self.attached {
            failed.extend(registry.detach_thing(certificate_id, thing).err());
        }
        for policy in &self.policies {
            failed.extend(registry.detach_policy(certificate_id, policy).err());
        }
        if let Some(thing) = &self.attached {
            for group in &self.joined {
                failed.extend(registry.remove_thing_from_group(group, thing).err());
            }
            for group in &self.left {
                failed.extend(registry.add_thing_to_group(group, thing).err());
            }
        }
        if let Some(thing) = &self.thing {
            failed.extend(registry.delete_thing(thing, None).err());
        }
        for policy in &self.made_policies {
            if let Err(e) = policies.delete(policy, || false) {
                tracing::warn!(certificate_id, error = %e, "a failed RegisterThing was not wholly taken back");
            }
        }
        for e in failed {
            tracing::warn!(certificate_id, error = %e, "a failed RegisterThing was not wholly taken back");
        }
    }
}

/// A RegisterThing request, read and checked.
#[derive(Debug)]
struct Registration {
    template_name: String,
    template: Template,
    token: String,
    certificate_id: String,
    parameters: BTreeMap<String, String>,
}

/// A RegisterThing and what its template's hook answered.
struct Asked {
    msg: Arc<Message>,
    registration: Registration,
    verdict: Result<BTreeMap<String, String>, String>,
}

/// 32 random bytes, hex: nobody guesses another device's token.
fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    crate::registry::identity::hex(&bytes)
}
