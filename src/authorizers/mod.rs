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
//! - Authorizers come from `config.toml` (listed by the control plane, not
//!   changed through it) and from the control plane, kept in the store as
//!   registry records, as is the default's name.

pub mod request;
pub mod signing;

use crate::config::Config;
use crate::metrics::{AuthorizerOutcome, Metrics};
use crate::policy::PolicyStore;
use crate::store::{Op, Store};
use request::{Answer, AnswerError, Connection, Presented, SIGNATURE_KEY};
use serde::{Deserialize, Serialize};
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

/// One authorizer, as the control plane describes it and the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `authorizerName`.
    pub name: String,
    /// `authorizerFunctionArn`: here the endpoint's URL.
    pub endpoint: String,
    /// `tokenKeyName`.
    pub token_key_name: Option<String>,
    /// `tokenSigningPublicKeys`: names and PEM texts.
    pub keys: BTreeMap<String, String>,
    /// `signingDisabled`.
    pub signing_disabled: bool,
    /// `status` ACTIVE.
    pub active: bool,
    /// `enableCachingForHttp`.
    pub caching_for_http: bool,
    /// When it was made and last changed, ms since the epoch.
    pub created_ms: u64,
    /// ...
    pub modified_ms: u64,
}

/// An authorizer in force: its record and its keys, read.
#[derive(Debug)]
pub struct Authorizer {
    /// What it is.
    pub record: Record,
    /// Whether `config.toml` has it (the control plane does not change it).
    pub from_config: bool,
    keys: Vec<signing::PublicKey>,
}

impl Authorizer {
    /// Checks a record as AWS checks an authorizer, and reads its keys.
    pub fn new(record: Record, from_config: bool, allow_plaintext: bool) -> Result<Self, String> {
        crate::rules::actions::http::check_url(&record.endpoint, allow_plaintext).map_err(|why| {
            format!("authorizerFunctionArn: this gateway calls an HTTPS endpoint in place of a Lambda function: {why}")
        })?;
        let keys = record
            .keys
            .iter()
            .map(|(name, pem)| {
                signing::PublicKey::from_pem(pem)
                    .map_err(|e| format!("tokenSigningPublicKeys.{name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !record.signing_disabled && (record.token_key_name.is_none() || keys.is_empty()) {
            return Err(
                "with signing on, tokenKeyName and tokenSigningPublicKeys are required".into(),
            );
        }
        Ok(Self {
            record,
            from_config,
            keys,
        })
    }
}

/// Why the control plane could not make a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// No such authorizer.
    #[error("{0}")]
    NotFound(String),
    /// One of that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not valid as given.
    #[error("{0}")]
    Invalid(String),
    /// It is the default or `config.toml`'s.
    #[error("{0}")]
    Conflict(String),
    /// At AWS's quota of authorizers.
    #[error("{0}")]
    Limit(String),
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

/// Authorizers of the control plane at once, as AWS's quota.
pub const MAX_AUTHORIZERS: usize = 32;

const PREFIX: &str = "authorizer/";
const DEFAULT_KEY: &str = "authorizer-default";

/// Which authorizers there are, and the default.
#[derive(Debug, Default)]
struct State {
    by_name: BTreeMap<String, Arc<Authorizer>>,
    /// The default set through the control plane.
    default: Option<String>,
    /// `config.toml`'s default.
    config_default: Option<String>,
}

impl State {
    fn default_name(&self) -> Option<&str> {
        self.default.as_deref().or(self.config_default.as_deref())
    }
}

/// Every authorizer, and what asking them needs.
#[derive(Debug)]
pub struct Authorizers {
    state: parking_lot::RwLock<State>,
    store: Option<Store>,
    allow_plaintext: bool,
    http: reqwest::Client,
    permits: Semaphore,
    cache: parking_lot::Mutex<HashMap<(String, String), Cached>>,
    metrics: Arc<Metrics>,
}

impl Authorizers {
    /// The authorizers of `[[authorizers]]` (their keys read, their
    /// endpoints checked as HTTP actions' are) and those of the control
    /// plane among the stored registry records.
    pub fn load(
        config: &Config,
        (store, records): (Option<Store>, &[(String, Vec<u8>)]),
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let allow_plaintext = config.actions.allow_plaintext_http;
        let mut state = State::default();
        for (key, value) in records {
            if key == DEFAULT_KEY {
                state.default = serde_json::from_slice(value).ok();
                continue;
            }
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let read = serde_json::from_slice::<Record>(value)
                .map_err(|e| e.to_string())
                .and_then(|r| Authorizer::new(r, false, allow_plaintext));
            match read {
                Ok(a) => {
                    state.by_name.insert(name.to_owned(), Arc::new(a));
                }
                Err(e) => tracing::warn!(key, error = %e, "unreadable authorizer record skipped"),
            }
        }
        let now = crate::store::now_ms();
        for a in &config.authorizers {
            let at = |why: String| format!("authorizer `{}`: {why}", a.name);
            let mut keys = BTreeMap::new();
            for (name, file) in &a.token_signing_public_keys {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| at(format!("key `{name}`: {}: {e}", file.display())))?;
                keys.insert(name.clone(), text);
            }
            let record = Record {
                name: a.name.clone(),
                endpoint: a.endpoint.clone(),
                token_key_name: a.token_key_name.clone(),
                keys,
                signing_disabled: a.signing_disabled,
                active: a.active,
                caching_for_http: false,
                created_ms: now,
                modified_ms: now,
            };
            let authorizer = Authorizer::new(record, true, allow_plaintext).map_err(at)?;
            state.by_name.insert(a.name.clone(), Arc::new(authorizer));
            if a.default {
                state.config_default = Some(a.name.clone());
            }
        }
        Ok(Self {
            state: parking_lot::RwLock::new(state),
            store,
            allow_plaintext,
            http,
            permits: Semaphore::new(IN_FLIGHT),
            cache: parking_lot::Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Every authorizer, by name.
    pub fn list(&self) -> Vec<Arc<Authorizer>> {
        self.state.read().by_name.values().cloned().collect()
    }

    /// One authorizer.
    pub fn get(&self, name: &str) -> Option<Arc<Authorizer>> {
        self.state.read().by_name.get(name).cloned()
    }

    /// The default's name.
    pub fn default_name(&self) -> Option<String> {
        self.state.read().default_name().map(str::to_owned)
    }

    /// CreateAuthorizer.
    pub fn create(&self, record: Record) -> Result<(), ChangeError> {
        let authorizer =
            Authorizer::new(record, false, self.allow_plaintext).map_err(ChangeError::Invalid)?;
        let name = authorizer.record.name.clone();
        let mut state = self.state.write();
        if state.by_name.contains_key(&name) {
            return Err(ChangeError::AlreadyExists(format!(
                "Authorizer {name} already exists"
            )));
        }
        if state.by_name.values().filter(|a| !a.from_config).count() >= MAX_AUTHORIZERS {
            return Err(ChangeError::Limit(format!(
                "at most {MAX_AUTHORIZERS} authorizers"
            )));
        }
        self.put(&authorizer.record);
        state.by_name.insert(name, Arc::new(authorizer));
        Ok(())
    }

    /// UpdateAuthorizer: `change` edits a copy of the record.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut Record)) -> Result<(), ChangeError> {
        let mut state = self.state.write();
        let old = api_authorizer(&state, name)?;
        let mut record = old.record.clone();
        change(&mut record);
        record.modified_ms = crate::store::now_ms();
        let authorizer =
            Authorizer::new(record, false, self.allow_plaintext).map_err(ChangeError::Invalid)?;
        self.put(&authorizer.record);
        state.by_name.insert(name.to_owned(), Arc::new(authorizer));
        self.cache.lock().retain(|(a, _), _| a != name);
        Ok(())
    }

    /// DeleteAuthorizer: not the default.
    pub fn delete(&self, name: &str) -> Result<(), ChangeError> {
        let mut state = self.state.write();
        api_authorizer(&state, name)?;
        if state.default_name() == Some(name) {
            return Err(ChangeError::Conflict(format!(
                "Authorizer {name} is the default authorizer; clear it first"
            )));
        }
        state.by_name.remove(name);
        if let Some(store) = &self.store {
            store.enqueue(vec![Op::DelRegistry(format!("{PREFIX}{name}"))]);
        }
        self.cache.lock().retain(|(a, _), _| a != name);
        Ok(())
    }

    /// SetDefaultAuthorizer, or ClearDefaultAuthorizer with `None`.
    pub fn set_default(&self, name: Option<&str>) -> Result<(), ChangeError> {
        let mut state = self.state.write();
        match name {
            Some(n) if !state.by_name.contains_key(n) => {
                return Err(ChangeError::NotFound(format!(
                    "Authorizer {n} does not exist"
                )));
            }
            Some(n) if state.default.as_deref() == Some(n) => {
                return Err(ChangeError::AlreadyExists(format!(
                    "Authorizer {n} is already the default"
                )));
            }
            None if state.default.is_none() => {
                return Err(ChangeError::NotFound("No default authorizer is set".into()));
            }
            _ => {}
        }
        state.default = name.map(str::to_owned);
        if let Some(store) = &self.store {
            let op = match name {
                Some(n) => Op::PutRegistry(
                    DEFAULT_KEY.into(),
                    serde_json::to_vec(n).unwrap_or_default(),
                ),
                None => Op::DelRegistry(DEFAULT_KEY.into()),
            };
            store.enqueue(vec![op]);
        }
        Ok(())
    }

    fn put(&self, record: &Record) {
        if let Some(store) = &self.store {
            store.enqueue(vec![Op::PutRegistry(
                format!("{PREFIX}{}", record.name),
                serde_json::to_vec(record).unwrap_or_default(),
            )]);
        }
    }

    /// TestInvokeAuthorizer: asks the authorizer as a connection would,
    /// without the cache.
    pub async fn test_invoke(
        &self,
        name: &str,
        presented: &Presented,
        connection: &Connection,
    ) -> Result<Answer, Refusal> {
        let a = self.get(name).ok_or(Refusal::Unknown)?;
        let token = check_signature(&a, presented)?;
        self.ask(&a, connection, token).await
    }

    /// Whether a client that presented `presented` is for an authorizer:
    /// it names one, or there is a default.
    pub fn applies(&self, presented: &Presented) -> bool {
        presented.authorizer().is_some() || self.state.read().default_name().is_some()
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
        let a = {
            let state = self.state.read();
            let name = presented
                .authorizer()
                .or(state.default_name())
                .ok_or(Refusal::Unknown)?;
            state.by_name.get(name).cloned().ok_or(Refusal::Unknown)?
        };
        if !a.record.active {
            return Err(Refusal::Inactive);
        }
        let token = check_signature(&a, presented)?;
        let key = token.map(|t| (a.record.name.clone(), t.to_owned()));
        if let Some(k) = &key
            && let Some(c) = self.cache.lock().get(k)
            && c.until > Instant::now()
        {
            return Ok(c.verdict.clone());
        }
        let answer = self.ask(&a, connection, token).await?;
        let verdict = Arc::new(verdict(&a.record.name, answer));
        if let Some(k) = key {
            self.keep(k, &verdict);
        }
        Ok(verdict)
    }

    /// Sends the authorizer's endpoint the request document; its answer.
    async fn ask(
        &self,
        a: &Authorizer,
        connection: &Connection,
        token: Option<&str>,
    ) -> Result<Answer, Refusal> {
        let signed = !a.record.signing_disabled;
        let body = request::document(connection, token, signed).to_string();
        let answer = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Refusal::Failed("the gateway is shutting down".into()))?;
            crate::rules::actions::http::call_json(
                &self.http,
                &a.record.endpoint,
                body,
                (MAX_ANSWER, DEADLINE),
                "custom authorizer",
            )
            .await
            .map_err(Refusal::Failed)?
        };
        request::answer(&answer).map_err(|e| match e {
            AnswerError::NotAuthenticated => Refusal::NotAuthenticated,
            AnswerError::Invalid(_) => Refusal::Failed(e.to_string()),
        })
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

/// The token a client presented for `a`; with signing on, only if its
/// signature verifies with one of `a`'s keys.
fn check_signature<'a>(
    a: &Authorizer,
    presented: &'a Presented,
) -> Result<Option<&'a str>, Refusal> {
    let token = a
        .record
        .token_key_name
        .as_deref()
        .and_then(|k| presented.get(k));
    if a.record.signing_disabled {
        return Ok(token);
    }
    let (Some(token), Some(signature)) = (token, presented.get(SIGNATURE_KEY)) else {
        return Err(Refusal::BadSignature);
    };
    if a.keys.iter().any(|k| k.verifies(token, signature)) {
        Ok(Some(token))
    } else {
        Err(Refusal::BadSignature)
    }
}

/// An authorizer the control plane may change.
fn api_authorizer(state: &State, name: &str) -> Result<Arc<Authorizer>, ChangeError> {
    let a = state
        .by_name
        .get(name)
        .ok_or_else(|| ChangeError::NotFound(format!("Authorizer {name} does not exist")))?;
    if a.from_config {
        return Err(ChangeError::Conflict(format!(
            "Authorizer {name} is configured in config.toml; change it there"
        )));
    }
    Ok(a.clone())
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
