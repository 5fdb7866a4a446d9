//! The provisioning templates RegisterThing may name: those of
//! `[[provisioning.templates]]` (read at start; the API lists them but only
//! `config.toml` changes them) and those made through the control plane,
//! kept in the store under `provisioningtemplate/NAME` with their versions.
//! A template's body is checked whenever it is written, so RegisterThing
//! never meets a template that does not parse.

use super::template::Template;
use crate::config::Config;
use crate::store::{Op, Store};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Versions a template keeps, as AWS keeps of a policy.
pub const MAX_VERSIONS: usize = 5;

/// The only payload version of AWS's pre-provisioning hook.
pub const HOOK_PAYLOAD_VERSION: &str = "2020-04-01";

/// Why a template change or lookup was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// No such template, or no such version.
    #[error("{0}")]
    NotFound(String),
    /// A template of that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The template belongs to `config.toml`.
    #[error("{0}")]
    Conflict(String),
    /// The request or the template body is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A sixth version.
    #[error("{0}")]
    VersionsLimit(String),
    /// The default version cannot be deleted.
    #[error("{0}")]
    DeleteConflict(String),
}

/// A template of `config.toml` that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[error("provisioning template {name} ({file}): {why}")]
pub struct FileError {
    /// The template's name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// What is wrong.
    pub why: String,
}

/// Where a template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[provisioning.templates]]` in `config.toml`.
    Config,
    /// The control plane.
    Api,
}

/// The HTTPS endpoint asked before a device is provisioned (AWS calls a
/// Lambda function; its ARN's place holds the endpoint's URL here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The endpoint's URL.
    pub target: String,
    /// `2020-04-01`.
    pub payload_version: String,
}

/// One version of a template's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The template (JSON, AWS's template language).
    pub body: String,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
}

/// A template with everything the API shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Free text.
    pub description: String,
    /// A disabled template refuses RegisterThing.
    pub enabled: bool,
    /// The role AWS would provision with; kept and shown, not used.
    pub role_arn: String,
    /// Asked before provisioning, if set.
    pub hook: Option<Hook>,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it last changed.
    pub modified_ms: u64,
    /// The version RegisterThing uses.
    pub default_version: u32,
    /// The id the next version gets: ids are never reused.
    pub next_version: u32,
    /// Its versions, by id.
    pub versions: BTreeMap<u32, Version>,
}

impl Stored {
    /// A template made now, its body version 1.
    fn new(c: Create, now_ms: u64) -> Self {
        Self {
            description: c.description,
            enabled: c.enabled,
            role_arn: c.role_arn,
            hook: c.hook,
            created_ms: now_ms,
            modified_ms: now_ms,
            default_version: 1,
            next_version: 2,
            versions: BTreeMap::from([(
                1,
                Version {
                    body: c.body,
                    created_ms: now_ms,
                },
            )]),
        }
    }

    /// The default version's body.
    pub fn body(&self) -> &str {
        self.versions
            .get(&self.default_version)
            .map_or("", |v| v.body.as_str())
    }
}

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// Everything else.
    pub template: Stored,
}

/// What CreateProvisioningTemplate asks for.
#[derive(Debug, Clone)]
pub struct Create {
    /// The first version's body.
    pub body: String,
    /// Free text.
    pub description: String,
    /// Whether RegisterThing may use it.
    pub enabled: bool,
    /// `provisioningRoleArn`.
    pub role_arn: String,
    /// `preProvisioningHook`.
    pub hook: Option<Hook>,
}

/// What UpdateProvisioningTemplate changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// The version to make default.
    pub default_version: Option<u32>,
    /// New role ARN.
    pub role_arn: Option<String>,
    /// `Some(None)` removes the hook.
    pub hook: Option<Option<Hook>>,
}

/// What RegisterThing needs of a template.
#[derive(Debug)]
pub struct Live {
    /// The default version, parsed.
    pub template: Template,
    /// Asked before provisioning, if set.
    pub hook: Option<Hook>,
}

#[derive(Debug, Default)]
struct State {
    config: BTreeMap<String, Stored>,
    api: BTreeMap<String, Stored>,
}

/// Both kinds of templates.
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    allow_plaintext_hooks: bool,
    state: Mutex<State>,
}

const PREFIX: &str = "provisioningtemplate/";

impl Catalog {
    /// The templates of `config` (their files read and checked; any
    /// problem is an error) and the API templates among the stored
    /// registry records.
    pub fn load(
        config: &Config,
        store: Store,
        records: &[(String, Vec<u8>)],
        now_ms: u64,
    ) -> Result<Self, FileError> {
        let allow_plaintext_hooks = config.actions.allow_plaintext_http;
        let fixed = read_config(config, allow_plaintext_hooks, now_ms)?;
        let api = records
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(PREFIX)?;
                let stored = serde_json::from_slice::<Stored>(v)
                    .map_err(|e| {
                        tracing::warn!(key = %k, error = %e, "unreadable provisioning template record skipped");
                    })
                    .ok()?;
                if fixed.contains_key(name) {
                    tracing::warn!(
                        template = name,
                        "a template made through the API has the name of one in config.toml; the file's is in force"
                    );
                }
                Some((name.to_owned(), stored))
            })
            .collect();
        Ok(Self {
            store,
            allow_plaintext_hooks,
            state: Mutex::new(State { config: fixed, api }),
        })
    }

    /// Takes the templates of a reloaded `config.toml`, all of them or,
    /// when one cannot be read or is not valid, none; whether any changed.
    /// A template that did not change keeps its dates.
    pub fn set_config(&self, config: &Config, now_ms: u64) -> Result<bool, FileError> {
        let mut fresh = read_config(config, self.allow_plaintext_hooks, now_ms)?;
        let mut state = self.state.lock();
        for (name, t) in &mut fresh {
            if let Some(old) = state.config.get(name)
                && (old.body(), old.enabled, &old.hook) == (t.body(), t.enabled, &t.hook)
            {
                t.clone_from(old);
            }
        }
        let changed = fresh != state.config;
        state.config = fresh;
        Ok(changed)
    }

    /// Every template, by name.
    pub fn list(&self) -> Vec<Entry> {
        let state = self.state.lock();
        let entries = |map: &BTreeMap<String, Stored>, source| {
            map.iter()
                // One of config.toml hides one of the API of its name.
                .filter(|(name, _)| source == Source::Config || !state.config.contains_key(*name))
                .map(|(name, t)| Entry {
                    name: name.clone(),
                    source,
                    template: t.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut all = entries(&state.config, Source::Config);
        all.extend(entries(&state.api, Source::Api));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// One template.
    pub fn get(&self, name: &str) -> Result<Entry, CatalogError> {
        let state = self.state.lock();
        let (source, t) = match (state.config.get(name), state.api.get(name)) {
            (Some(t), _) => (Source::Config, t),
            (None, Some(t)) => (Source::Api, t),
            (None, None) => return Err(no_template(name)),
        };
        Ok(Entry {
            name: name.to_owned(),
            source,
            template: t.clone(),
        })
    }

    /// One version of a template, and whether it is the default.
    pub fn version(&self, name: &str, id: u32) -> Result<(Version, bool), CatalogError> {
        let t = self.get(name)?.template;
        let v = t.versions.get(&id).ok_or_else(|| no_version(name, id))?;
        Ok((v.clone(), t.default_version == id))
    }

    /// What RegisterThing uses: the default version of an enabled template.
    pub fn live(&self, name: &str) -> Result<Live, CatalogError> {
        let entry = self.get(name)?;
        if !entry.template.enabled {
            return Err(CatalogError::Invalid(format!(
                "Template {name} is disabled"
            )));
        }
        let template = Template::parse(entry.template.body())
            .map_err(|e| CatalogError::Invalid(e.to_string()))?;
        Ok(Live {
            template,
            hook: entry.template.hook,
        })
    }

    /// A hook as the API gives it, checked.
    pub fn hook(&self, target: &str, payload_version: &str) -> Result<Hook, CatalogError> {
        hook(target, payload_version, self.allow_plaintext_hooks)
    }

    /// CreateProvisioningTemplate.
    pub fn create(&self, name: &str, c: Create, now_ms: u64) -> Result<(), CatalogError> {
        check_name(name)?;
        check_body(&c.body)?;
        let mut state = self.state.lock();
        if state.config.contains_key(name) || state.api.contains_key(name) {
            return Err(CatalogError::AlreadyExists(format!(
                "Template with name {name} already exists"
            )));
        }
        let stored = Stored::new(c, now_ms);
        self.store.enqueue(vec![put(name, &stored)]);
        state.api.insert(name.to_owned(), stored);
        Ok(())
    }

    /// UpdateProvisioningTemplate.
    pub fn update(&self, name: &str, u: Update, now_ms: u64) -> Result<(), CatalogError> {
        self.change(name, now_ms, |t| {
            if let Some(v) = u.default_version {
                if !t.versions.contains_key(&v) {
                    return Err(no_version(name, v));
                }
                t.default_version = v;
            }
            if let Some(d) = u.description {
                t.description = d;
            }
            if let Some(e) = u.enabled {
                t.enabled = e;
            }
            if let Some(r) = u.role_arn {
                t.role_arn = r;
            }
            if let Some(h) = u.hook {
                t.hook = h;
            }
            Ok(())
        })
    }

    /// DeleteProvisioningTemplate.
    pub fn delete(&self, name: &str) -> Result<(), CatalogError> {
        let mut state = self.state.lock();
        writable(&state, name)?;
        state.api.remove(name).ok_or_else(|| no_template(name))?;
        self.store
            .enqueue(vec![Op::DelRegistry(format!("{PREFIX}{name}"))]);
        Ok(())
    }

    /// CreateProvisioningTemplateVersion: the new version's id, and whether
    /// it is the default.
    pub fn create_version(
        &self,
        name: &str,
        body: String,
        set_default: bool,
        now_ms: u64,
    ) -> Result<u32, CatalogError> {
        check_body(&body)?;
        let mut id = 0;
        self.change(name, now_ms, |t| {
            if t.versions.len() >= MAX_VERSIONS {
                return Err(CatalogError::VersionsLimit(format!(
                    "The template {name} already has the maximum number of versions ({MAX_VERSIONS}); delete one first"
                )));
            }
            id = t.next_version;
            t.next_version += 1;
            t.versions.insert(
                id,
                Version {
                    body,
                    created_ms: now_ms,
                },
            );
            if set_default {
                t.default_version = id;
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// DeleteProvisioningTemplateVersion.
    pub fn delete_version(&self, name: &str, id: u32, now_ms: u64) -> Result<(), CatalogError> {
        self.change(name, now_ms, |t| {
            if !t.versions.contains_key(&id) {
                return Err(no_version(name, id));
            }
            if t.default_version == id {
                return Err(CatalogError::DeleteConflict(format!(
                    "Version {id} is the default version of the template {name}; make another version the default first"
                )));
            }
            t.versions.remove(&id);
            Ok(())
        })
    }

    /// Applies `change` to an API template and stores it, or leaves it as
    /// it was.
    fn change(
        &self,
        name: &str,
        now_ms: u64,
        change: impl FnOnce(&mut Stored) -> Result<(), CatalogError>,
    ) -> Result<(), CatalogError> {
        let mut state = self.state.lock();
        writable(&state, name)?;
        let current = state.api.get(name).ok_or_else(|| no_template(name))?;
        let mut next = current.clone();
        change(&mut next)?;
        next.modified_ms = now_ms;
        self.store.enqueue(vec![put(name, &next)]);
        state.api.insert(name.to_owned(), next);
        Ok(())
    }
}

/// The templates of `config.toml`, each read and checked.
fn read_config(
    config: &Config,
    allow_plaintext_hooks: bool,
    now_ms: u64,
) -> Result<BTreeMap<String, Stored>, FileError> {
    let mut fixed = BTreeMap::new();
    for t in &config.provisioning.templates {
        let failed = |why: String| FileError {
            name: t.name.clone(),
            file: t.file.display().to_string(),
            why,
        };
        check_name(&t.name).map_err(|e| failed(e.to_string()))?;
        if fixed.contains_key(&t.name) {
            return Err(failed("a second template of this name".into()));
        }
        let body = std::fs::read_to_string(&t.file).map_err(|e| failed(e.to_string()))?;
        check_body(&body).map_err(|e| failed(e.to_string()))?;
        let hook = t
            .hook
            .as_deref()
            .map(|url| hook(url, HOOK_PAYLOAD_VERSION, allow_plaintext_hooks))
            .transpose()
            .map_err(|e| failed(e.to_string()))?;
        let made = Create {
            body,
            description: String::new(),
            enabled: t.enabled,
            role_arn: String::new(),
            hook,
        };
        fixed.insert(t.name.clone(), Stored::new(made, now_ms));
    }
    Ok(fixed)
}

/// A template of `config.toml` cannot be changed through the API.
fn writable(state: &State, name: &str) -> Result<(), CatalogError> {
    if state.config.contains_key(name) {
        return Err(CatalogError::Conflict(format!(
            "Template {name} is defined in config.toml; change it there (templates made through the API are the only ones the API changes)"
        )));
    }
    Ok(())
}

fn no_template(name: &str) -> CatalogError {
    CatalogError::NotFound(format!("Template {name} does not exist"))
}

fn no_version(name: &str, id: u32) -> CatalogError {
    CatalogError::NotFound(format!(
        "Version {id} of the template {name} does not exist"
    ))
}

/// AWS's rule for template names: 1 to 36 of `0-9A-Za-z_-`.
pub fn check_name(name: &str) -> Result<(), CatalogError> {
    let fits = (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "templateName `{name}` is not 1 to 36 letters, digits, `_` or `-`"
        )))
    }
}

fn check_body(body: &str) -> Result<(), CatalogError> {
    Template::parse(body)
        .map(drop)
        .map_err(|e| CatalogError::Invalid(format!("Invalid template body: {e}")))
}

/// A hook is an `https://` URL (or `http://` to a loopback host, or
/// anywhere with `actions.allow_plaintext_http`, as HTTP actions), and
/// AWS's one payload version.
fn hook(target: &str, payload_version: &str, allow_plaintext: bool) -> Result<Hook, CatalogError> {
    if payload_version != HOOK_PAYLOAD_VERSION {
        return Err(CatalogError::Invalid(format!(
            "preProvisioningHook.payloadVersion: `{payload_version}` is not {HOOK_PAYLOAD_VERSION}"
        )));
    }
    crate::rules::actions::http::check_url(target, allow_plaintext).map_err(|why| {
        CatalogError::Invalid(format!(
            "preProvisioningHook.targetArn: this gateway calls an HTTPS endpoint in place of a Lambda function: {why}"
        ))
    })?;
    Ok(Hook {
        target: target.to_owned(),
        payload_version: payload_version.to_owned(),
    })
}

fn put(name: &str, stored: &Stored) -> Op {
    Op::PutRegistry(
        format!("{PREFIX}{name}"),
        serde_json::to_vec(stored).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "lamp"}},
        "certificate": {"Type": "AWS::IoT::Certificate",
          "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}}}"#;

    fn catalog(config: &str) -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("fixed.json"), BODY).expect("template");
        let config = Config::parse(config, dir.path()).expect("config");
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let (store, _) = Store::open(&dir.path().join("s.redb"), false, metrics).expect("store");
        let c = Catalog::load(&config, store, &[], 1_000).expect("catalog");
        (dir, c)
    }

    fn create(body: &str) -> Create {
        Create {
            body: body.into(),
            description: "lamps".into(),
            enabled: true,
            role_arn: "arn:aws:iam::123456789012:role/provisioning".into(),
            hook: None,
        }
    }

    #[tokio::test]
    async fn versions_are_numbered_bounded_and_the_default_stays() {
        let (_dir, c) = catalog("");
        c.create("Fleet", create(BODY), 10).expect("create");
        assert!(matches!(
            c.create("Fleet", create(BODY), 11),
            Err(CatalogError::AlreadyExists(_))
        ));
        assert_eq!(c.create_version("Fleet", BODY.into(), false, 12), Ok(2));
        assert_eq!(c.create_version("Fleet", BODY.into(), true, 13), Ok(3));
        let t = c.get("Fleet").expect("get").template;
        assert_eq!(
            (t.default_version, t.modified_ms, t.created_ms),
            (3, 13, 10)
        );
        assert!(matches!(
            c.delete_version("Fleet", 3, 14),
            Err(CatalogError::DeleteConflict(_))
        ));
        c.delete_version("Fleet", 2, 14).expect("delete 2");
        c.create_version("Fleet", BODY.into(), false, 15)
            .expect("4");
        c.create_version("Fleet", BODY.into(), false, 16)
            .expect("5");
        c.create_version("Fleet", BODY.into(), false, 17)
            .expect("6");
        assert!(matches!(
            c.create_version("Fleet", BODY.into(), false, 18),
            Err(CatalogError::VersionsLimit(_))
        ));
        let ids: Vec<u32> = c
            .get("Fleet")
            .expect("get")
            .template
            .versions
            .keys()
            .copied()
            .collect();
        assert_eq!(ids, [1, 3, 4, 5, 6], "a deleted id is not given again");
        assert!(matches!(
            c.update(
                "Fleet",
                Update {
                    default_version: Some(2),
                    ..Update::default()
                },
                19
            ),
            Err(CatalogError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn bodies_names_and_hooks_are_checked() {
        let (_dir, c) = catalog("");
        assert!(matches!(
            c.create("Fleet", create("{\"Resources\": 1}"), 1),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            c.create("no spaces", create(BODY), 1),
            Err(CatalogError::Invalid(_))
        ));
        assert!(c.get("Fleet").is_err(), "nothing was made");
        assert!(
            c.hook("https://hooks.example/provision", "2020-04-01")
                .is_ok()
        );
        assert!(c.hook("http://127.0.0.1:9/provision", "2020-04-01").is_ok());
        for (target, version) in [
            (
                "arn:aws:lambda:us-east-1:123456789012:function:pre",
                "2020-04-01",
            ),
            ("http://hooks.example/provision", "2020-04-01"),
            ("https://hooks.example/provision", "2019-01-01"),
        ] {
            assert!(c.hook(target, version).is_err(), "{target} {version}");
        }
    }

    #[tokio::test]
    async fn config_templates_are_listed_but_not_changed() {
        let (_dir, c) = catalog(
            "[[provisioning.templates]]\nname = \"Fixed\"\nfile = \"fixed.json\"\nenabled = false\n",
        );
        let e = c.get("Fixed").expect("listed");
        assert_eq!((e.source, e.template.enabled), (Source::Config, false));
        assert!(matches!(c.live("Fixed"), Err(CatalogError::Invalid(_))));
        assert!(matches!(c.delete("Fixed"), Err(CatalogError::Conflict(_))));
        assert!(matches!(
            c.create("Fixed", create(BODY), 1),
            Err(CatalogError::AlreadyExists(_))
        ));
        assert!(matches!(
            c.create_version("Fixed", BODY.into(), true, 1),
            Err(CatalogError::Conflict(_))
        ));
    }
}
