//! Operators of the control plane: who signs (SigV4 access keys and their
//! secrets) and what each may do (operator policies).
//!
//! Operator policies are IAM-style documents in `admin.policies_dir`, read
//! with the same grammar and decided by the same evaluator as device
//! policies, over `iot:<OperationName>` actions (`iot:UpdateCertificate`)
//! and the ARNs of `cert/`, `cacert/`, `thing/`, `thingtype/`, `policy/`
//! and `rule/`, with `aws:SourceIp` and `aws:username` as condition keys.
//! An operator without policies may do nothing; the legacy single
//! `admin.access_key_id` may do everything.

use super::sigv4;
use crate::config::Config;
use crate::policy::PolicyStore;
use crate::policy::compile::{ArnHead, Context};
use crate::policy::eval::Decision;
use crate::session::authz::Grant;
use std::net::IpAddr;
use std::sync::Arc;

/// One operator's key.
pub struct Operator {
    /// The access key id.
    pub access_key_id: String,
    secret: String,
    /// The operator policies; `None` for full access.
    policies: Option<Vec<String>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<redacted>")
            .field("policies", &self.policies)
            .finish()
    }
}

/// Every operator, and the policies that bind them.
#[derive(Debug)]
pub struct Operators {
    users: Vec<Operator>,
    /// The operator policies in force, reloaded from `admin.policies_dir`.
    pub policies: Arc<PolicyStore>,
    /// What the full-access key is granted on a connection: everything.
    everything: Arc<PolicyStore>,
    head: ArnHead,
}

/// How long AWS keeps a connection over a SigV4-signed WebSocket URL.
const WEBSOCKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The name of the full-access key's one policy on a connection.
const EVERYTHING: &str = "edgegate-full-access";

/// A store holding one policy that allows every `iot:` action.
fn everything() -> Arc<PolicyStore> {
    let text = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
    // Built in: it parses. Were it not to, the store is empty and denies.
    let documents = crate::policy::document::parse(text)
        .ok()
        .map(|d| (Arc::from(EVERYTHING), Arc::new(d)))
        .into_iter()
        .collect();
    Arc::new(PolicyStore::new(documents))
}

impl Operators {
    /// The operators the configuration names whose secrets can be read;
    /// one without a secret is left out, with a warning.
    pub fn from_config(config: &Config) -> Self {
        let mut users = Vec::new();
        if let Some(key) = &config.admin.access_key_id {
            match std::env::var(&config.admin.secret_access_key_env) {
                Ok(secret) if !secret.is_empty() => users.push(Operator {
                    access_key_id: key.clone(),
                    secret,
                    policies: None,
                }),
                _ => tracing::warn!(
                    variable = %config.admin.secret_access_key_env,
                    "admin.access_key_id is set but its secret is not: that key is off"
                ),
            }
        }
        for u in &config.admin.users {
            let secret = match (&u.secret_env, &u.secret_file) {
                (Some(var), _) => std::env::var(var).ok(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .ok()
                    .and_then(|t| t.lines().next().map(str::to_owned)),
                (None, None) => None,
            };
            match secret.filter(|s| !s.is_empty()) {
                Some(secret) => users.push(Operator {
                    access_key_id: u.access_key_id.clone(),
                    secret,
                    policies: Some(u.policies.clone()),
                }),
                None => tracing::warn!(
                    access_key_id = %u.access_key_id,
                    "the secret of this admin user cannot be read: that key is off"
                ),
            }
        }
        let dir = &config.admin.policies_dir;
        let loaded = if dir.is_dir() {
            crate::policy::load_dir(dir)
        } else {
            crate::policy::Policies::default()
        };
        for e in &loaded.errors {
            tracing::error!(problem = %e, "operator policy not loaded");
        }
        Self {
            users,
            policies: Arc::new(PolicyStore::new(loaded.documents)),
            everything: everything(),
            head: ArnHead::new(&config.aws.region, &config.aws.account_id),
        }
    }

    /// No operator at all: the in-process CLI, whose only caller is local.
    pub fn none(head: ArnHead) -> Self {
        Self {
            users: Vec::new(),
            policies: Arc::new(PolicyStore::new(Default::default())),
            everything: everything(),
            head,
        }
    }

    /// Whether any key can sign.
    pub fn any(&self) -> bool {
        !self.users.is_empty()
    }

    /// The operator whose key signed the request, if the signature holds.
    pub fn authenticate(
        &self,
        request: &sigv4::Request<'_>,
        now: i64,
        service: &'static str,
    ) -> Result<&Operator, sigv4::SigError> {
        let key = request.access_key().ok_or(sigv4::SigError::Missing)?;
        self.verified(key, service, |op, scope| {
            sigv4::verify(request, &op.access_key_id, &op.secret, now, scope)
        })
    }

    /// The operator of `key`, once `verify` holds for its secret and the
    /// gateway's scope for `service`. An unknown key and a wrong signature
    /// look the same from outside, so that key ids cannot be probed.
    fn verified(
        &self,
        key: &str,
        service: &'static str,
        verify: impl FnOnce(&Operator, sigv4::Scope<'_>) -> Result<(), sigv4::SigError>,
    ) -> Result<&Operator, sigv4::SigError> {
        let op = self
            .users
            .iter()
            .find(|u| u.access_key_id == key)
            .ok_or(sigv4::SigError::Mismatch)?;
        let scope = sigv4::Scope {
            region: &self.head.region,
            service,
        };
        match verify(op, scope) {
            Err(sigv4::SigError::UnknownKey) => Err(sigv4::SigError::Mismatch),
            Err(e) => Err(e),
            Ok(()) => Ok(op),
        }
    }

    /// The policies an operator's presigned WebSocket upgrade (service
    /// `iotdevicegateway`, as the Device SDK signs it) grants the
    /// connection: its operator policies, deciding `iot:Connect`,
    /// `iot:Publish`, `iot:Subscribe` and `iot:Receive` as IAM policies do
    /// on AWS, with `aws:username` set.
    pub fn grant(&self, request: &sigv4::Request<'_>, now: i64) -> Result<Grant, sigv4::SigError> {
        let key = sigv4::presigned_key(request.query).ok_or(sigv4::SigError::Missing)?;
        let op = self.verified(&key, "iotdevicegateway", |op, scope| {
            sigv4::verify_presigned(request, &op.access_key_id, &op.secret, now, scope)
        })?;
        let (store, policies) = match &op.policies {
            Some(names) => (self.policies.clone(), names.clone()),
            None => (self.everything.clone(), vec![EVERYTHING.to_owned()]),
        };
        Ok(Grant {
            principal: op.access_key_id.clone(),
            store,
            policies,
            vars: vec![("aws:username", op.access_key_id.clone())],
            custom: None,
            lasts: Some(WEBSOCKET_LIFETIME),
        })
    }

    /// Decides `action` (lowercase, `iot:updatecertificate`) on the resource
    /// path `prefix` + `name` (`cert/` + id; `""` + `*` for none) for an operator.
    pub fn decide(
        &self,
        op: &Operator,
        source: Option<IpAddr>,
        action: &str,
        prefix: &str,
        name: &str,
    ) -> Decision {
        let Some(names) = &op.policies else {
            return Decision::Allowed;
        };
        let mut ctx = Context::new();
        ctx.set("aws:username", op.access_key_id.clone());
        if let Some(ip) = source {
            ctx.set("aws:SourceIp", ip.to_string());
        }
        let set = self.policies.current().compile(names, &self.head, &ctx);
        set.explain_named(action, prefix, name).0
    }
}
