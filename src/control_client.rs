//! The CLI's way to the control plane: the Unix socket of a running
//! gateway (`admin.sock` in its data directory), or, when none runs, the
//! same control plane in process over its data directory. A running
//! gateway locks its store, so there is never a write behind its back, and
//! both ways run the very operations boto3 and the AWS CLI call.

use anyhow::{Context, bail};
use edgegate::config::Config;
use edgegate::http::control::{Caller, Control, Endpoint, Request};
use edgegate::http::operators::Operators;
use edgegate::policy::compile::ArnHead;
use edgegate::policy::versions::Versions;
use edgegate::registry::Registry;
use edgegate::store::{Store, StoreError};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

enum Target {
    Socket(PathBuf),
    InProcess(Box<Control>, Store),
}

/// A connection to the control plane for one CLI command.
pub(crate) struct Client {
    runtime: tokio::runtime::Runtime,
    target: Target,
    region: String,
    account: String,
}

impl Client {
    /// The running gateway's socket if its store is locked, else the data
    /// directory itself.
    pub(crate) fn open(config: &Config) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let path = config.data_dir.join("edgegate.redb");
        let metrics = Arc::new(edgegate::metrics::Metrics::new());
        let opened = runtime.block_on(async { Store::open(&path, true, metrics.clone()) });
        let target = match opened {
            Ok((store, snapshot)) => {
                let cas = edgegate::registry::read_ca_file(&config.tls.ca);
                let auto = config.auth.registration != edgegate::config::Registration::Registry;
                let versions =
                    Versions::new(&config.policies.dir, store.clone(), &snapshot.registry);
                let rules =
                    edgegate::rules::book::Book::new(config, store.clone(), &snapshot.registry);
                let templates = edgegate::provisioning::catalog::Catalog::load(
                    config,
                    store.clone(),
                    &snapshot.registry,
                    edgegate::store::now_ms(),
                )?;
                let registry = Registry::new(store.clone(), snapshot.registry, cas, auto);
                let control = Control {
                    rules: Arc::new(rules),
                    templates: Arc::new(templates),
                    jobs: None,
                    registry: Arc::new(registry),
                    policies: Arc::new(versions),
                    head: ArnHead::new(&config.aws.region, &config.aws.account_id),
                    endpoint: Endpoint {
                        host: "localhost".into(),
                        mqtt_port: None,
                        https_port: None,
                    },
                    data: None,
                    authorizers: None,
                    operators: std::sync::Arc::new(Operators::none(ArnHead::new(
                        &config.aws.region,
                        &config.aws.account_id,
                    ))),
                    audit: None,
                    metrics,
                    store: store.clone(),
                    enforce: None,
                    ca_dir: config
                        .tls
                        .ca
                        .parent()
                        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf),
                };
                Target::InProcess(Box::new(control), store)
            }
            Err(StoreError::Locked(_)) => {
                let socket = config.data_dir.join(edgegate::server::ADMIN_SOCKET);
                if !socket.exists() {
                    bail!(
                        "the gateway is running (its store is locked) but serves no admin socket at {} (admin.socket)",
                        socket.display()
                    );
                }
                Target::Socket(socket)
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            runtime,
            target,
            region: config.aws.region.clone(),
            account: config.aws.account_id.clone(),
        })
    }

    /// The ARN of a certificate.
    pub(crate) fn cert_arn(&self, id: &str) -> String {
        format!("arn:aws:iot:{}:{}:cert/{id}", self.region, self.account)
    }

    /// GetPolicy: the policy `name` with its default version's document.
    pub(crate) fn policy(&self, name: &str) -> anyhow::Result<Value> {
        self.call(
            "GET",
            &format!("/policies/{}", segment(name)),
            "",
            &[],
            None,
        )
    }

    /// One call; the JSON answer, or the error as AWS names it.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, payload) = match &self.target {
            Target::InProcess(control, _) => {
                let mut map = axum::http::HeaderMap::new();
                for (k, v) in headers {
                    map.insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes())?,
                        axum::http::HeaderValue::from_str(v)?,
                    );
                }
                let request = Request {
                    method: method.parse()?,
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers: map,
                    body: body.into(),
                };
                self.runtime.block_on(async {
                    let response = control.handle(Caller::Local, request).await;
                    let status = response.status().as_u16();
                    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                    anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
                })?
            }
            Target::Socket(socket) => over_socket(socket, method, path, query, headers, &body)?,
        };
        let json: Value = if payload.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&payload).context("not a JSON response")?
        };
        if status != 200 {
            bail!(
                "{} ({status}): {}",
                json["__type"].as_str().unwrap_or("error"),
                json["message"].as_str().unwrap_or_default()
            );
        }
        Ok(json)
    }

    /// Every item of a paginated listing.
    pub(crate) fn all(
        &self,
        path: &str,
        items: &str,
        (token, next): (&str, &str),
    ) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut query = String::new();
        loop {
            let page = self.call("GET", path, &query, &[], None)?;
            out.extend(page[items].as_array().cloned().unwrap_or_default());
            match page[next].as_str() {
                Some(t) => query = format!("{token}={}", segment(t)),
                None => return Ok(out),
            }
        }
    }

    /// Lets the in-process store commit what the command changed.
    pub(crate) fn close(self) {
        if let Target::InProcess(_, store) = &self.target {
            self.runtime.block_on(store.close());
        }
    }
}

/// One HTTP/1.1 request over the admin socket.
fn over_socket(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let mut text = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the gateway's admin socket {}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(text.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, payload.to_owned()))
}

/// A path label or query value, escaped as botocore escapes it.
pub(crate) fn segment(s: &str) -> String {
    edgegate::http::sigv4::uri_encode(s, false)
}
