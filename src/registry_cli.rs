//! Registry commands of the CLI, against a stopped gateway (its data
//! directory, opened directly) or a running one (the control plane on the
//! admin listener, signed with the configured SigV4 key; a running gateway
//! locks its store, so there is never a write behind its back).

use anyhow::{Context, bail};
use edgegate::config::Config;
use edgegate::http::sigv4;
use edgegate::registry::{CertStatus, ClientIdentity, Registry};
use edgegate::store::{Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A certificate as listed.
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) policies: Vec<String>,
    pub(crate) things: Vec<String>,
}

/// A thing as listed.
pub(crate) struct ListedThing {
    pub(crate) name: String,
    pub(crate) thing_type: Option<String>,
    pub(crate) attributes: BTreeMap<String, String>,
}

/// What the registry commands need, locally or remotely.
pub(crate) trait Ops {
    fn register(
        &self,
        identity: &ClientIdentity,
        status: CertStatus,
        policies: &[String],
        thing: Option<&str>,
    ) -> anyhow::Result<()>;
    fn set_status(&self, id: &str, status: CertStatus) -> anyhow::Result<()>;
    fn certificates(&self) -> anyhow::Result<Vec<Listed>>;
    fn put_thing(
        &self,
        name: &str,
        thing_type: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> anyhow::Result<()>;
    fn attach_thing(&self, cert_id: &str, thing: &str) -> anyhow::Result<()>;
    fn things(&self) -> anyhow::Result<Vec<ListedThing>>;
}

impl Ops for Registry {
    fn register(
        &self,
        identity: &ClientIdentity,
        status: CertStatus,
        policies: &[String],
        thing: Option<&str>,
    ) -> anyhow::Result<()> {
        Registry::register(self, identity, status, policies.to_vec(), thing);
        Ok(())
    }
    fn set_status(&self, id: &str, status: CertStatus) -> anyhow::Result<()> {
        Ok(Registry::set_status(self, id, status)?)
    }
    fn certificates(&self) -> anyhow::Result<Vec<Listed>> {
        Ok(Registry::certificates(self)
            .into_iter()
            .map(|c| Listed {
                id: c.id,
                status: c.status.name().into(),
                policies: c.policies,
                things: c.things,
            })
            .collect())
    }
    fn put_thing(
        &self,
        name: &str,
        thing_type: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        Ok(Registry::put_thing(self, name, thing_type, attributes)?)
    }
    fn attach_thing(&self, cert_id: &str, thing: &str) -> anyhow::Result<()> {
        Ok(Registry::attach_thing(self, cert_id, thing)?)
    }
    fn things(&self) -> anyhow::Result<Vec<ListedThing>> {
        Ok(Registry::things(self)
            .into_iter()
            .map(|t| ListedThing {
                name: t.name,
                thing_type: t.thing_type,
                attributes: t.attributes,
            })
            .collect())
    }
}

/// The control plane of a running gateway.
pub(crate) struct Remote {
    addr: SocketAddr,
    access_key_id: String,
    secret: String,
    region: String,
    account: String,
}

impl Remote {
    fn from_config(config: &Config) -> anyhow::Result<Self> {
        let listen = config
            .admin
            .listen
            .as_deref()
            .context("the gateway has no admin listener (admin.listen)")?;
        let mut addr: SocketAddr = listen.parse().context("admin.listen")?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let access_key_id = config
            .admin
            .access_key_id
            .clone()
            .context("admin.access_key_id is not set, so the control plane is off")?;
        let secret = std::env::var(&config.admin.secret_access_key_env).with_context(|| {
            format!(
                "the secret for admin.access_key_id is read from ${}, which is not set",
                config.admin.secret_access_key_env
            )
        })?;
        Ok(Self {
            addr,
            access_key_id,
            secret,
            region: config.aws.region.clone(),
            account: config.aws.account_id.clone(),
        })
    }

    fn cert_arn(&self, id: &str) -> String {
        format!("arn:aws:iot:{}:{}:cert/{id}", self.region, self.account)
    }

    /// One signed request; the JSON answer, or the error AWS-style.
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let host = self.addr.to_string();
        let date = sigv4::amz_date_now();
        let mut headers: Vec<(&str, &str)> = vec![("host", &host), ("x-amz-date", &date)];
        headers.extend_from_slice(extra);
        let request = sigv4::Request {
            method,
            path,
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        let auth = sigv4::sign(
            &request,
            &self.access_key_id,
            &self.secret,
            &self.region,
            "iot",
        );
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut text = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str(&format!(
            "authorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the admin listener at {}", self.addr))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
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
        let json: Value = if payload.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(payload).context("not a JSON response")?
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
}

fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Ops for Remote {
    fn register(
        &self,
        identity: &ClientIdentity,
        status: CertStatus,
        policies: &[String],
        thing: Option<&str>,
    ) -> anyhow::Result<()> {
        let active = if status == CertStatus::Active {
            "true"
        } else {
            "false"
        };
        self.call(
            "POST",
            "/certificate/register",
            &format!("setAsActive={active}"),
            &[],
            Some(json!({ "certificatePem": identity.pem })),
        )?;
        let arn = self.cert_arn(&identity.certificate_id);
        for p in policies {
            self.call(
                "PUT",
                &format!("/target-policies/{}", segment(p)),
                "",
                &[],
                Some(json!({ "target": arn })),
            )?;
        }
        if let Some(t) = thing {
            self.call("POST", &format!("/things/{}", segment(t)), "", &[], None)?;
            self.attach_thing(&identity.certificate_id, t)?;
        }
        Ok(())
    }
    fn set_status(&self, id: &str, status: CertStatus) -> anyhow::Result<()> {
        self.call(
            "PUT",
            &format!("/certificates/{}", segment(id)),
            &format!("newStatus={}", status.name()),
            &[],
            None,
        )?;
        Ok(())
    }
    fn certificates(&self) -> anyhow::Result<Vec<Listed>> {
        let v = self.call("GET", "/certificates", "", &[], None)?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(v["certificates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| Listed {
                        id: c["certificateId"].as_str().unwrap_or_default().into(),
                        status: c["status"].as_str().unwrap_or_default().into(),
                        policies: strings(&c["policies"]),
                        things: strings(&c["things"]),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
    fn put_thing(
        &self,
        name: &str,
        thing_type: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        self.call(
            "POST",
            &format!("/things/{}", segment(name)),
            "",
            &[],
            Some(json!({ "thingTypeName": thing_type, "attributePayload": { "attributes": attributes } })),
        )?;
        Ok(())
    }
    fn attach_thing(&self, cert_id: &str, thing: &str) -> anyhow::Result<()> {
        let arn = self.cert_arn(cert_id);
        self.call(
            "PUT",
            &format!("/things/{}/principals", segment(thing)),
            "",
            &[("x-amzn-principal", &arn)],
            None,
        )?;
        Ok(())
    }
    fn things(&self) -> anyhow::Result<Vec<ListedThing>> {
        let v = self.call("GET", "/things", "", &[], None)?;
        Ok(v["things"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| ListedThing {
                        name: t["thingName"].as_str().unwrap_or_default().into(),
                        thing_type: t["thingTypeName"].as_str().map(str::to_owned),
                        attributes: t["attributes"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Runs `f` against the registry of a stopped gateway, or through the
/// control plane of a running one.
pub(crate) fn with_registry(
    config: &Config,
    f: impl FnOnce(&dyn Ops) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let path = config.data_dir.join("edgegate.redb");
        let metrics = std::sync::Arc::new(edgegate::metrics::Metrics::new());
        match Store::open(&path, true, metrics) {
            Ok((store, snapshot)) => {
                let cas = edgegate::registry::read_ca_file(&config.tls.ca);
                let auto = config.auth.registration != edgegate::config::Registration::Registry;
                let registry = Registry::new(store.clone(), snapshot.registry, cas, auto);
                let result = f(&registry);
                store.close().await;
                result
            }
            Err(StoreError::Locked(_)) => {
                let remote = Remote::from_config(config).context(
                    "the gateway is running (its store is locked), and its control plane cannot be used",
                )?;
                f(&remote)
            }
            Err(e) => Err(e.into()),
        }
    })
}
