//! The admin listeners: Prometheus metrics and a health check, beside the
//! control plane and the `iot-data` API ([`super::control`]).
//!
//! On TCP (loopback by default) `/metrics` and `/healthz` are read-only and
//! open; everything else must carry a valid SigV4 signature from an
//! operator key, whose operator policies then decide the call: there is no
//! unauthenticated write path, and with no key configured the TCP control
//! plane refuses everything. The Unix socket in the data directory
//! (owner-only) serves the same control plane to the local CLI with full
//! access: whoever can open it can already edit the data directory.

use super::aws::AwsError;
use super::control::{Caller, Control, Request};
use super::sigv4;
use crate::metrics::{ControlOutcome, Metrics};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest control-plane request body (a Publish body may be larger: the
/// payload limit applies then).
const MAX_BODY: usize = 64 * 1024;

/// What the admin routes work with.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// The upstream link, for `/healthz`.
    pub upstream: Option<Arc<crate::bridge::Status>>,
    /// The control plane.
    pub control: Arc<Control>,
    /// Largest body accepted.
    pub max_body: usize,
}

impl AdminState {
    /// The state for `control`, accepting payloads up to `max_payload`.
    pub fn new(
        metrics: Arc<Metrics>,
        upstream: Option<Arc<crate::bridge::Status>>,
        control: Arc<Control>,
        max_payload: usize,
    ) -> Self {
        Self {
            metrics,
            upstream,
            control,
            max_body: MAX_BODY.max(max_payload),
        }
    }
}

/// The TCP admin routes; serve with `ConnectInfo<SocketAddr>`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(signed)
        .with_state(Arc::new(state))
}

/// The Unix socket's routes: the control plane, for the local CLI.
pub fn local_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(local)
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

/// Reads the whole request, within the body limit.
async fn read(state: &AdminState, req: axum::extract::Request) -> Result<Request, AwsError> {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| {
            AwsError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidRequestException",
                "body too large",
            )
        })?;
    Ok(Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body,
    })
}

async fn signed(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    let request = match read(&state, req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let control = &state.control;
    let pairs: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signed = sigv4::Request {
        method: request.method.as_str(),
        path: &request.path,
        query: &request.query,
        headers: &pairs,
        body: &request.body,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The control plane is signed for `iot`, the iot-data API for `iotdata`.
    let service = if super::control::is_control_plane(request.method.as_str(), &request.path) {
        "iot"
    } else {
        "iotdata"
    };
    let operator = match control.operators.authenticate(&signed, now, service) {
        Ok(op) => op,
        Err(e) => {
            control
                .metrics
                .control_call(ControlOutcome::Unauthenticated);
            crate::refusal!(
                &peer.ip().to_string(),
                "unauthenticated",
                %peer,
                error = %e,
                "control-plane request refused"
            );
            let message = if control.operators.any() {
                e.to_string()
            } else {
                "the control plane is off: configure admin.users (or admin.access_key_id) and the secrets".into()
            };
            let kind = if e == sigv4::SigError::Missing {
                "MissingAuthenticationTokenException"
            } else {
                "InvalidSignatureException"
            };
            let response = AwsError::new(StatusCode::FORBIDDEN, kind, message).into_response();
            control.audit(
                signed.access_key().unwrap_or("-"),
                Some(peer.ip()),
                format!("{} {}", request.method, request.path),
                Vec::new(),
                "unauthenticated",
                &response,
            );
            return response;
        }
    };
    let ip = peer.ip().to_canonical();
    control
        .handle(Caller::Operator(operator, Some(ip)), request)
        .await
}

async fn local(State(state): State<Arc<AdminState>>, req: axum::extract::Request) -> Response {
    match read(&state, req).await {
        Ok(request) => state.control.handle(Caller::Local, request).await,
        Err(e) => e.into_response(),
    }
}
