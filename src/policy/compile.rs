//! Compiling policy documents for one connection: policy variables are
//! substituted, ARN heads are checked against this gateway's partition,
//! region and account, and conditions are decided, so that evaluating a
//! request afterwards only matches actions and resources.
//!
//! Pure. Rules (spec/aws-iot-auth.md §1.7-§1.9):
//! - `${key}` takes the key's first value, as literal text: a client id
//!   with `*` in it is not a wildcard. `${*}`, `${?}` and `${$}` are the
//!   literal characters.
//! - A resource pattern with an unresolved variable never matches, whether
//!   its statement allows or denies.
//! - A condition on an absent key is false, except for negated operators
//!   (true), `...IfExists` (true), `ForAllValues:` (true) and
//!   `ForAnyValue:` (false); `Null` tests presence.
//! - Keys compare case-insensitively.

use super::document::{BaseOperator, Cidr, Condition, Document, SetQualifier};
use super::eval::{CompiledStatement, Glob, PolicySet, ResourcePattern};
use std::net::IpAddr;
use std::sync::Arc;

/// Values of the condition keys and policy variables for one connection.
#[derive(Debug, Clone, Default)]
pub struct Context {
    vars: Vec<(String, Vec<String>)>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a single-valued key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.set_all(key, vec![value.into()])
    }

    /// Sets a multi-valued key (e.g. `iot:ConnectAttributes`).
    pub fn set_all(&mut self, key: &str, values: Vec<String>) -> &mut Self {
        let key = key.to_ascii_lowercase();
        self.vars.retain(|(k, _)| *k != key);
        self.vars.push((key, values));
        self
    }

    /// Removes every key that starts with `prefix` (lowercase).
    pub fn remove_prefix(&mut self, prefix: &str) {
        self.vars.retain(|(k, _)| !k.starts_with(prefix));
    }

    /// The values of a key, if it is present.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.vars
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
    }

    /// Every key that is set, for explanations.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(k, _)| k.as_str())
    }
}

/// A context in two allocations, for a connection to keep all its life:
/// it is read only to compile again, when the policies or the principal
/// change, where a [`Context`] holds an allocation per key and per value.
#[derive(Debug, Clone, Default)]
pub struct PackedContext {
    /// Every key kept as text and every value, one after another.
    text: Box<str>,
    /// Per key: its length (or, with [`NUMBERED`], its number in [`KEYS`]),
    /// its number of values, then each value's length.
    lens: Box<[u32]>,
}

/// Keys a packed context names by number. Every connection's context has
/// the same few dozen keys (`iot:certificate.subject.commonname.list`,
/// `iot:connection.thing.thingname`, ...): as text they were most of what
/// it held. Process-wide; at most [`KEYS_MAX`] of them, since thing
/// attributes' names are the registry's to choose, and a key past that is
/// kept as text.
static KEYS: std::sync::LazyLock<parking_lot::RwLock<Keys>> =
    std::sync::LazyLock::new(Default::default);

const KEYS_MAX: usize = if cfg!(test) { 256 } else { 4096 };

/// A key's length with this bit set is the key's number instead.
const NUMBERED: u32 = 1 << 31;

#[derive(Default)]
struct Keys {
    names: Vec<Arc<str>>,
    numbers: std::collections::HashMap<Arc<str>, u32>,
}

/// `key`'s number, given it now if it has none and there is room.
fn key_number(key: &str) -> Option<u32> {
    if let Some(&n) = KEYS.read().numbers.get(key) {
        return Some(n);
    }
    let mut keys = KEYS.write();
    if let Some(&n) = keys.numbers.get(key) {
        return Some(n);
    }
    if keys.names.len() >= KEYS_MAX {
        return None;
    }
    let n = u32::try_from(keys.names.len()).ok()?;
    let name: Arc<str> = key.into();
    keys.names.push(name.clone());
    keys.numbers.insert(name, n);
    Some(n)
}

impl PackedContext {
    /// Packs `ctx`; `None` if a key is 2 GiB long or a value 4 GiB.
    pub fn pack(ctx: &Context) -> Option<Self> {
        let mut text = String::new();
        let mut lens = Vec::new();
        for (key, values) in &ctx.vars {
            match key_number(key) {
                Some(n) => lens.push(NUMBERED | n),
                None => {
                    lens.push(len32(key.len()).filter(|n| n & NUMBERED == 0)?);
                    text.push_str(key);
                }
            }
            lens.push(len32(values.len())?);
            for v in values {
                lens.push(len32(v.len())?);
                text.push_str(v);
            }
        }
        Some(Self {
            text: text.into_boxed_str(),
            lens: lens.into_boxed_slice(),
        })
    }

    /// The context again, to compile with.
    pub fn unpack(&self) -> Context {
        let mut vars = Vec::new();
        let mut text = &*self.text;
        let mut take = |n: u32| {
            let (head, rest) = text.split_at_checked(n as usize).unwrap_or((text, ""));
            text = rest;
            head.to_owned()
        };
        let mut lens = self.lens.iter().copied();
        while let (Some(key), Some(count)) = (lens.next(), lens.next()) {
            let key = if key & NUMBERED == 0 {
                take(key)
            } else {
                let keys = KEYS.read();
                let name = keys.names.get((key & !NUMBERED) as usize);
                name.map(|k| k.to_string()).unwrap_or_default()
            };
            let values = lens.by_ref().take(count as usize).map(&mut take).collect();
            vars.push((key, values));
        }
        Context { vars }
    }
}

fn len32(n: usize) -> Option<u32> {
    u32::try_from(n).ok()
}

/// This gateway's place in ARNs.
#[derive(Debug, Clone)]
pub struct ArnHead {
    /// `aws`
    pub partition: String,
    /// e.g. `us-east-1`
    pub region: String,
    /// e.g. `000000000000`
    pub account: String,
}

impl ArnHead {
    /// The head used for every resource of this gateway.
    pub fn new(region: &str, account: &str) -> Self {
        Self {
            partition: "aws".into(),
            region: region.into(),
            account: account.into(),
        }
    }

    /// `arn:aws:iot:REGION:ACCOUNT:KIND/NAME`.
    pub fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:{}:iot:{}:{}:{kind}/{name}",
            self.partition, self.region, self.account
        )
    }
}

/// Compiles named documents for a connection described by `ctx`.
pub fn compile<'a>(
    documents: impl IntoIterator<Item = (&'a Arc<str>, &'a Document)>,
    head: &ArnHead,
    ctx: &Context,
) -> PolicySet {
    let mut statements = Vec::new();
    for (name, doc) in documents {
        for (index, st) in doc.statements.iter().enumerate() {
            if !st.conditions.iter().all(|c| holds(c, ctx, doc.variables)) {
                continue;
            }
            let resolved: Option<Vec<ResourcePattern>> = st
                .resources
                .iter()
                .map(|r| resource(r, head, ctx, doc.variables))
                .collect();
            let resources = match (resolved, st.not_resource) {
                (Some(r), _) => r,
                // An unresolved NotResource would widen the statement to
                // everything; like an unresolved Resource, it matches nothing.
                (None, true) => continue,
                (None, false) => st
                    .resources
                    .iter()
                    .map(|r| {
                        resource(r, head, ctx, doc.variables).unwrap_or(ResourcePattern::Never)
                    })
                    .collect(),
            };
            statements.push(CompiledStatement {
                policy: name.clone(),
                index,
                sid: st.sid.as_deref().map(Arc::from),
                effect: st.effect,
                actions: st.actions.iter().flat_map(|a| action_globs(a)).collect(),
                not_action: st.not_action,
                resources,
                not_resource: st.not_resource,
            });
        }
    }
    PolicySet { statements }
}

/// The patterns a statement's action stands for, lowercase. AWS names the
/// jobs data-plane actions with `iotjobsdata:` as well as `iot:`: such a
/// pattern stands for the jobs actions it matches, and for nothing else.
fn action_globs(action: &str) -> Vec<Glob> {
    let lower = action.to_ascii_lowercase();
    match lower.strip_prefix("iotjobsdata:") {
        None => vec![Glob::new(&lower)],
        Some(rest) => {
            let wanted = Glob::new(rest);
            super::eval::JOBS_DATA_ACTIONS
                .iter()
                .map(|a| a.name())
                .filter(|n| n.strip_prefix("iot:").is_some_and(|n| wanted.matches(n)))
                .map(Glob::new)
                .collect()
        }
    }
}

/// Policy variables and condition keys the documents use that `ctx` lacks
/// (TestAuthorization's `missingContextValues`).
pub fn missing<'a>(
    documents: impl IntoIterator<Item = &'a Document>,
    ctx: &Context,
) -> Vec<String> {
    let mut out = used_keys(documents);
    out.retain(|key| ctx.get(key).is_none());
    out
}

/// Every policy variable and condition key the documents use, once each,
/// as first written: all a compilation can read of a context.
pub fn used_keys<'a>(documents: impl IntoIterator<Item = &'a Document>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut note = |key: &str| {
        if !["*", "?", "$"].contains(&key) && !out.iter().any(|k| k == key) {
            out.push(key.to_owned());
        }
    };
    for doc in documents {
        for st in &doc.statements {
            let texts = st
                .resources
                .iter()
                .chain(st.conditions.iter().flat_map(|c| &c.values));
            for text in texts {
                let mut rest = text.as_str();
                while let Some(start) = rest.find("${") {
                    let after = &rest[start + 2..];
                    let Some(end) = after.find('}') else { break };
                    note(&after[..end]);
                    rest = &after[end + 1..];
                }
            }
            for c in &st.conditions {
                note(&c.key);
            }
        }
    }
    out
}

/// Substitutes variables into a pattern; `None` if one is unresolved.
fn substitute(text: &str, ctx: &Context, variables: bool) -> Option<Glob> {
    let mut glob = Glob::default();
    if !variables {
        glob.push_pattern(text);
        return Some(glob);
    }
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        glob.push_pattern(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        match &after[..end] {
            "*" => glob.push_literal("*"),
            "?" => glob.push_literal("?"),
            "$" => glob.push_literal("$"),
            key => glob.push_literal(ctx.get(key)?.first()?),
        }
        rest = &after[end + 1..];
    }
    glob.push_pattern(rest);
    Some(glob)
}

/// A resource pattern for this gateway; `None` if a variable in it is unresolved.
fn resource(
    pattern: &str,
    head: &ArnHead,
    ctx: &Context,
    variables: bool,
) -> Option<ResourcePattern> {
    if pattern == "*" {
        return Some(ResourcePattern::Any);
    }
    // arn:partition:service:region:account:path; the path may contain ':'.
    let mut parts = pattern.splitn(6, ':');
    let fields: Vec<&str> = parts.by_ref().take(5).collect();
    let Some(path) = parts.next() else {
        return Some(ResourcePattern::Never);
    };
    let ours = [
        "arn",
        head.partition.as_str(),
        "iot",
        &head.region,
        &head.account,
    ];
    let mut head_ok = fields.len() == 5;
    for (f, o) in fields.iter().zip(ours) {
        head_ok &= substitute(f, ctx, variables)?.matches(o);
    }
    if !head_ok {
        return Some(ResourcePattern::Never);
    }
    substitute(path, ctx, variables).map(ResourcePattern::Path)
}

/// Whether a condition holds for the connection.
pub fn holds(c: &Condition, ctx: &Context, variables: bool) -> bool {
    let op = c.operator;
    let present = ctx.get(&c.key).filter(|v| !v.is_empty());
    if op.base == BaseOperator::Null {
        // "true": the key must be absent; "false": present.
        return c
            .values
            .iter()
            .any(|v| v.eq_ignore_ascii_case("true") == present.is_none());
    }
    let Some(actual) = present else {
        return op.if_exists
            || match op.set {
                Some(SetQualifier::AllValues) => true,
                Some(SetQualifier::AnyValue) => false,
                None => op.base.is_negated(),
            };
    };
    // Condition values with unresolved variables match nothing.
    let hit = |a: &String| {
        c.values
            .iter()
            .any(|w| value_matches(op.base, a, w, ctx, variables))
    };
    let negated = op.base.is_negated();
    match (op.set, negated) {
        (Some(SetQualifier::AllValues), false) => actual.iter().all(hit),
        (Some(SetQualifier::AllValues), true) => actual.iter().all(|a| !hit(a)),
        (Some(SetQualifier::AnyValue), true) => actual.iter().any(|a| !hit(a)),
        (_, false) => actual.iter().any(hit),
        (None, true) => !actual.iter().any(hit),
    }
}

/// Substitutes variables into a condition value as plain text.
fn substitute_text(text: &str, ctx: &Context, variables: bool) -> Option<String> {
    if !variables || !text.contains("${") {
        return Some(text.to_owned());
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        match &after[..end] {
            lit @ ("*" | "?" | "$") => out.push_str(lit),
            key => out.push_str(ctx.get(key)?.first()?),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether the key's value `actual` matches the condition value `wanted`
/// under the positive form of `op`. Substituted variables are literal text,
/// never wildcards.
fn value_matches(
    op: BaseOperator,
    actual: &str,
    wanted: &str,
    ctx: &Context,
    variables: bool,
) -> bool {
    use BaseOperator::*;
    match op {
        StringLike | StringNotLike => {
            substitute(wanted, ctx, variables).is_some_and(|g| g.matches(actual))
        }
        // IAM matches ARNs field by field (wildcards allowed in Equals too),
        // so `*` never crosses a `:` between the first five fields.
        ArnEquals | ArnNotEquals | ArnLike | ArnNotLike => {
            let mut pattern = wanted.splitn(6, ':');
            let mut value = actual.splitn(6, ':');
            (0..6).all(|_| match (pattern.next(), value.next()) {
                (Some(p), Some(v)) => substitute(p, ctx, variables).is_some_and(|g| g.matches(v)),
                (None, None) => true,
                _ => false,
            })
        }
        _ => substitute_text(wanted, ctx, variables).is_some_and(|w| compare(op, actual, &w)),
    }
}

/// The positive form of each operator: equality for `StringNotEquals`, and so on.
fn compare(op: BaseOperator, actual: &str, wanted: &str) -> bool {
    use BaseOperator::*;
    let num = || Some((actual.parse::<f64>().ok()?, wanted.parse::<f64>().ok()?));
    match op {
        StringEquals | StringNotEquals => actual == wanted,
        StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => {
            actual.to_lowercase() == wanted.to_lowercase()
        }
        StringLike | StringNotLike | ArnEquals | ArnNotEquals | ArnLike | ArnNotLike => {
            Glob::new(wanted).matches(actual)
        }
        NumericEquals | NumericNotEquals => num().is_some_and(|(a, w)| a == w),
        NumericLessThan => num().is_some_and(|(a, w)| a < w),
        NumericLessThanEquals => num().is_some_and(|(a, w)| a <= w),
        NumericGreaterThan => num().is_some_and(|(a, w)| a > w),
        NumericGreaterThanEquals => num().is_some_and(|(a, w)| a >= w),
        Bool => actual.eq_ignore_ascii_case(wanted),
        IpAddress | NotIpAddress => match (actual.parse::<IpAddr>(), Cidr::parse(wanted)) {
            (Ok(ip), Some(net)) => net.contains(ip),
            _ => false,
        },
        Null => false,
    }
}

#[cfg(test)]
mod tests;
