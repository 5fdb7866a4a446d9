//! The admin listener: Prometheus metrics, a health check, the AWS-shaped
//! control plane for certificates and things, and the `iot-data` API.
//!
//! `/metrics` and `/healthz` are read-only and open (the listener is on
//! loopback by default). Everything else is the `iot` control plane in
//! AWS's REST-JSON shapes (spec/aws-iot-auth.md §6), and every request
//! must carry a valid SigV4 signature from the configured access key:
//! there is no unauthenticated write path, and with no key configured the
//! control plane refuses everything.

use super::aws::{AwsError, json_body, ok, query_param, segments};
use super::sigv4;
use crate::metrics::Metrics;
use crate::registry::{CertStatus, ClientIdentity, Registry, RegistryError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest control-plane request body.
const MAX_BODY: usize = 64 * 1024;

/// The SigV4 key pair the control plane accepts.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What the admin routes work with.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// The registry the control plane edits.
    pub registry: Arc<Registry>,
    /// Accepted credentials; `None` disables the control plane.
    pub credentials: Option<Credentials>,
    /// For ARNs.
    pub region: String,
    /// For ARNs.
    pub account: String,
    /// The upstream link, for `/healthz`.
    pub upstream: Option<Arc<crate::bridge::Status>>,
    /// The `iot-data` API.
    pub data: super::data::DataPlane,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(control_plane)
        .with_state(Arc::new(state))
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `{"status":"ok"}`, with the upstream link's state and backlog when
/// there is one: the gateway serves while the link is down, so the status
/// stays "ok".
async fn healthz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = serde_json::json!({"status": "ok"});
    if let Some(u) = &state.upstream {
        let (records, bytes, oldest_ms) = u.backlog();
        body["upstream"] = serde_json::json!({
            "connected": u.connected(),
            "spool_records": records,
            "spool_bytes": bytes,
            "oldest_age_seconds": oldest_ms / 1000,
        });
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

impl From<RegistryError> for AwsError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NoCertificate(_) | RegistryError::NoThing(_) => {
                Self::not_found(e.to_string())
            }
            RegistryError::BadStatus(_) => Self::new(
                StatusCode::NOT_ACCEPTABLE,
                "CertificateStateException",
                e.to_string(),
            ),
            RegistryError::BadThingName(_) => Self::invalid_request(e.to_string()),
        }
    }
}

async fn control_plane(State(state): State<Arc<AdminState>>, req: Request) -> Response {
    match handle(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AdminState, req: Request) -> Result<Response, AwsError> {
    let (parts, body) = req.into_parts();
    // A Publish body is a message payload, which may be larger.
    let limit = MAX_BODY.max(state.data.max_payload);
    let body: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidRequestException",
            "body too large",
        )
    })?;
    authenticate(state, &parts.method, &parts.uri, &parts.headers, &body)?;
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    let segments = segments(path);
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let principal = state
        .credentials
        .as_ref()
        .map_or("", |c| c.access_key_id.as_str());
    if let Some(answer) = super::data::handle(
        &state.data,
        &parts.method,
        &seg,
        query,
        &parts.headers,
        body.clone(),
        super::data::Caller {
            principal,
            // A signed operator may do everything.
            allows: &mut |_, _, _| true,
        },
    )
    .await
    {
        return answer;
    }
    let registry = &state.registry;
    match (&parts.method, seg.as_slice()) {
        (&Method::GET, ["certificates"]) => {
            let certs: Vec<Value> = registry
                .certificates()
                .into_iter()
                .map(|c| {
                    json!({
                        "certificateArn": state.arn("cert", &c.id),
                        "certificateId": c.id,
                        "status": c.status.name(),
                        "creationDate": c.created_ms as f64 / 1000.0,
                        // Not in AWS's shape (clients ignore them); the edgegate CLI shows them.
                        "policies": c.policies,
                        "things": c.things,
                    })
                })
                .collect();
            Ok(ok(json!({ "certificates": certs })))
        }
        (&Method::GET, ["certificates", id]) => {
            let c = registry.certificate(id).ok_or_else(|| {
                AwsError::not_found(format!("certificate {id} is not registered"))
            })?;
            Ok(ok(json!({ "certificateDescription": {
                "certificateArn": state.arn("cert", &c.id),
                "certificateId": c.id,
                "caCertificateId": c.ca_id,
                "status": c.status.name(),
                "certificatePem": c.pem,
                "creationDate": c.created_ms as f64 / 1000.0,
            }})))
        }
        (&Method::PUT, ["certificates", id]) => {
            let status = query_param(query, "newStatus")
                .and_then(|s| CertStatus::parse(&s))
                .ok_or_else(|| AwsError::invalid_request("newStatus is required"))?;
            registry.set_status(id, status)?;
            Ok(ok(json!({})))
        }
        (&Method::POST, ["certificate", "register"]) => {
            let input: Value = json_body(&body)?;
            let pem = input["certificatePem"]
                .as_str()
                .ok_or_else(|| AwsError::invalid_request("certificatePem is required"))?;
            let identity = rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .and_then(Result::ok)
                .and_then(|der| ClientIdentity::from_der(&der))
                .ok_or_else(|| {
                    AwsError::new(
                        StatusCode::BAD_REQUEST,
                        "CertificateValidationException",
                        "not a certificate",
                    )
                })?;
            let active = query_param(query, "setAsActive").as_deref() == Some("true")
                || input["status"].as_str() == Some("ACTIVE");
            let status = if active {
                CertStatus::Active
            } else {
                CertStatus::Inactive
            };
            if !registry.register_new(&identity, status) {
                return Err(AwsError::new(
                    StatusCode::CONFLICT,
                    "ResourceAlreadyExistsException",
                    "the certificate is already registered",
                ));
            }
            Ok(ok(json!({
                "certificateArn": state.arn("cert", &identity.certificate_id),
                "certificateId": identity.certificate_id,
            })))
        }
        (&Method::POST, ["things", name]) => {
            let input: Value = if body.is_empty() {
                json!({})
            } else {
                json_body(&body)?
            };
            let attributes: BTreeMap<String, String> = input["attributePayload"]["attributes"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let thing_type = input["thingTypeName"].as_str().map(str::to_owned);
            registry.put_thing(name, thing_type, attributes)?;
            Ok(ok(json!({
                "thingName": name,
                "thingArn": state.arn("thing", name),
                "thingId": name,
            })))
        }
        (&Method::GET, ["cacertificates"]) => {
            let cas: Vec<Value> = registry
                .ca_certificates()
                .into_iter()
                .map(|c| {
                    json!({
                        "certificateArn": state.arn("cacert", &c.id),
                        "certificateId": c.id,
                        "status": "ACTIVE",
                        "creationDate": c.created_ms as f64 / 1000.0,
                    })
                })
                .collect();
            Ok(ok(json!({ "certificates": cas })))
        }
        (&Method::GET, ["cacertificate", id]) => {
            let c = registry
                .ca_certificates()
                .into_iter()
                .find(|c| c.id == *id)
                .ok_or_else(|| {
                    AwsError::not_found(format!("CA certificate {id} is not registered"))
                })?;
            Ok(ok(json!({ "certificateDescription": {
                "certificateArn": state.arn("cacert", &c.id),
                "certificateId": c.id,
                "status": "ACTIVE",
                "certificatePem": c.pem,
                "ownedBy": state.account,
                "creationDate": c.created_ms as f64 / 1000.0,
                "autoRegistrationStatus": if c.auto_registration { "ENABLE" } else { "DISABLE" },
                "certificateMode": "DEFAULT",
            }})))
        }
        (&Method::GET, ["things"]) => {
            let things: Vec<Value> = registry
                .things()
                .into_iter()
                .map(|t| {
                    json!({
                        "thingName": t.name,
                        "thingArn": state.arn("thing", &t.name),
                        "thingTypeName": t.thing_type,
                        "attributes": t.attributes,
                        "version": 1,
                    })
                })
                .collect();
            Ok(ok(json!({ "things": things })))
        }
        (&Method::PUT, ["things", name, "principals"]) => {
            let principal = parts
                .headers
                .get("x-amzn-principal")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            registry.attach_thing(&cert_id_of(principal)?, name)?;
            Ok(ok(json!({})))
        }
        (&Method::PUT, ["target-policies", policy]) => {
            let input: Value = json_body(&body)?;
            let target = input["target"].as_str().unwrap_or_default();
            registry.attach_policy(&cert_id_of(target)?, policy)?;
            Ok(ok(json!({})))
        }
        _ => Err(AwsError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!(
                "{} {path} is not an operation of this gateway",
                parts.method
            ),
        )),
    }
}

impl AdminState {
    fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:iot:{}:{}:{kind}/{name}", self.region, self.account)
    }
}

fn authenticate(
    state: &AdminState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), AwsError> {
    let Some(creds) = &state.credentials else {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "the control plane is off: set admin.access_key_id and its secret",
        ));
    };
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let request = sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &pairs,
        body,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sigv4::verify(&request, &creds.access_key_id, &creds.secret, now).map_err(|e| {
        tracing::info!(error = %e, "control-plane request refused");
        // An unknown key and a wrong signature look the same from outside,
        // so that key ids cannot be probed.
        let e = if e == sigv4::SigError::UnknownKey {
            sigv4::SigError::Mismatch
        } else {
            e
        };
        AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            e.to_string(),
        )
    })
}

/// The certificate id in a `...:cert/<id>` ARN.
fn cert_id_of(arn: &str) -> Result<String, AwsError> {
    arn.rsplit_once(":cert/")
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| AwsError::invalid_request(format!("`{arn}` is not a certificate ARN")))
}
