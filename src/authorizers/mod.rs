//! Custom authorizers (spec aws-iot-device-services.md §5): a client
//! without a certificate presents a token, in its MQTT username or its
//! WebSocket upgrade's headers or query; an authorizer's HTTPS endpoint,
//! in place of AWS's Lambda function, is sent AWS's request document, and
//! the policy documents it answers with become the connection's policies.
//!
//! - It fails closed: an endpoint that is down, answers late (AWS's 5 s),
//!   with an error status or with anything AWS would not accept refuses
//!   the client, never admits it. With signing on, a token whose signature
//!   verifies with none of the authorizer's keys is refused before the
//!   endpoint is asked.
//! - It is bounded: at most [`IN_FLIGHT`] calls at once, and answers kept
//!   per token for their `refreshAfterInSeconds`, for at most
//!   [`MAX_CACHED`] tokens.

pub mod request;
pub mod signing;

use crate::config::Config;
use crate::metrics::{AuthorizerOutcome, Metrics};
use crate::policy::PolicyStore;
use request::{Answer, AnswerError, Connection, Presented, SIGNATURE_KEY};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Calls to authorizers in flight at once.
pub const IN_FLIGHT: usize = 64;

/// Tokens whose answers are kept.
pub const MAX_CACHED: usize = 10_000;

/// How long an endpoint has to answer, as AWS gives its Lambda function.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Longest answer read: ten policies of 2,048 characters and a little more.
const MAX_ANSWER: usize = 64 * 1024;

/// One authorizer.
#[derive(Debug)]
pub struct Authorizer {
    /// `authorizerName`.
    pub name: String,
    endpoint: String,
    token_key: Option<String>,
    keys: Vec<signing::PublicKey>,
    signing: bool,
    active: bool,
}

/// What a client presented and what its connection is, as an authorizer
/// is asked, and asked again at each refresh.
#[derive(Debug, Clone)]
pub struct Asked {
    /// Its parameters.
    pub presented: Presented,
    /// Its connection.
    pub connection: Connection,
}

/// What an authorizer granted a client.
#[derive(Debug)]
pub struct Verdict {
    /// `principalId`.
    pub principal_id: String,
    /// Its policy documents, in a store of their own.
    pub store: Arc<PolicyStore>,
    /// Their names there.
    pub policies: Vec<String>,
    /// `disconnectAfterInSeconds`.
    pub disconnect_after: Duration,
    /// `refreshAfterInSeconds`.
    pub refresh_after: Duration,
}

/// Why a client was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It named no authorizer, and none is the default; or one that does
    /// not exist.
    #[error("no such authorizer")]
    Unknown,
    /// The authorizer is INACTIVE.
    #[error("the authorizer is inactive")]
    Inactive,
    /// With signing on, no signature, or one that verifies with no key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The authorizer said `isAuthenticated: false`.
    #[error("the authorizer did not authenticate the client")]
    NotAuthenticated,
    /// The endpoint failed: down, late, an error, an answer AWS refuses.
    #[error("{0}")]
    Failed(String),
}

impl Refusal {
    /// Its outcome for the metrics.
    pub fn outcome(&self) -> AuthorizerOutcome {
        match self {
            Self::Unknown => AuthorizerOutcome::Unknown,
            Self::Inactive => AuthorizerOutcome::Inactive,
            Self::BadSignature => AuthorizerOutcome::BadSignature,
            Self::NotAuthenticated => AuthorizerOutcome::NotAuthenticated,
            Self::Failed(_) => AuthorizerOutcome::Failed,
        }
    }
}

/// An answer kept for its token.
#[derive(Debug)]
struct Cached {
    until: Instant,
    verdict: Arc<Verdict>,
}

/// Every authorizer, and what asking them needs.
#[derive(Debug)]
pub struct Authorizers {
    by_name: BTreeMap<String, Arc<Authorizer>>,
    default: Option<String>,
    http: reqwest::Client,
    permits: Semaphore,
    cache: parking_lot::Mutex<HashMap<(String, String), Cached>>,
    metrics: Arc<Metrics>,
}

impl Authorizers {
    /// The authorizers of `[[authorizers]]`, their keys read and their
    /// endpoints checked as HTTP actions' are.
    pub fn from_config(
        config: &Config,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for a in &config.authorizers {
            let at = |why: String| format!("authorizer `{}`: {why}", a.name);
            crate::rules::actions::http::check_url(
                &a.endpoint,
                config.actions.allow_plaintext_http,
            )
            .map_err(at)?;
            let mut keys = Vec::new();
            for (name, file) in &a.token_signing_public_keys {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| at(format!("key `{name}`: {}: {e}", file.display())))?;
                keys.push(
                    signing::PublicKey::from_pem(&text)
                        .map_err(|e| at(format!("key `{name}`: {e}")))?,
                );
            }
            let authorizer = Authorizer {
                name: a.name.clone(),
                endpoint: a.endpoint.clone(),
                token_key: a.token_key_name.clone(),
                keys,
                signing: !a.signing_disabled,
                active: a.active,
            };
            by_name.insert(a.name.clone(), Arc::new(authorizer));
        }
        Ok(Self {
            by_name,
            default: config
                .authorizers
                .iter()
                .find(|a| a.default)
                .map(|a| a.name.clone()),
            http,
            permits: Semaphore::new(IN_FLIGHT),
            cache: parking_lot::Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Whether a client that presented `presented` is for an authorizer:
    /// it names one, or there is a default.
    pub fn applies(&self, presented: &Presented) -> bool {
        presented.authorizer().is_some() || self.default.is_some()
    }

    /// Asks the authorizer `presented` names (or the default) about a
    /// client; its answer for the same token is reused while it lasts.
    pub async fn authorize(
        &self,
        presented: &Presented,
        connection: &Connection,
    ) -> Result<Arc<Verdict>, Refusal> {
        let decided = self.decide(presented, connection).await;
        self.metrics.authorizer_decided(match &decided {
            Ok(_) => AuthorizerOutcome::Allowed,
            Err(r) => r.outcome(),
        });
        decided
    }

    async fn decide(
        &self,
        presented: &Presented,
        connection: &Connection,
    ) -> Result<Arc<Verdict>, Refusal> {
        let name = presented
            .authorizer()
            .or(self.default.as_deref())
            .ok_or(Refusal::Unknown)?;
        let a = self.by_name.get(name).ok_or(Refusal::Unknown)?;
        if !a.active {
            return Err(Refusal::Inactive);
        }
        let token = a.token_key.as_deref().and_then(|k| presented.get(k));
        if a.signing {
            let signature = presented.get(SIGNATURE_KEY);
            let (Some(token), Some(signature)) = (token, signature) else {
                return Err(Refusal::BadSignature);
            };
            if !a.keys.iter().any(|k| k.verifies(token, signature)) {
                return Err(Refusal::BadSignature);
            }
        }
        let key = token.map(|t| (a.name.clone(), t.to_owned()));
        if let Some(k) = &key
            && let Some(c) = self.cache.lock().get(k)
            && c.until > Instant::now()
        {
            return Ok(c.verdict.clone());
        }
        let body = request::document(connection, token, a.signing).to_string();
        let answer = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Refusal::Failed("the gateway is shutting down".into()))?;
            crate::rules::actions::http::call_json(
                &self.http,
                &a.endpoint,
                body,
                (MAX_ANSWER, DEADLINE),
                "custom authorizer",
            )
            .await
            .map_err(Refusal::Failed)?
        };
        let answer = request::answer(&answer).map_err(|e| match e {
            AnswerError::NotAuthenticated => Refusal::NotAuthenticated,
            AnswerError::Invalid(_) => Refusal::Failed(e.to_string()),
        })?;
        let verdict = Arc::new(verdict(&a.name, answer));
        if let Some(k) = key {
            self.keep(k, &verdict);
        }
        Ok(verdict)
    }

    /// Keeps an answer for its refresh interval, within [`MAX_CACHED`].
    fn keep(&self, key: (String, String), verdict: &Arc<Verdict>) {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() < MAX_CACHED {
            let until = now + verdict.refresh_after;
            cache.insert(
                key,
                Cached {
                    until,
                    verdict: verdict.clone(),
                },
            );
        }
    }
}

/// The verdict of an answer: its documents in a store of their own,
/// named after the authorizer and the principal.
fn verdict(authorizer: &str, answer: Answer) -> Verdict {
    let mut documents = BTreeMap::new();
    let mut policies = Vec::new();
    for (i, d) in answer.documents.into_iter().enumerate() {
        let name = format!("{authorizer}-{}-{i}", answer.principal_id);
        documents.insert(Arc::from(name.as_str()), Arc::new(d));
        policies.push(name);
    }
    Verdict {
        principal_id: answer.principal_id,
        store: Arc::new(PolicyStore::new(documents)),
        policies,
        disconnect_after: Duration::from_secs(answer.disconnect_after),
        refresh_after: Duration::from_secs(answer.refresh_after),
    }
}
