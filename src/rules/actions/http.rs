//! `http`: the rule output POSTed to a URL (spec §3.3).
//!
//! AWS tries a request at most three times and then gives up; at the edge
//! the spool keeps the job instead, so a target that is down, times out or
//! answers 429 or 5xx is retried with backoff until it answers or the job
//! ages out of its spool. Any other non-2xx answer will not change on a
//! retry: the job fails and goes to the error action. Redirects are not
//! followed (they could lead to plaintext): a 3xx answer is a failure.

use super::{Context, Outcome};
use crate::config::HttpAction;
use crate::sql::Template;
use crate::sql::eval::{base64_decode, base64_encode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// AWS's limits.
const MAX_HEADERS: usize = 100;
const MAX_URL: usize = 2000;

/// A compiled HTTP action.
#[derive(Debug)]
pub struct Http {
    url: Template,
    headers: Vec<(String, Template)>,
    timeout_ms: u64,
    allow_plaintext: bool,
}

/// One request, as spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// URL after substitution.
    pub url: String,
    headers: Vec<(String, String)>,
    timeout_ms: u64,
    /// Body, base64.
    body: String,
}

impl Http {
    /// Checks and compiles the configuration.
    pub fn compile(a: &HttpAction, allow_plaintext: bool) -> Result<Self, String> {
        let url = Template::parse(&a.url)
            .map_err(|e| format!("url: position {}: {}", e.at, e.message))?;
        if let Some(u) = url.literal() {
            check_url(&u, allow_plaintext)?;
        }
        if a.headers.len() > MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} headers"));
        }
        if !(1..=60_000).contains(&a.timeout_ms) {
            return Err("timeout_ms: between 1 and 60000".into());
        }
        let headers = a
            .headers
            .iter()
            .map(|kv| {
                reqwest::header::HeaderName::from_bytes(kv.key.as_bytes())
                    .map_err(|_| format!("header `{}` is not a valid header name", kv.key))?;
                let value = Template::parse(&kv.value).map_err(|e| {
                    format!("header `{}`: position {}: {}", kv.key, e.at, e.message)
                })?;
                Ok((kv.key.clone(), value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            url,
            headers,
            timeout_ms: a.timeout_ms,
            allow_plaintext,
        })
    }

    /// The URL, for error documents of failed renders.
    pub fn resource(&self, cx: &Context<'_>) -> String {
        self.url.render_url(cx.msg, cx.vars)
    }

    /// Substitutes the templates for one message. Substituted values are
    /// percent-encoded in the URL, and the URL must keep its template's
    /// literal start (scheme, host, port, path prefix), so that a topic
    /// such as `a/..` or `a?admin=1` cannot send the request elsewhere.
    pub fn render(&self, cx: &Context<'_>, body: &[u8], json: bool) -> Result<Request, String> {
        let url = self.url.render_url(cx.msg, cx.vars);
        check_url(&url, self.allow_plaintext)?;
        keeps_prefix(&url, self.url.literal_prefix())?;
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.render(cx.msg, cx.vars)))
            .collect();
        for (k, v) in &headers {
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(format!("header `{k}`: value is not valid in HTTP"));
            }
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            let ct = if json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            headers.push(("content-type".into(), ct.into()));
        }
        Ok(Request {
            url,
            headers,
            timeout_ms: self.timeout_ms,
            body: base64_encode(body),
        })
    }
}

/// POSTs a JSON document to an endpoint that stands in for an AWS Lambda
/// function (a pre-provisioning hook, a custom authorizer) and reads its
/// answer: a success status and at most `max` bytes, all within
/// `deadline`. An error says why in words that name `what`.
pub async fn call_json(
    client: &reqwest::Client,
    url: &str,
    body: String,
    (max, deadline): (usize, std::time::Duration),
    what: &str,
) -> Result<Vec<u8>, String> {
    let call = async {
        let mut response = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("the {what} is unreachable: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the {what} answered HTTP {status}"));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("the {what}'s answer broke off: {e}"))?
        {
            if answer.len() + chunk.len() > max {
                return Err(format!("the {what}'s answer is longer than {max} bytes"));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    };
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the {what} did not answer within {} s",
                deadline.as_secs()
            ))
        })
}

/// An absolute `https://` URL, or `http://` to a loopback host (or anywhere
/// with `actions.allow_plaintext_http`).
pub fn check_url(url: &str, allow_plaintext: bool) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("url is longer than {MAX_URL} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url `{url}`: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_plaintext || is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "url `{url}`: plaintext http only to loopback hosts unless actions.allow_plaintext_http = true"
        )),
        other => Err(format!("url `{url}`: scheme {other} is not http(s)")),
    }
}

/// Whether `url`, once parsed (dot segments resolved), keeps what its
/// template's literal `prefix` fixes: the scheme, host and port when the
/// prefix holds the whole authority, and the path as far as the prefix goes.
fn keeps_prefix(url: &str, prefix: &str) -> Result<(), String> {
    let authority_done = prefix
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains(['/', '?', '#']));
    let (Ok(fixed), true) = (reqwest::Url::parse(prefix), authority_done) else {
        // The template substitutes into the scheme or the host: check_url decides.
        return Ok(());
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url `{url}`: {e}"))?;
    let same_origin = parsed.scheme() == fixed.scheme()
        && parsed.host() == fixed.host()
        && parsed.port_or_known_default() == fixed.port_or_known_default();
    if same_origin && parsed.path().starts_with(fixed.path()) {
        Ok(())
    } else {
        Err(format!("url `{parsed}` leaves its template's `{prefix}`"))
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Sends one request.
pub async fn deliver(client: &reqwest::Client, r: &Request) -> Outcome {
    let Some(body) = base64_decode(&r.body) else {
        return Outcome::Failed("spooled body is not base64".into());
    };
    let mut req = client
        .post(&r.url)
        .timeout(Duration::from_millis(r.timeout_ms))
        .body(body);
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    match req.send().await {
        // A request that cannot be built never will be.
        Err(e) if e.is_builder() => Outcome::Failed(error_chain(&e)),
        Err(e) => Outcome::Retry(error_chain(&e)),
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || status.as_u16() == 429 {
                Outcome::Retry(format!("HTTP {status}"))
            } else {
                Outcome::Failed(format!("HTTP {status}"))
            }
        }
    }
}

/// reqwest's errors say little at the top ("error sending request"); the cause says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The client every HTTP action shares: rustls with ring, the system's
/// roots or `actions.http_ca` instead, and no proxy from the environment.
pub fn client(http_ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let roots = match http_ca {
        Some(path) => crate::transport::tls::read_roots(path).map_err(|e| e.to_string())?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "system root certificates partly unreadable");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates: https actions will fail until actions.http_ca is set"
                );
            }
            roots
        }
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        // A redirect could lead to plaintext or anywhere else; it is an
        // answer like any other 3xx (a failure), not a hop to follow.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| error_chain(&e))
}
