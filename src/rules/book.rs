//! The rules in force: those written in `config.toml` (read-only through
//! the API: the file governs them) and those made through the control
//! plane (kept in the store under `rule/NAME`), always compiled and
//! installed together, so that a change either takes effect whole, at
//! once, or is refused with every problem.
//!
//! Rules travel through the API as AWS's `TopicRulePayload` (camelCase,
//! `ruleDisabled`, `awsIotSqlVersion`); they are kept as the same
//! [`config::Rule`] that `[[rules]]` is read into, so both kinds compile
//! and render alike.

use super::RuleSet;
use super::engine::Engine;
use crate::config::{self, Config};
use crate::store::{Op, Store, now_ms};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Why a rule change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// No such rule.
    #[error("{0}")]
    NotFound(String),
    /// An API rule of that name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The rule belongs to `config.toml`.
    #[error("{0}")]
    Conflict(String),
    /// The payload is not a rule edgegate can run (every problem).
    #[error("{0}")]
    Invalid(String),
    /// The SQL does not parse.
    #[error("{0}")]
    Sql(String),
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[rules]]` in `config.toml`.
    Config,
    /// The control plane.
    Api,
}

/// One rule as the API shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The rule.
    pub rule: config::Rule,
    /// Where it comes from.
    pub source: Source,
    /// When it was made through the API, ms since the epoch (0 for `config.toml`).
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    rule: config::Rule,
    created_ms: u64,
}

#[derive(Default)]
struct State {
    config: Vec<config::Rule>,
    api: BTreeMap<String, Stored>,
}

/// Both kinds of rules, and the engine they are installed in.
pub struct Book {
    actions: config::Actions,
    upstream: Option<config::Upstream>,
    store: Store,
    state: Mutex<State>,
    engine: OnceLock<Arc<Engine>>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Book")
    }
}

const PREFIX: &str = "rule/";

impl Book {
    /// The rules of `config` and the API rules among the stored registry records.
    pub fn new(config: &Config, store: Store, records: &[(String, Vec<u8>)]) -> Self {
        let api = records
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(PREFIX)?;
                let stored = serde_json::from_slice::<Stored>(v)
                    .map_err(
                        |e| tracing::warn!(key = %k, error = %e, "unreadable rule record skipped"),
                    )
                    .ok()?;
                Some((name.to_owned(), stored))
            })
            .collect();
        Self {
            actions: config.actions.clone(),
            upstream: config.upstream.clone(),
            store,
            state: Mutex::new(State {
                config: config.rules.clone(),
                api,
            }),
            engine: OnceLock::new(),
        }
    }

    /// The rules to start the engine with: all of them if they compile
    /// together, else those of `config.toml` (each problem logged; the API
    /// rules stay stored and listed, and the next change retries).
    pub fn in_force(&self) -> Vec<config::Rule> {
        let state = self.state.lock();
        let all = union(&state);
        match self.compile(&all) {
            Ok(_) => all,
            Err(problems) => {
                for p in problems {
                    tracing::error!(problem = %p, "rules made through the API are not in force");
                }
                state.config.clone()
            }
        }
    }

    /// From now on, changes are installed in `engine`.
    pub fn attach(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    fn compile(&self, rules: &[config::Rule]) -> Result<RuleSet, Vec<String>> {
        RuleSet::compile_parts(rules, &self.actions, self.upstream.as_ref())
    }

    /// Compiles the state `change` makes and installs it, then queues the
    /// records it returns; on failure the state and the rules in force stay
    /// as they were, and every problem is returned.
    fn change<E>(
        &self,
        change: impl FnOnce(&mut State) -> Result<Vec<Op>, E>,
        problems: impl FnOnce(Vec<String>) -> E,
    ) -> Result<(), E> {
        let mut state = self.state.lock();
        let mut next = State {
            config: state.config.clone(),
            api: state.api.clone(),
        };
        let ops = change(&mut next)?;
        let set = self.compile(&union(&next)).map_err(problems)?;
        if let Some(engine) = self.engine.get() {
            engine.install(set);
        }
        if !ops.is_empty() {
            self.store.enqueue(ops);
        }
        *state = next;
        Ok(())
    }

    /// [`Book::change`] for the API, its problems in AWS's classes.
    fn apply(
        &self,
        change: impl FnOnce(&mut State) -> Result<Vec<Op>, BookError>,
    ) -> Result<(), BookError> {
        self.change(change, |problems| classify(&problems))
    }

    /// Swaps in the rules of a reloaded `config.toml`.
    pub fn set_config(&self, rules: Vec<config::Rule>) -> Result<(), Vec<String>> {
        self.change(
            |state| {
                state.config = rules;
                Ok(Vec::new())
            },
            |problems| problems,
        )
    }

    /// The rules of `config.toml` as last applied.
    pub fn config_rules(&self) -> Vec<config::Rule> {
        self.state.lock().config.clone()
    }

    /// Every rule, by name.
    pub fn list(&self) -> Vec<Entry> {
        let state = self.state.lock();
        let mut all: Vec<Entry> = state
            .config
            .iter()
            .map(|r| Entry {
                rule: r.clone(),
                source: Source::Config,
                created_ms: 0,
            })
            .chain(state.api.values().map(|s| Entry {
                rule: s.rule.clone(),
                source: Source::Api,
                created_ms: s.created_ms,
            }))
            .collect();
        all.sort_by(|a, b| a.rule.name.cmp(&b.rule.name));
        all
    }

    /// One rule.
    pub fn get(&self, name: &str) -> Result<Entry, BookError> {
        self.list()
            .into_iter()
            .find(|e| e.rule.name == name)
            .ok_or_else(|| no_rule(name))
    }

    /// CreateTopicRule.
    pub fn create(&self, name: &str, payload: &Value) -> Result<(), BookError> {
        let rule = from_payload(name, payload)?;
        self.apply(|state| {
            writable(state, name)?;
            if state.api.contains_key(name) {
                return Err(BookError::AlreadyExists(format!(
                    "Rule {name} already exists"
                )));
            }
            let stored = Stored {
                rule,
                created_ms: now_ms(),
            };
            let op = put(name, &stored);
            state.api.insert(name.to_owned(), stored);
            Ok(vec![op])
        })
    }

    /// ReplaceTopicRule.
    pub fn replace(&self, name: &str, payload: &Value) -> Result<(), BookError> {
        let rule = from_payload(name, payload)?;
        self.apply(|state| {
            writable(state, name)?;
            let stored = state.api.get_mut(name).ok_or_else(|| no_rule(name))?;
            stored.rule = rule;
            Ok(vec![put(name, stored)])
        })
    }

    /// Enable/DisableTopicRule.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), BookError> {
        self.apply(|state| {
            writable(state, name)?;
            let stored = state.api.get_mut(name).ok_or_else(|| no_rule(name))?;
            stored.rule.enabled = enabled;
            Ok(vec![put(name, stored)])
        })
    }

    /// DeleteTopicRule.
    pub fn delete(&self, name: &str) -> Result<(), BookError> {
        self.apply(|state| {
            writable(state, name)?;
            state.api.remove(name).ok_or_else(|| no_rule(name))?;
            Ok(vec![Op::DelRegistry(format!("{PREFIX}{name}"))])
        })
    }
}

fn union(state: &State) -> Vec<config::Rule> {
    state
        .config
        .iter()
        .chain(state.api.values().map(|s| &s.rule))
        .cloned()
        .collect()
}

/// A rule of `config.toml` cannot be changed through the API.
fn writable(state: &State, name: &str) -> Result<(), BookError> {
    if state.config.iter().any(|r| r.name == name) {
        return Err(BookError::Conflict(format!(
            "Rule {name} is defined in config.toml; change it there (rules made through the API are the only ones the API changes)"
        )));
    }
    Ok(())
}

fn no_rule(name: &str) -> BookError {
    BookError::NotFound(format!("Rule {name} does not exist"))
}

/// Compile problems as one error: SQL problems are AWS's `SqlParseException`.
fn classify(problems: &[String]) -> BookError {
    let message = problems.join("; ");
    if problems.iter().all(|p| p.contains(": sql: ")) {
        BookError::Sql(message)
    } else {
        BookError::Invalid(message)
    }
}

fn put(name: &str, stored: &Stored) -> Op {
    Op::PutRegistry(
        format!("{PREFIX}{name}"),
        serde_json::to_vec(stored).unwrap_or_default(),
    )
}

/// The actions edgegate runs, by their name in a payload.
const ACTIONS: [&str; 4] = ["republish", "http", "file", "upstream"];

/// A `TopicRulePayload` as a rule.
pub fn from_payload(name: &str, payload: &Value) -> Result<config::Rule, BookError> {
    let invalid = |m: String| BookError::Invalid(m);
    let sql = payload["sql"]
        .as_str()
        .ok_or_else(|| invalid("sql is required".into()))?;
    let action = |v: &Value| -> Result<config::RuleAction, BookError> {
        let (kind, body) = match v.as_object() {
            Some(m) if m.len() == 1 => m.iter().next().map(|(k, b)| (k.clone(), b.clone())),
            _ => None,
        }
        .ok_or_else(|| invalid("an action is an object with exactly one member".into()))?;
        if !ACTIONS.contains(&kind.as_str()) {
            return Err(invalid(format!(
                "action `{kind}` is not supported by this gateway (republish, http, file, upstream)"
            )));
        }
        let mut tagged = Map::new();
        tagged.insert(kind.clone(), keys(&body, snake));
        serde_json::from_value(Value::Object(tagged))
            .map_err(|e| invalid(format!("action `{kind}`: {e}")))
    };
    let actions = payload["actions"]
        .as_array()
        .map(|a| a.iter().map(action).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let error_action = match &payload["errorAction"] {
        Value::Null => None,
        v => Some(action(v)?),
    };
    Ok(config::Rule {
        name: name.to_owned(),
        sql: sql.to_owned(),
        sql_version: payload["awsIotSqlVersion"]
            .as_str()
            .unwrap_or("2016-03-23")
            .to_owned(),
        enabled: !payload["ruleDisabled"].as_bool().unwrap_or(false),
        description: payload["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        actions,
        error_action,
    })
}

/// A rule as AWS's `TopicRule` (GetTopicRule's `rule`).
pub fn to_payload(rule: &config::Rule) -> Value {
    let action = |a: &config::RuleAction| keys(&serde_json::to_value(a).unwrap_or_default(), camel);
    let mut v = serde_json::json!({
        "ruleName": rule.name,
        "sql": rule.sql,
        "description": rule.description,
        "actions": rule.actions.iter().map(action).collect::<Vec<_>>(),
        "ruleDisabled": !rule.enabled,
        "awsIotSqlVersion": rule.sql_version,
    });
    if let Some(e) = &rule.error_action {
        v["errorAction"] = action(e);
    }
    v
}

/// The value with every object key renamed, and members that say nothing
/// (null, false, empty) dropped: those are the defaults both ways.
fn keys(v: &Value, rename: fn(&str) -> String) -> Value {
    let empty = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (rename(k), keys(v, rename)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| keys(v, rename)).collect()),
        v => v.clone(),
    }
}

/// `roleArn` → `role_arn`.
fn snake(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 4);
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `role_arn` → `roleArn`.
fn camel(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut up = false;
    for c in k.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_round_trips_through_the_rule() {
        let payload = serde_json::json!({
            "sql": "SELECT * FROM 'a/+'",
            "description": "d",
            "ruleDisabled": true,
            "awsIotSqlVersion": "2016-03-23",
            "actions": [{"republish": {"topic": "b/${topic(2)}", "qos": 1, "roleArn": "arn:aws:iam::1:role/r",
                                        "headers": {"contentType": "application/json",
                                                    "userProperties": [{"key": "k", "value": "v"}]}}}],
            "errorAction": {"http": {"url": "https://example.com/e", "headers": [{"key": "a", "value": "b"}]}},
        });
        let rule = from_payload("r1", &payload).expect("valid");
        assert!(!rule.enabled);
        let back = to_payload(&rule);
        assert_eq!(
            back["actions"][0]["republish"]["roleArn"],
            "arn:aws:iam::1:role/r"
        );
        assert_eq!(
            back["actions"][0]["republish"]["headers"]["userProperties"][0]["key"],
            "k"
        );
        assert_eq!(back["errorAction"]["http"]["url"], "https://example.com/e");
        assert_eq!(back["ruleDisabled"], true);
        assert_eq!(from_payload("r1", &back).expect("again"), rule);
    }

    #[test]
    fn unsupported_actions_and_members_are_named() {
        let lambda = serde_json::json!({"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {"functionArn": "x"}}]});
        let Err(BookError::Invalid(m)) = from_payload("r", &lambda) else {
            panic!("lambda accepted");
        };
        assert!(m.contains("`lambda` is not supported"), "{m}");
        let odd = serde_json::json!({"sql": "SELECT * FROM 'a'", "actions": [{"http": {"url": "https://x", "confirmationUrl": "https://x"}}]});
        let Err(BookError::Invalid(m)) = from_payload("r", &odd) else {
            panic!("unknown member accepted");
        };
        assert!(m.contains("confirmation_url"), "{m}");
        assert!(matches!(
            from_payload("r", &serde_json::json!({})),
            Err(BookError::Invalid(_))
        ));
    }
}
