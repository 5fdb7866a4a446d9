//! What every AWS-shaped API of the gateway shares: errors in AWS's
//! REST-JSON shape, and reading paths and query strings as botocore
//! writes them.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error in AWS's shape: status, `x-amzn-ErrorType`, and `__type` in the body.
pub struct AwsError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Members some exceptions add (`resourceId`, `resourceArn`).
    extra: Vec<(&'static str, String)>,
}

impl AwsError {
    /// An error of class `kind` (botocore's exception name) with `status`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    /// Adds a member to the error body.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((key, value.into()));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// AWS's exception name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// AWS's answer to a request it cannot act on as written.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequestException", message)
    }

    /// AWS's answer for a resource that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                ("x-amzn-ErrorType", self.kind),
                (header::CONTENT_TYPE.as_str(), "application/json"),
            ],
            {
                let mut body = json!({"__type": self.kind, "message": self.message});
                for (k, v) in self.extra {
                    body[k] = v.into();
                }
                body.to_string()
            },
        )
            .into_response()
    }
}

/// A 200 answer with a JSON body.
pub fn ok(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The body as JSON, or AWS's answer to one that is not.
pub fn json_body(body: &[u8]) -> Result<Value, AwsError> {
    serde_json::from_slice(body).map_err(|e| AwsError::invalid_request(format!("body: {e}")))
}

/// The segments of a request path, each decoded after the split.
pub fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect()
}

/// The percent-decoded value of a query parameter.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

pub use crate::sql::template::percent_decode;
