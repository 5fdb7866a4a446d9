//! The rules engine: AWS IoT SQL selects published messages and actions
//! take the result elsewhere (spec/aws-iot-shadow-rules.md §2-§3).
//!
//! - [`crate::sql`] (P): the language, shared with the bridge.
//! - This module: `[[rules]]` compiled into a [`RuleSet`], checked as a
//!   whole, so a reload either swaps in every rule or keeps the old set.
//! - [`actions`]: what each action makes of a rule's output (a spooled
//!   [`actions::Job`]) and how a job is delivered.
//! - [`book`]: the rules of `config.toml` and those made through the
//!   control plane, installed together.
//! - [`engine`]: takes messages from the router's tap, evaluates them
//!   outside connection tasks, appends jobs to one durable spool per
//!   action, and delivers each spool in order with retries.

pub mod actions;
pub mod book;
pub mod engine;

use crate::config::{self, RuleAction};
use crate::sql;
use crate::topic;
use actions::ActionKind;
use std::collections::HashSet;
use std::sync::Arc;

/// AWS's limit on actions per rule.
const MAX_ACTIONS: usize = 10;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Its name.
    pub name: Arc<str>,
    /// The statement.
    pub stmt: sql::Statement,
    /// Whether it matches anything.
    pub enabled: bool,
    /// Its actions, in order.
    pub actions: Vec<Action>,
    /// Where failures go.
    pub error_action: Option<Action>,
    /// Skips SQL: its actions take the incoming payload as it is
    /// (`[[upstream.forward]]` mappings).
    pub verbatim: bool,
}

impl Rule {
    /// Whether evaluating it may read the payload as JSON: every SQL rule
    /// may; a forward mapping only if its topic template does.
    pub fn reads_payload(&self) -> bool {
        !self.verbatim
            || self
                .actions
                .iter()
                .any(|a| !matches!(&a.kind, ActionKind::Upstream(u) if !u.reads_payload()))
    }
}

/// One compiled action and the spool it feeds.
#[derive(Debug)]
pub struct Action {
    /// The spool's name: `rules/<rule>/<label>`, where the label (`0`, `1`,
    /// ... or `error`) names the action in metrics.
    pub spool: Arc<str>,
    /// What it does.
    pub kind: ActionKind,
}

/// Every rule, compiled and checked.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// In configuration order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Compiles `[[rules]]`; on failure, every problem, each naming its
    /// rule and, for SQL and templates, the byte position.
    ///
    /// `[[upstream.forward]]` mappings compile as rules of their own,
    /// `upstream_forward_<n>`: `SELECT * FROM '<filter>'` with one upstream
    /// action, so a forwarded publish is acknowledged once it is in the
    /// bridge's spool, exactly like any rule output.
    pub fn compile(config: &config::Config) -> Result<Self, Vec<String>> {
        Self::compile_parts(&config.rules, &config.actions, config.upstream.as_ref())
    }

    /// [`RuleSet::compile`] from the parts of a configuration (a reload
    /// takes new rules with the running settings).
    pub fn compile_parts(
        rules: &[config::Rule],
        settings: &config::Actions,
        bridge: Option<&config::Upstream>,
    ) -> Result<Self, Vec<String>> {
        let forward_rules: Vec<config::Rule> = bridge
            .iter()
            .flat_map(|u| u.forward.iter())
            .enumerate()
            .map(|(i, f)| config::Rule {
                name: format!("upstream_forward_{i}"),
                sql: format!("SELECT * FROM '{}'", f.filter.replace('\'', "''")),
                sql_version: "2016-03-23".into(),
                enabled: true,
                description: String::new(),
                actions: vec![RuleAction::Upstream(config::UpstreamAction {
                    topic: f.topic.clone(),
                    qos: f.qos,
                })],
                error_action: None,
            })
            .collect();
        let mut set = Self::compile_rules(rules.iter().chain(&forward_rules), settings, bridge)?;
        for rule in set.rules.iter_mut().skip(rules.len()) {
            rule.verbatim = true;
        }
        Ok(set)
    }

    fn compile_rules<'a>(
        rules: impl Iterator<Item = &'a config::Rule>,
        settings: &config::Actions,
        bridge: Option<&config::Upstream>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in rules.enumerate() {
            let at = format!("rules[{i}] `{}`", r.name);
            let before = problems.len();
            if !valid_rule_name(&r.name) {
                problems.push(format!("{at}: name must be 1 to 128 of [a-zA-Z0-9_]"));
            }
            if !names.insert(r.name.as_str()) {
                problems.push(format!("{at}: another rule has this name"));
            }
            if !matches!(r.sql_version.as_str(), "2016-03-23" | "beta") {
                problems.push(format!(
                    "{at}: sql_version `{}` is not supported; use 2016-03-23 or beta",
                    r.sql_version
                ));
            }
            if r.actions.len() > MAX_ACTIONS {
                problems.push(format!("{at}: more than {MAX_ACTIONS} actions"));
            }
            let stmt = match sql::parse(&r.sql) {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(format!("{at}: sql: position {}: {}", e.at, e.message));
                    None
                }
            };
            if let Some(s) = &stmt
                && let Err(e) = topic::validate_filter(&s.from)
            {
                problems.push(format!("{at}: sql: FROM '{}': {e}", s.from));
            }
            let mut compile = |label: String, a: &RuleAction| {
                let spool = match a {
                    RuleAction::Upstream(_) => crate::spool::UPSTREAM.to_owned(),
                    _ => format!("rules/{}/{label}", r.name),
                };
                match ActionKind::compile(a, settings, bridge) {
                    Ok(kind) => Some(Action {
                        spool: spool.into(),
                        kind,
                    }),
                    Err(e) => {
                        problems.push(format!("{at}: action {label}: {e}"));
                        None
                    }
                }
            };
            let actions: Vec<_> = r
                .actions
                .iter()
                .enumerate()
                .filter_map(|(n, a)| compile(n.to_string(), a))
                .collect();
            let error_action = r
                .error_action
                .as_ref()
                .and_then(|a| compile("error".into(), a));
            if problems.len() == before
                && let Some(stmt) = stmt
            {
                out.push(Rule {
                    name: r.name.as_str().into(),
                    stmt,
                    enabled: r.enabled,
                    actions,
                    error_action,
                    verbatim: false,
                });
            }
        }
        if problems.is_empty() {
            Ok(Self { rules: out })
        } else {
            Err(problems)
        }
    }

    /// The FROM filters of the enabled rules, and each one's Basic Ingest
    /// filter (`$aws/rules/<name>/#`), under its rule's position: what the
    /// router offers the engine, and which rules a message's topic selects.
    pub fn filters(&self) -> crate::router::FilterIndex {
        let ingest: Vec<(usize, String)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled)
            .map(|(i, r)| (i, format!("{}{}/#", crate::topic::BASIC_INGEST, r.name)))
            .collect();
        crate::router::FilterIndex::new(
            self.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.enabled)
                .map(|(i, r)| (i, r.stmt.from.as_str()))
                .chain(ingest.iter().map(|(i, f)| (*i, f.as_str()))),
        )
    }
}

/// AWS's rule name pattern: `^[a-zA-Z0-9_]+$`, 1 to 128 characters.
fn valid_rule_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml: &str) -> Result<RuleSet, Vec<String>> {
        let cfg = config::Config::parse(toml, std::path::Path::new("/srv")).expect("config parses");
        RuleSet::compile(&cfg)
    }

    #[test]
    fn compiles_a_rule_with_every_action() {
        let set = rules(
            r#"
            [[rules]]
            name = "temps"
            sql = "SELECT temp FROM 'sensors/+/temp' WHERE temp > 30"
            actions = [
              { republish = { topic = "alerts/${topic(2)}", qos = 1 } },
              { http = { url = "https://example.com/in/${topic(2)}", headers = [{ key = "x-id", value = "${clientid()}" }] } },
              { file = { path = "temps/${topic(2)}.jsonl" } },
            ]
            error_action = { republish = { topic = "rules/errors" } }
            "#,
        )
        .expect("valid");
        let r = &set.rules[0];
        assert_eq!(r.actions.len(), 3);
        assert_eq!(&*r.actions[2].spool, "rules/temps/2");
        assert_eq!(
            r.error_action.as_ref().map(|a| &*a.spool),
            Some("rules/temps/error")
        );
        let filters = set.filters();
        assert!(filters.matches_any("sensors/kitchen/temp"));
        assert!(!filters.matches_any("sensors/kitchen/humidity"));
    }

    #[test]
    fn reports_rule_and_position() {
        let problems = rules(
            r#"
            [[rules]]
            name = "ok"
            sql = "SELECT * FROM 'a'"
            [[rules]]
            name = "broken"
            sql = "SELECT * FROM 'a' WHERE"
            [[rules]]
            name = "bad-name"
            sql = "SELECT * FROM 'a/#/b'"
            actions = [{ file = { path = "../escape" } }, { http = { url = "http://example.com/" } }]
            "#,
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("rules[1] `broken`: sql: position 23"), "{all}");
        assert!(all.contains("rules[2] `bad-name`: name must be"), "{all}");
        assert!(all.contains("FROM 'a/#/b'"), "{all}");
        assert!(all.contains("action 0: path"), "{all}");
        assert!(all.contains("action 1: url"), "{all}");
    }

    #[test]
    fn forward_mappings_are_rules_and_upstream_actions_need_a_bridge() {
        let set = rules(
            r#"
            [upstream]
            endpoint = "broker.example:8883"
            client_id = "edge-1"
            [[upstream.forward]]
            filter = "telemetry/#"
            topic = "edge-1/${topic()}"
            "#,
        )
        .expect("valid");
        assert_eq!(&*set.rules[0].name, "upstream_forward_0");
        assert_eq!(set.rules[0].stmt.from, "telemetry/#");
        assert_eq!(&*set.rules[0].actions[0].spool, crate::spool::UPSTREAM);
        let problems = rules(
            r#"
            [[rules]]
            name = "up"
            sql = "SELECT * FROM 'a'"
            actions = [{ upstream = { topic = "b" } }]
            "#,
        )
        .expect_err("no bridge");
        assert!(
            problems[0].contains("no [upstream] section"),
            "{problems:?}"
        );
    }

    #[test]
    fn duplicate_names_and_versions_are_refused() {
        let problems = rules(
            r#"
            [[rules]]
            name = "a"
            sql = "SELECT * FROM 'a'"
            sql_version = "2015-10-08"
            [[rules]]
            name = "a"
            sql = "SELECT * FROM 'b'"
            "#,
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("sql_version `2015-10-08`"), "{all}");
        assert!(all.contains("another rule has this name"), "{all}");
    }
}
