//! Authorization of one connection: its principal, its policy context, and
//! its compiled policy set, recompiled when the policies change.
//!
//! Every check that fails is counted in `edgegate_authz_denied_total{action}`
//! and logged once, with certificate id, client id, action and resource.

use crate::authorizers::{Asked, Verdict};
use crate::metrics::{AuthzAction, Metrics};
use crate::policy::compile::{ArnHead, Context, PackedContext};
use crate::policy::eval::{Action, DecisionCache, PolicySet, ResourceType};
use crate::policy::{PolicyStore, Snapshot};
use crate::registry::{ClientIdentity, Principal};
use std::net::IpAddr;
use std::sync::Arc;

/// What the policy context needs to know about the CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFacts<'a> {
    /// The client id; HTTPS requests have none, and `${iot:ClientId}` then
    /// resolves to nothing rather than to an empty string.
    pub client_id: Option<&'a str>,
    /// Where the client connects from, if known (`aws:SourceIp`).
    pub peer: Option<IpAddr>,
    /// Whether the session is persistent.
    pub persistent: bool,
    /// The will's topic, if any.
    pub will_topic: Option<&'a str>,
    /// The domain name the client connected to (`iot:DomainName`), when known.
    pub domain_name: Option<&'a str>,
    /// Variables a [`Grant`] brings (`aws:username`).
    pub vars: &'a [(&'static str, String)],
}

/// Policies granted to a connection by something other than a
/// certificate: an operator's SigV4 signature on a WebSocket upgrade.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who, for the operator's log: the operator's access key id.
    pub principal: String,
    /// The store its policies are read from, and recompiled from when it
    /// changes.
    pub store: Arc<PolicyStore>,
    /// The policies' names in it.
    pub policies: Vec<String>,
    /// Variables of the policy context (`aws:username`).
    pub vars: Vec<(&'static str, String)>,
    /// For a custom authorizer's grant: what to ask it again, and when.
    pub custom: Option<Box<Custom>>,
    /// How long a connection under it may last: a custom authorizer's
    /// `disconnectAfterInSeconds`, a signed WebSocket URL's 24 hours.
    pub lasts: Option<std::time::Duration>,
}

/// What a custom authorizer is asked again at each refresh.
#[derive(Debug, Clone)]
pub struct Custom {
    /// What the authorizer was asked.
    pub asked: Asked,
    /// `refreshAfterInSeconds`.
    pub refresh_after: std::time::Duration,
}

impl Grant {
    /// A custom authorizer's grant: its principal and policies.
    pub fn custom(verdict: &Verdict, asked: Asked) -> Self {
        Self {
            principal: verdict.principal_id.clone(),
            store: verdict.store.clone(),
            policies: verdict.policies.clone(),
            vars: Vec::new(),
            custom: Some(Box::new(Custom {
                asked,
                refresh_after: verdict.refresh_after,
            })),
            lasts: Some(verdict.disconnect_after),
        }
    }
}

/// The policy context of a connection, or of a request evaluated as one
/// (`edgegate policy test`, TestAuthorization): one builder, so that an
/// explanation never disagrees with an enforcement.
pub fn context(
    identity: Option<&ClientIdentity>,
    principal: &Principal,
    facts: ConnectFacts<'_>,
    head: &ArnHead,
) -> Context {
    let mut ctx = Context::new();
    if let Some(id) = identity {
        id.add_to(&mut ctx);
    }
    if let Some(id) = facts.client_id {
        ctx.set("iot:ClientId", id);
    }
    if let Some(name) = facts.domain_name {
        ctx.set("iot:DomainName", name);
    }
    if let Some(ip) = facts.peer {
        // A v4 client of a dual-stack listener is its v4 address.
        ctx.set("aws:SourceIp", ip.to_canonical().to_string());
    }
    for (name, value) in facts.vars {
        ctx.set(name, value.clone());
    }
    let mut attributes = Vec::new();
    if facts.persistent {
        attributes.push("PersistentConnect".to_owned());
    }
    if let Some(topic) = facts.will_topic {
        attributes.push("LastWill".to_owned());
        ctx.set("iot:LastWillTopic", head.arn("topic", topic));
    }
    ctx.set_all("iot:ConnectAttributes", attributes);
    principal.add_to(&mut ctx);
    ctx
}

/// A connection's authorization state.
#[derive(Debug)]
pub struct Authz {
    principal: Principal,
    /// Who a [`Grant`] was given to, for a principal without a certificate.
    grantee: Option<Arc<str>>,
    /// Where its policies come from: the device policies, or a grant's.
    store: Arc<PolicyStore>,
    ctx: PackedContext,
    snapshot: Arc<Snapshot>,
    /// Shared with every connection of the same policies and values.
    set: Arc<PolicySet>,
    cache: DecisionCache,
}

impl Authz {
    /// Builds the policy context for a connection and compiles its policies;
    /// `None` if a value in it is too long to keep (4 GiB, more than any
    /// packet or certificate holds).
    pub fn new(
        identity: Option<&ClientIdentity>,
        principal: Principal,
        facts: ConnectFacts<'_>,
        store: Arc<PolicyStore>,
        head: &ArnHead,
    ) -> Option<Self> {
        let ctx = context(identity, &principal, facts, head);
        let snapshot = store.current();
        let set = snapshot.compile(&principal.policies, head, &ctx);
        Some(Self {
            principal,
            grantee: None,
            store,
            ctx: PackedContext::pack(&ctx)?,
            snapshot,
            set,
            cache: DecisionCache::default(),
        })
    }

    /// Marks the connection's policies as granted to `who` (an operator's
    /// access key id), which then names its principal.
    pub fn granted_to(mut self, who: &str) -> Self {
        self.grantee = Some(Arc::from(who));
        self
    }

    /// The certificate id of this connection's principal.
    pub fn certificate_id(&self) -> Option<&str> {
        self.principal.certificate_id.as_deref()
    }

    /// Who this connection's principal is: its certificate id, or whom its
    /// policies were granted to (`principalIdentifier`, `principal()`).
    pub fn principal_id(&self) -> Option<&str> {
        self.certificate_id().or(self.grantee.as_deref())
    }

    /// The thing associated with this connection, if any.
    pub fn thing_name(&self) -> Option<&str> {
        self.principal.thing.as_ref().map(|t| t.name.as_str())
    }

    /// Takes a changed principal (attachments edited in the registry) and
    /// recompiles; false if its context is too long to keep.
    #[must_use]
    pub fn set_principal(&mut self, principal: Principal, head: &ArnHead) -> bool {
        if principal == self.principal {
            return true;
        }
        let mut ctx = self.ctx.unpack();
        principal.add_to(&mut ctx);
        let Some(packed) = PackedContext::pack(&ctx) else {
            return false;
        };
        self.set = self.snapshot.compile(&principal.policies, head, &ctx);
        self.ctx = packed;
        self.cache.clear();
        self.principal = principal;
        true
    }

    /// Takes a custom authorizer's refreshed answer: its policies from now on.
    pub fn regrant(&mut self, verdict: &Verdict, head: &ArnHead) {
        self.store = verdict.store.clone();
        self.principal.policies = verdict.policies.clone();
        self.snapshot = self.store.current();
        self.set = self
            .snapshot
            .compile(&self.principal.policies, head, &self.ctx.unpack());
        self.cache.clear();
    }

    /// Recompiles if the policies changed since; returns whether they did.
    pub fn refresh(&mut self, head: &ArnHead) -> bool {
        if self.store.is_current(&self.snapshot) {
            return false;
        }
        self.snapshot = self.store.current();
        self.set = self
            .snapshot
            .compile(&self.principal.policies, head, &self.ctx.unpack());
        self.cache.clear();
        true
    }

    /// Decides one request; a denial is counted and logged.
    pub fn allows(
        &mut self,
        metrics: &Metrics,
        client_id: &str,
        action: Action,
        ty: ResourceType,
        name: &str,
    ) -> bool {
        let decision = self.cache.decide(&self.set, action, ty, name);
        if decision.is_allowed() {
            return true;
        }
        metrics.denied(match action {
            Action::Connect => AuthzAction::Connect,
            Action::Publish => AuthzAction::Publish,
            Action::RetainPublish => AuthzAction::RetainPublish,
            Action::Subscribe => AuthzAction::Subscribe,
            Action::Receive => AuthzAction::Receive,
            Action::GetThingShadow => AuthzAction::GetThingShadow,
            Action::UpdateThingShadow => AuthzAction::UpdateThingShadow,
            Action::DeleteThingShadow => AuthzAction::DeleteThingShadow,
            Action::ListNamedShadowsForThing => AuthzAction::ListNamedShadowsForThing,
            Action::GetRetainedMessage => AuthzAction::GetRetainedMessage,
            Action::ListRetainedMessages => AuthzAction::ListRetainedMessages,
            Action::DescribeJobExecution => AuthzAction::DescribeJobExecution,
            Action::GetPendingJobExecutions => AuthzAction::GetPendingJobExecutions,
            Action::StartNextPendingJobExecution => AuthzAction::StartNextPendingJobExecution,
            Action::UpdateJobExecution => AuthzAction::UpdateJobExecution,
        });
        crate::refusal!(
            self.principal_id().unwrap_or(client_id),
            "denied",
            client_id,
            action = action.name(),
            resource_type = ty.prefix().trim_end_matches('/'),
            resource = name,
            decision = decision.name(),
            "denied"
        );
        false
    }
}
