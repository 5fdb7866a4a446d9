//! Rule actions: what an action makes of a rule's output for one message
//! (a [`Job`], rendered once, then spooled), and how a job is delivered.
//!
//! A job carries everything its delivery needs, already substituted, so a
//! job spooled before a restart or a rule edit is delivered as it was made.
//! It also carries what AWS's error document reports (rule, topic, client,
//! original payload), so a job that fails later still reaches the error
//! action with its context.

pub mod file;
pub mod http;
pub mod republish;
pub mod upstream;

use crate::config::{self, RuleAction};
use crate::router::Router;
use crate::sql::eval::base64_encode;
use crate::sql::{self, Output};
use serde::{Deserialize, Serialize};

/// A compiled action.
#[derive(Debug)]
pub enum ActionKind {
    /// Publish to a topic here.
    Republish(republish::Republish),
    /// POST to a URL.
    Http(http::Http),
    /// Append to a file.
    File(file::File),
    /// Send through the bridge.
    Upstream(upstream::Upstream),
}

/// What templates are rendered against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The incoming message (never the SELECT output).
    pub msg: &'a sql::Message<'a>,
    /// The statement's SET variables.
    pub vars: &'a sql::Variables,
    /// Republishes that led to the incoming message.
    pub hops: u8,
    /// Whether the incoming message came from upstream (it never goes back).
    pub bridged: bool,
    /// The incoming message's MQTT 5 properties, for verbatim forwarding
    /// only (`[[upstream.forward]]`); `None` for a rule's output.
    pub properties: Option<&'a crate::codec::PublishProperties>,
    /// Topic limits a republished topic must meet.
    pub topic_limits: crate::topic::Limits,
    /// Largest payload a republish may carry.
    pub max_payload: usize,
}

/// One rendered delivery, as spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The rule that made it.
    pub rule: String,
    /// The topic of the incoming message.
    pub topic: String,
    /// The publisher, if a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Republishes that led to the incoming message, so that the error
    /// action's republishes stay bounded too.
    #[serde(default)]
    pub hops: u8,
    /// Whether the incoming message came from upstream: its error document
    /// does not go back up either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridged: bool,
    /// The incoming payload, base64, when the rule has an error action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub original: String,
    /// What to do.
    pub target: Target,
}

impl Job {
    /// The spool record: the job as JSON, or for the bridge's spool the
    /// message record the upstream action rendered, moved, not copied.
    pub fn into_record(self) -> Vec<u8> {
        match self.target {
            Target::Upstream(record) => record,
            _ => serde_json::to_vec(&self).unwrap_or_default(),
        }
    }
}

/// A rendered action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Publish.
    Republish(republish::Request),
    /// POST.
    Http(http::Request),
    /// Append.
    File(file::Request),
    /// For the bridge's spool: a router message record, never a job.
    #[serde(skip)]
    Upstream(Vec<u8>),
}

impl Target {
    /// AWS's name for the action in error documents.
    pub fn aws_name(&self) -> &'static str {
        match self {
            Self::Republish(_) => "RepublishAction",
            Self::Http(_) => "HttpAction",
            Self::File(_) => "FileAction",
            Self::Upstream(_) => "UpstreamAction",
        }
    }

    /// What it was addressed to.
    pub fn resource(&self) -> &str {
        match self {
            Self::Republish(r) => &r.topic,
            Self::Http(r) => &r.url,
            Self::File(r) => &r.path,
            Self::Upstream(_) => "upstream",
        }
    }
}

/// One failed action, as AWS's error document lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `RepublishAction`, `HttpAction` or `FileAction`.
    pub failed_action: &'static str,
    /// The topic, URL or path.
    pub failed_resource: String,
    /// Why.
    pub error_message: String,
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the job leaves its spool.
    Delivered,
    /// Not now (target down, busy, disk full); try again later.
    Retry(String),
    /// Never: the job goes to the error action.
    Failed(String),
}

impl ActionKind {
    /// Checks and compiles one configured action; `bridge` is `[upstream]`.
    pub fn compile(
        a: &RuleAction,
        settings: &config::Actions,
        bridge: Option<&config::Upstream>,
    ) -> Result<Self, String> {
        Ok(match a {
            RuleAction::Republish(r) => Self::Republish(republish::Republish::compile(r)?),
            RuleAction::Http(h) => {
                Self::Http(http::Http::compile(h, settings.allow_plaintext_http)?)
            }
            RuleAction::File(f) => Self::File(file::File::compile(f)?),
            RuleAction::Upstream(u) => Self::Upstream(upstream::Upstream::compile(u, bridge)?),
        })
    }

    /// AWS's name for the action in error documents.
    fn aws_name(&self) -> &'static str {
        match self {
            Self::Republish(_) => "RepublishAction",
            Self::Http(_) => "HttpAction",
            Self::File(_) => "FileAction",
            Self::Upstream(_) => "UpstreamAction",
        }
    }

    /// Renders the action for one message; `bytes` are the output's
    /// ([`Output::to_bytes`]), serialized once for all of a rule's actions.
    /// A failure names the action and its resource for the error document.
    pub fn render(
        &self,
        cx: &Context<'_>,
        output: &Output,
        bytes: &[u8],
    ) -> Result<Target, Failure> {
        let json = matches!(output, Output::Json(_));
        let rendered = match (self, output) {
            (_, Output::Invalid(why)) => Err((*why).to_owned()),
            (Self::Republish(r), _) => r.render(cx, bytes).map(Target::Republish),
            (Self::Http(h), _) => h.render(cx, bytes, json).map(Target::Http),
            (Self::File(f), _) => f.render(cx, bytes, json).map(Target::File),
            (Self::Upstream(u), _) => u.render(cx, bytes).map(Target::Upstream),
        };
        rendered.map_err(|error_message| self.failure(cx, error_message))
    }

    /// A failure of this action for the error document.
    pub fn failure(&self, cx: &Context<'_>, error_message: String) -> Failure {
        Failure {
            failed_action: self.aws_name(),
            failed_resource: match self {
                Self::Republish(r) => r.resource(cx),
                Self::Http(h) => h.resource(cx),
                Self::File(f) => f.resource(cx),
                Self::Upstream(u) => u.resource(cx),
            },
            error_message,
        }
    }
}

/// Renders a topic template for a message that is to be published, and
/// checks topic and payload against the limits of where it goes
/// (`payload_setting` names the payload limit in errors).
fn publish_topic(
    topic: &sql::Template,
    cx: &Context<'_>,
    limits: crate::topic::Limits,
    payload: usize,
    (max_payload, payload_setting): (usize, &str),
) -> Result<String, String> {
    let topic = topic.render(cx.msg, cx.vars);
    crate::topic::validate_name(&topic)
        .and_then(|()| limits.check(&topic))
        .map_err(|e| format!("topic `{topic}`: {e}"))?;
    if payload > max_payload {
        return Err(format!(
            "payload of {payload} bytes is larger than {payload_setting}"
        ));
    }
    Ok(topic)
}

/// AWS's error document (spec §3.4).
pub fn error_document(
    rule: &str,
    topic: &str,
    client_id: Option<&str>,
    original: &str,
    failures: &[Failure],
) -> serde_json::Value {
    serde_json::json!({
        "ruleName": rule,
        "topic": topic,
        "cloudwatchTraceId": crate::registry::identity::uuid_v4(),
        "clientId": client_id.unwrap_or(""),
        "base64OriginalPayload": original,
        "failures": failures,
    })
}

/// The original payload as error documents carry it.
pub fn original(payload: &[u8]) -> String {
    base64_encode(payload)
}

/// What delivering jobs needs: the router (republish), the HTTP client
/// and the file root.
#[derive(Debug)]
pub struct Deliverer {
    /// Republish target.
    pub router: std::sync::Arc<Router>,
    /// Shared HTTP client.
    pub http: reqwest::Client,
    /// File root and rotation.
    pub files: file::Files,
}

impl Deliverer {
    /// Delivers jobs that form one [`batch`], all or nothing.
    pub async fn deliver(&self, jobs: &[Job]) -> Outcome {
        match jobs.first().map(|j| &j.target) {
            None => Outcome::Delivered,
            Some(Target::Republish(r)) => republish::deliver(&self.router, r).await,
            Some(Target::Http(r)) => http::deliver(&self.http, r).await,
            Some(Target::Upstream(_)) => Outcome::Failed("the bridge delivers these".into()),
            Some(Target::File(r)) => {
                let lines = jobs
                    .iter()
                    .filter_map(|j| match &j.target {
                        Target::File(f) => Some(f.line.clone()),
                        _ => None,
                    })
                    .collect();
                self.files.deliver(r.path.clone(), lines).await
            }
        }
    }
}

/// The jobs that go out together, starting with `first`: the lines for one
/// file that follow it share a write and a flush; anything else goes alone.
pub fn batch<'a>(first: Job, rest: impl Iterator<Item = &'a [u8]>) -> Vec<Job> {
    let Target::File(f) = &first.target else {
        return vec![first];
    };
    let path = f.path.clone();
    let mut jobs = vec![first];
    for record in rest {
        match serde_json::from_slice::<Job>(record) {
            Ok(j) if matches!(&j.target, Target::File(f) if f.path == path) => jobs.push(j),
            _ => break,
        }
    }
    jobs
}
