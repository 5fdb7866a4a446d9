//! The AWS IoT control plane (`iot`, REST-JSON, spec/aws-iot-auth.md §6):
//! the registry, policies with their versions, certificates and CAs,
//! endpoints and authorization tests, in AWS's shapes.
//!
//! One entry, [`Control::handle`], serves three callers the same way: a
//! SigV4-signed operator on the admin listener, the local CLI on the Unix
//! socket, and the CLI against a stopped gateway (in process). A call is
//! routed to its operation first ([`ROUTES`]), so that the operator's
//! policies decide `iot:<Operation>` on the operation's resource before
//! anything runs, and every call, allowed or not, is written to the audit
//! log.

mod authorizers;
mod certificates;
mod events;
mod groups;
mod jobs;
mod policies;
mod provisioning;
mod rules;
mod things;

use super::aws::{AwsError, json_body, query_param, segments};
use super::data::{self, DataPlane};
use super::operators::{Operator, Operators};
use crate::audit::{Audit, Entry};
use crate::metrics::{ControlOutcome, Metrics};
use crate::policy::compile::ArnHead;
use crate::policy::versions::{VersionError, Versions};
use crate::registry::{Registry, RegistryError};
use crate::sql::eval::{base64_decode, base64_encode};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;

/// Where devices reach this gateway, for DescribeEndpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The host name devices use (the server certificate's name).
    pub host: String,
    /// The first MQTT over TLS port.
    pub mqtt_port: Option<u16>,
    /// The device HTTPS port.
    pub https_port: Option<u16>,
}

/// Everything the control plane works on.
pub struct Control {
    /// Topic rules.
    pub rules: Arc<crate::rules::book::Book>,
    /// Provisioning templates.
    pub templates: Arc<crate::provisioning::catalog::Catalog>,
    /// Jobs; only while the gateway runs.
    pub jobs: Option<Arc<crate::jobs::service::Service>>,
    /// The custom authorizers; `None` in the command line's control plane,
    /// which runs without the gateway.
    pub authorizers: Option<Arc<crate::authorizers::Authorizers>>,
    /// Certificates, CAs, things and thing types.
    pub registry: Arc<Registry>,
    /// Policies and their versions.
    pub policies: Arc<Versions>,
    /// This gateway's region and account, for ARNs.
    pub head: ArnHead,
    /// For DescribeEndpoint.
    pub endpoint: Endpoint,
    /// The `iot-data` API; only while the gateway runs.
    pub data: Option<DataPlane>,
    /// Who may sign, and their policies.
    pub operators: Arc<Operators>,
    /// Where calls are recorded; none for the in-process CLI.
    pub audit: Option<Audit>,
    /// Counts calls.
    pub metrics: Arc<Metrics>,
    /// The store every write goes to, to answer only once it is durable.
    pub store: crate::store::Store,
    /// The gateway's CA key and certificate directory, to issue certificates.
    pub ca_dir: std::path::PathBuf,
    /// Puts a policy the API wrote in force when the call returns.
    pub enforce: Option<crate::policy::Enforce>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// The local CLI: the Unix socket (owner-only) or the data directory itself.
    Local,
    /// An operator whose signature was verified, from `source`.
    Operator(&'a Operator, Option<IpAddr>),
}

impl<'a> Caller<'a> {
    fn name(&self) -> &'a str {
        match self {
            Self::Local => "local",
            Self::Operator(op, _) => &op.access_key_id,
        }
    }

    fn source(&self) -> Option<IpAddr> {
        match self {
            Self::Local => None,
            Self::Operator(_, ip) => *ip,
        }
    }
}

/// One request, as received.
#[derive(Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, still percent-encoded.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

macro_rules! operations {
    ($($name:ident),* $(,)?) => {
        /// The operations of the control plane, named as AWS names them
        /// (and as operator policies name them, after `iot:`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($name),* }

        impl Op {
            /// AWS's name for the operation.
            pub fn name(self) -> &'static str {
                match self { $(Self::$name => stringify!($name)),* }
            }

            /// Whether it changes state (AWS's reads all start so).
            pub fn writes(self) -> bool {
                !["Describe", "Get", "List", "Test"]
                    .iter()
                    .any(|read| self.name().starts_with(read))
            }
        }
    };
}

operations!(
    CreateThing,
    DescribeThing,
    UpdateThing,
    DeleteThing,
    ListThings,
    CreateThingType,
    DescribeThingType,
    ListThingTypes,
    DeprecateThingType,
    DeleteThingType,
    AttachThingPrincipal,
    DetachThingPrincipal,
    ListThingPrincipals,
    ListThingPrincipalsV2,
    ListPrincipalThings,
    ListPrincipalThingsV2,
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    DescribeCertificate,
    UpdateCertificate,
    DeleteCertificate,
    ListCertificates,
    ListCertificatesByCA,
    RegisterCertificate,
    RegisterCertificateWithoutCA,
    GetRegistrationCode,
    RegisterCACertificate,
    DescribeCACertificate,
    UpdateCACertificate,
    DeleteCACertificate,
    ListCACertificates,
    CreatePolicy,
    GetPolicy,
    DeletePolicy,
    ListPolicies,
    CreatePolicyVersion,
    ListPolicyVersions,
    GetPolicyVersion,
    SetDefaultPolicyVersion,
    DeletePolicyVersion,
    AttachPolicy,
    DetachPolicy,
    AttachPrincipalPolicy,
    DetachPrincipalPolicy,
    ListAttachedPolicies,
    ListPrincipalPolicies,
    ListTargetsForPolicy,
    GetEffectivePolicies,
    TestAuthorization,
    DescribeEndpoint,
    CreateTopicRule,
    GetTopicRule,
    ListTopicRules,
    ReplaceTopicRule,
    DeleteTopicRule,
    EnableTopicRule,
    DisableTopicRule,
    DescribeEventConfigurations,
    UpdateEventConfigurations,
    CreateProvisioningTemplate,
    DescribeProvisioningTemplate,
    ListProvisioningTemplates,
    UpdateProvisioningTemplate,
    DeleteProvisioningTemplate,
    CreateProvisioningTemplateVersion,
    DescribeProvisioningTemplateVersion,
    ListProvisioningTemplateVersions,
    DeleteProvisioningTemplateVersion,
    CreateAuthorizer,
    DescribeAuthorizer,
    ListAuthorizers,
    UpdateAuthorizer,
    DeleteAuthorizer,
    SetDefaultAuthorizer,
    DescribeDefaultAuthorizer,
    ClearDefaultAuthorizer,
    TestInvokeAuthorizer,
    CreateThingGroup,
    DescribeThingGroup,
    UpdateThingGroup,
    DeleteThingGroup,
    ListThingGroups,
    AddThingToThingGroup,
    RemoveThingFromThingGroup,
    UpdateThingGroupsForThing,
    ListThingsInThingGroup,
    ListThingGroupsForThing,
    CreateJob,
    DescribeJob,
    ListJobs,
    UpdateJob,
    CancelJob,
    DeleteJob,
    GetJobDocument,
    ListJobExecutionsForJob,
    ListJobExecutionsForThing,
    DescribeJobExecution,
    CancelJobExecution,
    DeleteJobExecution,
    AssociateTargetsWithJob,
);

/// Method, path pattern (`{}` is one label), operation, and the kind of
/// resource the first label names (`""`: the operation has no resource of
/// its own, so operator policies must allow it on `*`).
pub const ROUTES: &[(&str, &str, Op, &str)] = &[
    ("GET", "things", Op::ListThings, ""),
    ("POST", "things/{}", Op::CreateThing, "thing"),
    ("GET", "things/{}", Op::DescribeThing, "thing"),
    ("PATCH", "things/{}", Op::UpdateThing, "thing"),
    ("DELETE", "things/{}", Op::DeleteThing, "thing"),
    ("GET", "thing-types", Op::ListThingTypes, ""),
    ("GET", "thing-groups", Op::ListThingGroups, ""),
    (
        "PUT",
        "thing-groups/addThingToThingGroup",
        Op::AddThingToThingGroup,
        "",
    ),
    (
        "PUT",
        "thing-groups/removeThingFromThingGroup",
        Op::RemoveThingFromThingGroup,
        "",
    ),
    (
        "PUT",
        "thing-groups/updateThingGroupsForThing",
        Op::UpdateThingGroupsForThing,
        "",
    ),
    (
        "POST",
        "thing-groups/{}",
        Op::CreateThingGroup,
        "thinggroup",
    ),
    (
        "GET",
        "thing-groups/{}",
        Op::DescribeThingGroup,
        "thinggroup",
    ),
    (
        "PATCH",
        "thing-groups/{}",
        Op::UpdateThingGroup,
        "thinggroup",
    ),
    (
        "DELETE",
        "thing-groups/{}",
        Op::DeleteThingGroup,
        "thinggroup",
    ),
    (
        "GET",
        "thing-groups/{}/things",
        Op::ListThingsInThingGroup,
        "thinggroup",
    ),
    (
        "GET",
        "things/{}/thing-groups",
        Op::ListThingGroupsForThing,
        "thing",
    ),
    ("GET", "jobs", Op::ListJobs, ""),
    ("PUT", "jobs/{}", Op::CreateJob, "job"),
    ("GET", "jobs/{}", Op::DescribeJob, "job"),
    ("PATCH", "jobs/{}", Op::UpdateJob, "job"),
    ("DELETE", "jobs/{}", Op::DeleteJob, "job"),
    ("PUT", "jobs/{}/cancel", Op::CancelJob, "job"),
    (
        "POST",
        "jobs/{}/targets",
        Op::AssociateTargetsWithJob,
        "job",
    ),
    ("GET", "jobs/{}/job-document", Op::GetJobDocument, "job"),
    ("GET", "jobs/{}/things", Op::ListJobExecutionsForJob, "job"),
    (
        "GET",
        "things/{}/jobs",
        Op::ListJobExecutionsForThing,
        "thing",
    ),
    (
        "GET",
        "things/{}/jobs/{}",
        Op::DescribeJobExecution,
        "thing",
    ),
    (
        "PUT",
        "things/{}/jobs/{}/cancel",
        Op::CancelJobExecution,
        "thing",
    ),
    (
        "DELETE",
        "things/{}/jobs/{}/executionNumber/{}",
        Op::DeleteJobExecution,
        "thing",
    ),
    ("POST", "thing-types/{}", Op::CreateThingType, "thingtype"),
    ("GET", "thing-types/{}", Op::DescribeThingType, "thingtype"),
    (
        "POST",
        "thing-types/{}/deprecate",
        Op::DeprecateThingType,
        "thingtype",
    ),
    ("DELETE", "thing-types/{}", Op::DeleteThingType, "thingtype"),
    (
        "PUT",
        "things/{}/principals",
        Op::AttachThingPrincipal,
        "thing",
    ),
    (
        "DELETE",
        "things/{}/principals",
        Op::DetachThingPrincipal,
        "thing",
    ),
    (
        "GET",
        "things/{}/principals",
        Op::ListThingPrincipals,
        "thing",
    ),
    (
        "GET",
        "things/{}/principals-v2",
        Op::ListThingPrincipalsV2,
        "thing",
    ),
    ("GET", "principals/things", Op::ListPrincipalThings, ""),
    ("GET", "principals/things-v2", Op::ListPrincipalThingsV2, ""),
    (
        "POST",
        "keys-and-certificate",
        Op::CreateKeysAndCertificate,
        "",
    ),
    ("POST", "certificates", Op::CreateCertificateFromCsr, ""),
    ("GET", "certificates", Op::ListCertificates, ""),
    ("GET", "certificates/{}", Op::DescribeCertificate, "cert"),
    ("PUT", "certificates/{}", Op::UpdateCertificate, "cert"),
    ("DELETE", "certificates/{}", Op::DeleteCertificate, "cert"),
    ("GET", "certificates-by-ca/{}", Op::ListCertificatesByCA, ""),
    ("POST", "certificate/register", Op::RegisterCertificate, ""),
    (
        "POST",
        "certificate/register-no-ca",
        Op::RegisterCertificateWithoutCA,
        "",
    ),
    ("GET", "registrationcode", Op::GetRegistrationCode, ""),
    ("POST", "cacertificate", Op::RegisterCACertificate, ""),
    ("GET", "cacertificates", Op::ListCACertificates, ""),
    (
        "GET",
        "cacertificate/{}",
        Op::DescribeCACertificate,
        "cacert",
    ),
    ("PUT", "cacertificate/{}", Op::UpdateCACertificate, "cacert"),
    (
        "DELETE",
        "cacertificate/{}",
        Op::DeleteCACertificate,
        "cacert",
    ),
    ("GET", "policies", Op::ListPolicies, ""),
    ("POST", "policies/{}", Op::CreatePolicy, "policy"),
    ("GET", "policies/{}", Op::GetPolicy, "policy"),
    ("DELETE", "policies/{}", Op::DeletePolicy, "policy"),
    (
        "POST",
        "policies/{}/version",
        Op::CreatePolicyVersion,
        "policy",
    ),
    (
        "GET",
        "policies/{}/version",
        Op::ListPolicyVersions,
        "policy",
    ),
    (
        "GET",
        "policies/{}/version/{}",
        Op::GetPolicyVersion,
        "policy",
    ),
    (
        "PATCH",
        "policies/{}/version/{}",
        Op::SetDefaultPolicyVersion,
        "policy",
    ),
    (
        "DELETE",
        "policies/{}/version/{}",
        Op::DeletePolicyVersion,
        "policy",
    ),
    ("PUT", "target-policies/{}", Op::AttachPolicy, "policy"),
    ("POST", "target-policies/{}", Op::DetachPolicy, "policy"),
    (
        "PUT",
        "principal-policies/{}",
        Op::AttachPrincipalPolicy,
        "policy",
    ),
    (
        "DELETE",
        "principal-policies/{}",
        Op::DetachPrincipalPolicy,
        "policy",
    ),
    ("GET", "principal-policies", Op::ListPrincipalPolicies, ""),
    ("POST", "attached-policies/{}", Op::ListAttachedPolicies, ""),
    (
        "POST",
        "policy-targets/{}",
        Op::ListTargetsForPolicy,
        "policy",
    ),
    ("POST", "effective-policies", Op::GetEffectivePolicies, ""),
    ("POST", "test-authorization", Op::TestAuthorization, ""),
    ("GET", "endpoint", Op::DescribeEndpoint, ""),
    ("GET", "rules", Op::ListTopicRules, ""),
    ("POST", "rules/{}", Op::CreateTopicRule, "rule"),
    ("GET", "rules/{}", Op::GetTopicRule, "rule"),
    ("PATCH", "rules/{}", Op::ReplaceTopicRule, "rule"),
    ("DELETE", "rules/{}", Op::DeleteTopicRule, "rule"),
    ("POST", "rules/{}/enable", Op::EnableTopicRule, "rule"),
    ("POST", "rules/{}/disable", Op::DisableTopicRule, "rule"),
    (
        "GET",
        "event-configurations",
        Op::DescribeEventConfigurations,
        "",
    ),
    (
        "PATCH",
        "event-configurations",
        Op::UpdateEventConfigurations,
        "",
    ),
    (
        "POST",
        "provisioning-templates",
        Op::CreateProvisioningTemplate,
        "",
    ),
    (
        "GET",
        "provisioning-templates",
        Op::ListProvisioningTemplates,
        "",
    ),
    (
        "GET",
        "provisioning-templates/{}",
        Op::DescribeProvisioningTemplate,
        "provisioningtemplate",
    ),
    (
        "PATCH",
        "provisioning-templates/{}",
        Op::UpdateProvisioningTemplate,
        "provisioningtemplate",
    ),
    (
        "DELETE",
        "provisioning-templates/{}",
        Op::DeleteProvisioningTemplate,
        "provisioningtemplate",
    ),
    (
        "POST",
        "provisioning-templates/{}/versions",
        Op::CreateProvisioningTemplateVersion,
        "provisioningtemplate",
    ),
    (
        "GET",
        "provisioning-templates/{}/versions",
        Op::ListProvisioningTemplateVersions,
        "provisioningtemplate",
    ),
    (
        "GET",
        "provisioning-templates/{}/versions/{}",
        Op::DescribeProvisioningTemplateVersion,
        "provisioningtemplate",
    ),
    (
        "DELETE",
        "provisioning-templates/{}/versions/{}",
        Op::DeleteProvisioningTemplateVersion,
        "provisioningtemplate",
    ),
    ("POST", "authorizer/{}", Op::CreateAuthorizer, "authorizer"),
    ("GET", "authorizer/{}", Op::DescribeAuthorizer, "authorizer"),
    ("GET", "authorizers", Op::ListAuthorizers, "authorizer"),
    ("PUT", "authorizer/{}", Op::UpdateAuthorizer, "authorizer"),
    (
        "DELETE",
        "authorizer/{}",
        Op::DeleteAuthorizer,
        "authorizer",
    ),
    (
        "POST",
        "default-authorizer",
        Op::SetDefaultAuthorizer,
        "authorizer",
    ),
    (
        "GET",
        "default-authorizer",
        Op::DescribeDefaultAuthorizer,
        "authorizer",
    ),
    (
        "DELETE",
        "default-authorizer",
        Op::ClearDefaultAuthorizer,
        "authorizer",
    ),
    (
        "POST",
        "authorizer/{}/test",
        Op::TestInvokeAuthorizer,
        "authorizer",
    ),
];

/// Whether a request is for the control plane (else the iot-data API).
pub fn is_control_plane(method: &str, path: &str) -> bool {
    route(method, &segments(path)).is_some()
}

/// The operation a method and path name, with the path's labels.
pub fn route(method: &str, segments: &[String]) -> Option<(Op, &'static str, Vec<String>)> {
    ROUTES.iter().find_map(|(m, pattern, op, kind)| {
        if *m != method {
            return None;
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut labels = Vec::new();
        for (p, s) in parts.iter().zip(segments) {
            if *p == "{}" {
                labels.push(s.clone());
            } else if p != s {
                return None;
            }
        }
        Some((*op, *kind, labels))
    })
}

/// One routed call, for the operations to read.
pub(crate) struct Call<'a> {
    labels: Vec<String>,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

impl Call<'_> {
    /// The `i`th path label.
    fn label(&self, i: usize) -> &str {
        self.labels.get(i).map_or("", String::as_str)
    }

    fn query(&self, name: &str) -> Option<String> {
        query_param(self.query, name)
    }

    /// A boolean query flag (`true`/`false`); absent is false.
    fn flag(&self, name: &str) -> Result<bool, AwsError> {
        match self.query(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(AwsError::invalid_request(format!(
                "{name}: `{v}` is not true or false"
            ))),
        }
    }

    /// A numeric query parameter, if given.
    fn number(&self, name: &str) -> Result<Option<u64>, AwsError> {
        self.query(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| AwsError::invalid_request(format!("{name} must be a number")))
            })
            .transpose()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; an empty body is an empty object (botocore sends
    /// none when no member is set).
    fn json(&self) -> Result<Value, AwsError> {
        if self.body.is_empty() {
            Ok(json!({}))
        } else {
            json_body(self.body)
        }
    }
}

/// A page of a listing and the token for the next one.
pub(crate) struct Page<T> {
    items: Vec<T>,
    next: Option<String>,
}

/// Cuts `items` (sorted by `key`) into the page after `token`, of at most
/// `size` items (1 to 250, `default` when absent). Tokens are the base64 of
/// the last key handed out, so a listing that changes between pages skips
/// or repeats nothing that stayed.
fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    token: Option<String>,
    size: Option<String>,
    default: usize,
) -> Result<Page<T>, AwsError> {
    let size = match size {
        None => default,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=250).contains(n))
            .ok_or_else(|| {
                AwsError::invalid_request(format!("page size `{s}` is not between 1 and 250"))
            })?,
    };
    let after = match token {
        None => None,
        Some(t) => Some(
            base64_decode(&t)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| AwsError::invalid_request("The pagination token is not valid"))?,
        ),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_deref().is_none_or(|a| key(i) > a))
        .collect();
    let next = (rest.len() > size).then(|| base64_encode(key(&rest[size - 1]).as_bytes()));
    rest.truncate(size);
    Ok(Page { items: rest, next })
}

/// Epoch seconds with milliseconds, as AWS's timestamps are.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// An empty 200, for operations without output.
fn done() -> Result<Response, AwsError> {
    Ok(super::aws::ok(json!({})))
}

impl From<RegistryError> for AwsError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound(_) => Self::not_found(message),
            RegistryError::AlreadyExists { id, .. } => Self::new(
                StatusCode::CONFLICT,
                "ResourceAlreadyExistsException",
                message,
            )
            .with("resourceId", id),
            RegistryError::DeleteConflict(_) => {
                Self::new(StatusCode::CONFLICT, "DeleteConflictException", message)
            }
            RegistryError::VersionConflict(_) => {
                Self::new(StatusCode::CONFLICT, "VersionConflictException", message)
            }
            RegistryError::CertificateState(_) => Self::new(
                StatusCode::NOT_ACCEPTABLE,
                "CertificateStateException",
                message,
            ),
            RegistryError::Invalid(_) => Self::invalid_request(message),
            RegistryError::LimitExceeded(_) => {
                Self::new(StatusCode::GONE, "LimitExceededException", message)
            }
        }
    }
}

impl From<VersionError> for AwsError {
    fn from(e: VersionError) -> Self {
        let message = e.to_string();
        match e {
            VersionError::NotFound(_) => Self::not_found(message),
            VersionError::AlreadyExists(_) => Self::new(
                StatusCode::CONFLICT,
                "ResourceAlreadyExistsException",
                message,
            ),
            VersionError::Malformed(_) => {
                Self::new(StatusCode::BAD_REQUEST, "MalformedPolicyException", message)
            }
            VersionError::LimitExceeded(_) => Self::new(
                StatusCode::CONFLICT,
                "VersionsLimitExceededException",
                message,
            ),
            VersionError::DeleteConflict(_) => {
                Self::new(StatusCode::CONFLICT, "DeleteConflictException", message)
            }
            VersionError::Invalid(_) => Self::invalid_request(message),
            VersionError::Io { .. } => {
                tracing::error!(error = %message, "policy file not written");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailureException",
                    message,
                )
            }
        }
    }
}

/// The resource a routed operation acts on: its kind and first label.
fn resource<'a>(kind: &'a str, labels: &'a [String]) -> Option<(&'a str, &'a str)> {
    match labels.first() {
        Some(name) if !kind.is_empty() => Some((kind, name)),
        _ => None,
    }
}

/// The sort key of a listing in creation order, newest first unless `ascending`.
fn by_creation(created_ms: u64, id: &str, ascending: bool) -> String {
    let order = if ascending {
        created_ms
    } else {
        u64::MAX - created_ms
    };
    format!("{order:020}{id}")
}

/// AWS's answer to a call the operator's policies do not allow.
fn access_denied(who: &str, op: Op, resource: &str) -> AwsError {
    AwsError::new(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        format!(
            "User: {who} is not authorized to perform: iot:{} on resource: {resource}",
            op.name()
        ),
    )
}

impl Control {
    /// `arn:aws:iot:REGION:ACCOUNT:KIND/NAME`.
    pub fn arn(&self, kind: &str, name: &str) -> String {
        self.head.arn(kind, name)
    }

    /// The certificate id in a `...:cert/<id>` ARN (or a bare id).
    fn cert_id_of(&self, arn: &str) -> Result<String, AwsError> {
        let id = arn.rsplit_once(":cert/").map_or(arn, |(_, id)| id);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(id.to_ascii_lowercase())
        } else {
            Err(AwsError::invalid_request(format!(
                "`{arn}` is not a certificate ARN"
            )))
        }
    }

    /// Serves one call from `caller`, audits it, and answers.
    pub async fn handle(&self, caller: Caller<'_>, request: Request) -> Response {
        let segs = segments(&request.path);
        let routed = route(request.method.as_str(), &segs);
        let (operation, arn) = match &routed {
            Some((op, kind, labels)) => (
                op.name().to_owned(),
                resource(kind, labels).map(|(kind, name)| self.arn(kind, name)),
            ),
            None => (format!("{} {}", request.method, request.path), None),
        };
        let (denied, result) = match routed {
            Some((op, kind, labels)) => {
                self.operation(caller, op, kind, labels, arn.as_deref(), &request)
                    .await
            }
            None => self.data_plane(caller, &segs, &request).await,
        };
        let outcome = match (&result, denied) {
            (Ok(_), _) => ControlOutcome::Ok,
            (Err(_), true) => ControlOutcome::Denied,
            (Err(_), false) => ControlOutcome::Error,
        };
        self.metrics.control_call(outcome);
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                if outcome == ControlOutcome::Denied {
                    crate::refusal!(
                        caller.name(),
                        "operator_denied",
                        operation = %operation,
                        "control-plane call denied by operator policy"
                    );
                }
                e.into_response()
            }
        };
        let decision = if denied { "deny" } else { "allow" };
        self.audit(
            caller.name(),
            caller.source(),
            operation,
            arn.into_iter().collect(),
            decision,
            &response,
        );
        if let Ok(id) = HeaderValue::from_str(&crate::registry::identity::uuid_v4()) {
            response.headers_mut().insert("x-amzn-RequestId", id);
        }
        response
    }

    /// Writes the audit line of a call that got `response`.
    pub fn audit(
        &self,
        principal: &str,
        source: Option<IpAddr>,
        operation: String,
        resources: Vec<String>,
        decision: &'static str,
        response: &Response,
    ) {
        let Some(audit) = &self.audit else {
            return;
        };
        audit.record(Entry {
            time: crate::audit::now(),
            principal: principal.to_owned(),
            source: source.map(|ip| ip.to_string()),
            operation,
            resources,
            decision,
            status: response.status().as_u16(),
            error: response
                .headers()
                .get("x-amzn-ErrorType")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }

    /// Authorizes a routed operation, then runs it.
    async fn operation(
        &self,
        caller: Caller<'_>,
        op: Op,
        kind: &str,
        labels: Vec<String>,
        arn: Option<&str>,
        request: &Request,
    ) -> (bool, Result<Response, AwsError>) {
        if let Caller::Operator(operator, source) = caller {
            // Operations without a resource of their own are allowed on `*` only.
            let (prefix, name) = match resource(kind, &labels) {
                Some((kind, name)) => (format!("{kind}/"), name),
                None => (String::new(), "*"),
            };
            let action = format!("iot:{}", op.name().to_ascii_lowercase());
            if !self
                .operators
                .decide(operator, source, &action, &prefix, name)
                .is_allowed()
            {
                let denied = access_denied(caller.name(), op, arn.unwrap_or("*"));
                return (true, Err(denied));
            }
        }
        let call = Call {
            labels,
            query: &request.query,
            headers: &request.headers,
            body: &request.body,
        };
        (false, self.run(op, &call).await)
    }

    async fn run(&self, op: Op, call: &Call<'_>) -> Result<Response, AwsError> {
        let result = self.dispatch(op, call).await;
        if op.writes() && result.is_ok() {
            self.durable().await?;
        }
        let writes_policies = matches!(
            op,
            Op::CreatePolicy
                | Op::CreatePolicyVersion
                | Op::SetDefaultPolicyVersion
                | Op::DeletePolicy
        );
        if writes_policies
            && result.is_ok()
            && let Some(enforce) = &self.enforce
        {
            enforce();
        }
        result
    }

    /// Waits until the operation's records are on disk: nothing the API
    /// accepts is lost on a crash.
    async fn durable(&self) -> Result<(), AwsError> {
        self.store.barrier().await.map_err(|e| {
            tracing::error!(error = %e, "a control-plane change is not durable");
            AwsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailureException",
                format!("the change could not be made durable: {e}"),
            )
        })
    }

    async fn dispatch(&self, op: Op, call: &Call<'_>) -> Result<Response, AwsError> {
        use Op::*;
        match op {
            CreateThing => things::create(self, call),
            DescribeThing => things::describe(self, call),
            UpdateThing => things::update(self, call),
            DeleteThing => things::delete(self, call),
            ListThings => things::list(self, call),
            CreateThingType => things::create_type(self, call),
            DescribeThingType => things::describe_type(self, call),
            ListThingTypes => things::list_types(self, call),
            DeprecateThingType => things::deprecate_type(self, call),
            DeleteThingType => things::delete_type(self, call),
            AttachThingPrincipal => things::attach_principal(self, call),
            DetachThingPrincipal => things::detach_principal(self, call),
            ListThingPrincipals => things::list_principals(self, call, false),
            ListThingPrincipalsV2 => things::list_principals(self, call, true),
            ListPrincipalThings => things::list_principal_things(self, call, false),
            ListPrincipalThingsV2 => things::list_principal_things(self, call, true),
            CreateKeysAndCertificate => certificates::create_keys(self, call).await,
            CreateCertificateFromCsr => certificates::from_csr(self, call),
            DescribeCertificate => certificates::describe(self, call),
            UpdateCertificate => certificates::update(self, call),
            DeleteCertificate => certificates::delete(self, call),
            ListCertificates => certificates::list(self, call, None),
            ListCertificatesByCA => certificates::list(self, call, Some(call.label(0))),
            RegisterCertificate => certificates::register(self, call, true),
            RegisterCertificateWithoutCA => certificates::register(self, call, false),
            GetRegistrationCode => Ok(super::aws::ok(
                json!({ "registrationCode": self.registry.registration_code() }),
            )),
            RegisterCACertificate => certificates::register_ca(self, call),
            DescribeCACertificate => certificates::describe_ca(self, call),
            UpdateCACertificate => certificates::update_ca(self, call),
            DeleteCACertificate => certificates::delete_ca(self, call),
            ListCACertificates => certificates::list_cas(self, call),
            CreatePolicy => policies::create(self, call),
            GetPolicy => policies::get(self, call),
            DeletePolicy => policies::delete(self, call),
            ListPolicies => policies::list(self, call),
            CreatePolicyVersion => policies::create_version(self, call),
            ListPolicyVersions => policies::list_versions(self, call),
            GetPolicyVersion => policies::get_version(self, call),
            SetDefaultPolicyVersion => policies::set_default(self, call),
            DeletePolicyVersion => policies::delete_version(self, call),
            AttachPolicy => policies::attach(self, call, true),
            DetachPolicy => policies::attach(self, call, false),
            AttachPrincipalPolicy => policies::attach_principal(self, call, true),
            DetachPrincipalPolicy => policies::attach_principal(self, call, false),
            ListAttachedPolicies => policies::list_attached(self, call, call.label(0)),
            ListPrincipalPolicies => policies::list_attached(
                self,
                call,
                call.header("x-amzn-iot-principal").unwrap_or_default(),
            ),
            ListTargetsForPolicy => policies::list_targets(self, call),
            GetEffectivePolicies => policies::effective(self, call),
            TestAuthorization => policies::test_authorization(self, call),
            DescribeEndpoint => self.describe_endpoint(call),
            CreateTopicRule => rules::create(self, call),
            GetTopicRule => rules::get(self, call),
            ListTopicRules => rules::list(self, call),
            ReplaceTopicRule => rules::replace(self, call),
            DeleteTopicRule => rules::delete(self, call),
            EnableTopicRule => rules::set_enabled(self, call, true),
            DisableTopicRule => rules::set_enabled(self, call, false),
            DescribeEventConfigurations => events::describe(self),
            UpdateEventConfigurations => events::update(self, call),
            CreateProvisioningTemplate => provisioning::create(self, call),
            DescribeProvisioningTemplate => provisioning::describe(self, call),
            ListProvisioningTemplates => provisioning::list(self, call),
            UpdateProvisioningTemplate => provisioning::update(self, call),
            DeleteProvisioningTemplate => provisioning::delete(self, call),
            CreateProvisioningTemplateVersion => provisioning::create_version(self, call),
            DescribeProvisioningTemplateVersion => provisioning::describe_version(self, call),
            ListProvisioningTemplateVersions => provisioning::list_versions(self, call),
            DeleteProvisioningTemplateVersion => provisioning::delete_version(self, call),
            CreateAuthorizer => authorizers::create(self, call),
            DescribeAuthorizer => authorizers::describe(self, call),
            ListAuthorizers => authorizers::list(self, call),
            UpdateAuthorizer => authorizers::update(self, call),
            DeleteAuthorizer => authorizers::delete(self, call),
            SetDefaultAuthorizer => authorizers::set_default(self, call),
            DescribeDefaultAuthorizer => authorizers::describe_default(self),
            ClearDefaultAuthorizer => authorizers::clear_default(self),
            TestInvokeAuthorizer => authorizers::test_invoke(self, call).await,
            CreateThingGroup => groups::create(self, call),
            DescribeThingGroup => groups::describe(self, call),
            UpdateThingGroup => groups::update(self, call),
            DeleteThingGroup => groups::delete(self, call),
            ListThingGroups => groups::list(self, call),
            AddThingToThingGroup => groups::add_thing(self, call, true),
            RemoveThingFromThingGroup => groups::add_thing(self, call, false),
            UpdateThingGroupsForThing => groups::update_for_thing(self, call),
            ListThingsInThingGroup => groups::things_in(self, call),
            ListThingGroupsForThing => groups::of_thing(self, call),
            CreateJob => jobs::create(self, call).await,
            DescribeJob => jobs::describe(self, call),
            ListJobs => jobs::list(self, call),
            UpdateJob => jobs::update(self, call).await,
            CancelJob => jobs::cancel(self, call).await,
            DeleteJob => jobs::delete(self, call).await,
            GetJobDocument => jobs::document(self, call),
            ListJobExecutionsForJob => jobs::executions_of_job(self, call),
            ListJobExecutionsForThing => jobs::executions_of_thing(self, call),
            DescribeJobExecution => jobs::describe_execution(self, call),
            CancelJobExecution => jobs::cancel_execution(self, call).await,
            DeleteJobExecution => jobs::delete_execution(self, call).await,
            AssociateTargetsWithJob => jobs::associate(self, call).await,
        }
    }

    /// The `iot-data` operations, each authorized by the caller's policies
    /// with the data-plane actions (`iot:Publish`, `iot:GetThingShadow`, ...).
    async fn data_plane(
        &self,
        caller: Caller<'_>,
        segs: &[String],
        request: &Request,
    ) -> (bool, Result<Response, AwsError>) {
        let unknown = || {
            AwsError::new(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                format!(
                    "{} {} is not an operation of this gateway",
                    request.method, request.path
                ),
            )
        };
        let Some(dp) = &self.data else {
            return (false, Err(unknown()));
        };
        let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
        let name = caller.name();
        let mut denied = false;
        let mut allows = |action: crate::policy::eval::Action,
                          ty: crate::policy::eval::ResourceType,
                          resource: &str| {
            let ok = match caller {
                Caller::Local => true,
                Caller::Operator(op, source) => self
                    .operators
                    .decide(op, source, action.name(), ty.prefix(), resource)
                    .is_allowed(),
            };
            denied |= !ok;
            ok
        };
        let answer = data::handle(
            dp,
            &request.method,
            &seg,
            &request.query,
            &request.headers,
            request.body.clone(),
            data::Caller {
                principal: name,
                allows: &mut allows,
            },
        )
        .await;
        match answer {
            Some(result) => (denied, result),
            None => (false, Err(unknown())),
        }
    }

    /// The gateway's own host for every endpoint type, with the port when
    /// it is not the one a client assumes: MQTT (8883, or 443 with ALPN)
    /// for data, jobs and device advisor; the device HTTPS endpoint (443)
    /// for the credential provider, which this gateway does not serve, so
    /// that a client reaching for it gets an answer from the gateway.
    fn describe_endpoint(&self, call: &Call<'_>) -> Result<Response, AwsError> {
        let (port, standard) = match call.query("endpointType").as_deref() {
            None | Some("iot:Data" | "iot:Data-ATS" | "iot:Jobs" | "iot:DeviceAdvisor") => {
                (self.endpoint.mqtt_port, [8883, 443])
            }
            Some("iot:CredentialProvider") => (self.endpoint.https_port, [443, 443]),
            Some(other) => {
                return Err(AwsError::invalid_request(format!(
                    "Endpoint type {other} is not valid"
                )));
            }
        };
        let address = match port {
            Some(p) if !standard.contains(&p) => format!("{}:{p}", self.endpoint.host),
            _ => self.endpoint.host.clone(),
        };
        Ok(super::aws::ok(json!({ "endpointAddress": address })))
    }
}
