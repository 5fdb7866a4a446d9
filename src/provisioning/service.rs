//! The fleet provisioning service: an internal client of the router with
//! its own task, fed by the router's provisioning tap. Requests are
//! answered one after the other, each only once what it changed is durable,
//! and each answer goes to the requesting session alone: an accepted
//! CreateKeysAndCertificate carries a private key.

use super::template::{CERTIFICATE_ID, Template, TemplateError};
use super::tokens::{self, Tokens};
use super::{REQUEST_FILTERS, Request};
use crate::metrics::{Metrics, ProvisioningOutcome};
use crate::registry::{CertStatus, ClientIdentity, Registry, RegistryError, ThingUpdate};
use crate::router::{FilterIndex, Message, Origin, Router, Tapped};
use crate::store::Store;
use crate::transport::pki::Ca;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests taken from the tap at once.
const TURN: usize = 16;

/// Longest CSR accepted, as AWS's control plane allows.
const MAX_CSR: usize = 4096;

/// What the service needs besides the router.
#[derive(Debug)]
pub struct Settings {
    /// Where the CA key and certificate are, to issue certificates.
    pub ca_dir: PathBuf,
    /// The enabled templates, by name.
    pub templates: BTreeMap<String, Template>,
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
        loop {
            tap.take(&mut batch, TURN);
            if batch.is_empty() {
                tokio::select! {
                    _ = tap.offered() => continue,
                    _ = shutdown.cancelled() => {
                        // Answer what was offered before the end, so that no
                        // publisher waits for an acknowledgement forever.
                        tap.take(&mut batch, usize::MAX);
                        for t in batch.drain(..) {
                            self.handle(t).await;
                        }
                        return;
                    }
                }
            }
            for t in batch.drain(..) {
                self.handle(t).await;
            }
        }
    }

    /// Answers one request on `<request topic>/accepted` or `/rejected`,
    /// once what it changed is durable, then lets its publisher's
    /// acknowledgement go.
    async fn handle(&mut self, t: Tapped) {
        let Tapped { msg, durable, done } = t;
        let topic = msg.topic.as_str();
        self.forget_expired();
        let result = match Request::of(topic) {
            Some(Request::CreateKeys) => self.create_keys().await,
            Some(Request::FromCsr) => self.create_from_csr(&msg.payload),
            Some(Request::Register(template)) => self.register(template, &msg.payload),
            // `+` matched an empty level.
            None => Err(rejected(404, "ResourceNotFound", "a template has a name")),
        };
        let result = match result {
            Ok(body) => self.durable().await.map(|()| body),
            Err(r) => Err(r),
        };
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
        let now = Instant::now();
        let answer = Arc::new(Message::new(
            format!("{topic}/{suffix}").into(),
            body.to_string().into_bytes().into(),
            crate::codec::QoS::AtLeastOnce,
            false,
            Default::default(),
            now,
            Origin::gateway(),
        ));
        self.router.answer(&answer, msg.origin.session);
        if let Some(done) = done {
            let written = match durable {
                Some(commit) => commit.await.unwrap_or(Ok(())),
                None => Ok(()),
            };
            let _ = done.send(written);
        }
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

    /// RegisterThing: the token's certificate gets the template's thing,
    /// policies and status; the token is used up.
    fn register(&mut self, name: &str, payload: &[u8]) -> Result<Value, Rejected> {
        let template = self.settings.templates.get(name).ok_or_else(|| {
            rejected(
                404,
                "ResourceNotFound",
                format!("Template {name} does not exist"),
            )
        })?;
        let request: Value = serde_json::from_slice(payload)
            .map_err(|_| rejected(400, "InvalidPayload", "the request is not a JSON object"))?;
        let token = request["certificateOwnershipToken"]
            .as_str()
            .unwrap_or_default();
        let certificate_id = self
            .tokens
            .certificate(token, unix_secs())
            .map_err(|why| {
                rejected(
                    400,
                    "InvalidCertificateOwnershipToken",
                    match why {
                        tokens::Invalid::Empty => "Certificate ownership token cannot be empty.",
                        tokens::Invalid::Unknown => "Certificate ownership token is invalid.",
                    },
                )
            })?
            .to_owned();
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
        parameters.insert(CERTIFICATE_ID.to_owned(), certificate_id.clone());
        let plan = template.evaluate(&parameters)?;
        let registry = &self.registry;
        let thing_name = match &plan.thing {
            Some(t) if registry.thing(&t.name).is_some() => {
                registry.update_thing(
                    &t.name,
                    ThingUpdate {
                        thing_type: t.thing_type.clone(),
                        remove_type: false,
                        attributes: Some((t.attributes.clone(), false)),
                        expected_version: None,
                    },
                )?;
                Some(t.name.clone())
            }
            Some(t) => {
                registry.create_thing(&t.name, t.thing_type.clone(), t.attributes.clone())?;
                Some(t.name.clone())
            }
            None => None,
        };
        for policy in &plan.policies {
            registry.attach_policy(&certificate_id, policy)?;
        }
        if let Some(thing) = &thing_name {
            registry.attach_thing(&certificate_id, thing, false)?;
        }
        let status = if plan.active {
            CertStatus::Active
        } else {
            CertStatus::Inactive
        };
        registry.set_status(&certificate_id, status)?;
        self.tokens.redeem(token);
        Ok(json!({
            "deviceConfiguration": plan.device_configuration,
            "thingName": thing_name.unwrap_or_default(),
        }))
    }
}

/// 32 random bytes, hex: nobody guesses another device's token.
fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    crate::registry::identity::hex(&bytes)
}
