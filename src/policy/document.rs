//! The JSON model of an AWS IoT policy document, and its validation.
//!
//! Grammar per spec/aws-iot-auth.md §1.1 (IAM's): `Statement` is an object
//! or an array; `Action`/`NotAction` and `Resource`/`NotResource` take a
//! string or an array, exactly one of each pair; `Effect` is `Allow` or
//! `Deny`, case-sensitive; `Condition` maps operators to keys to one or more
//! values. Unknown members are errors, so a typo never silently widens or
//! narrows what a device may do. Every problem is reported, each with the
//! statement it is in.

use serde_json::{Map, Value};
use std::fmt;
use std::net::IpAddr;

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants the matched actions.
    Allow,
    /// Refuses them, whatever else allows them.
    Deny,
}

/// One statement, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// Optional statement id, for explanations.
    pub sid: Option<String>,
    /// Allow or Deny.
    pub effect: Effect,
    /// Action patterns.
    pub actions: Vec<String>,
    /// True for `NotAction`: the statement applies to every other action.
    pub not_action: bool,
    /// Resource patterns (ARNs or `*`).
    pub resources: Vec<String>,
    /// True for `NotResource`.
    pub not_resource: bool,
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

/// A condition operator with its IAM qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    /// The comparison.
    pub base: BaseOperator,
    /// `ForAllValues:` or `ForAnyValue:`, for multi-valued keys.
    pub set: Option<SetQualifier>,
    /// The `...IfExists` suffix: true when the key is absent.
    pub if_exists: bool,
}

/// `ForAllValues:` / `ForAnyValue:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetQualifier {
    /// Every value of the key must match (true for an empty key).
    AllValues,
    /// At least one value of the key must match.
    AnyValue,
}

/// The IAM condition operators the gateway evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseOperator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    Bool,
    IpAddress,
    NotIpAddress,
    ArnEquals,
    ArnNotEquals,
    ArnLike,
    ArnNotLike,
    Null,
}

impl BaseOperator {
    fn parse(name: &str) -> Option<Self> {
        use BaseOperator::*;
        Some(match name {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringEqualsIgnoreCase" => StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => StringNotEqualsIgnoreCase,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "NumericEquals" => NumericEquals,
            "NumericNotEquals" => NumericNotEquals,
            "NumericLessThan" => NumericLessThan,
            "NumericLessThanEquals" => NumericLessThanEquals,
            "NumericGreaterThan" => NumericGreaterThan,
            "NumericGreaterThanEquals" => NumericGreaterThanEquals,
            "Bool" => Bool,
            "IpAddress" => IpAddress,
            "NotIpAddress" => NotIpAddress,
            "ArnEquals" => ArnEquals,
            "ArnNotEquals" => ArnNotEquals,
            "ArnLike" => ArnLike,
            "ArnNotLike" => ArnNotLike,
            "Null" => Null,
            _ => return None,
        })
    }

    /// Negated operators hold when the key is absent, as in IAM.
    pub fn is_negated(self) -> bool {
        use BaseOperator::*;
        matches!(
            self,
            StringNotEquals
                | StringNotEqualsIgnoreCase
                | StringNotLike
                | NumericNotEquals
                | NotIpAddress
                | ArnNotEquals
                | ArnNotLike
        )
    }
}

impl Operator {
    /// Parses `ForAnyValue:StringLikeIfExists` and the like.
    pub fn parse(text: &str) -> Option<Self> {
        let (set, rest) = match text.split_once(':') {
            Some(("ForAllValues", rest)) => (Some(SetQualifier::AllValues), rest),
            Some(("ForAnyValue", rest)) => (Some(SetQualifier::AnyValue), rest),
            Some(_) => return None,
            None => (None, text),
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) if b != "Null" => (b, true),
            _ => (rest, false),
        };
        Some(Self {
            base: BaseOperator::parse(base)?,
            set,
            if_exists,
        })
    }
}

/// One operator applied to one key with its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The operator.
    pub operator: Operator,
    /// The condition key, e.g. `aws:SourceIp`.
    pub key: String,
    /// Values, OR-ed.
    pub values: Vec<String>,
}

/// A parsed, validated policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Statements in document order.
    pub statements: Vec<Statement>,
    /// Whether `${...}` policy variables are substituted (Version 2012-10-17).
    pub variables: bool,
}

/// A problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Index of the statement (0-based), if the problem is inside one.
    pub statement: Option<usize>,
    /// Line and column in the file, for JSON syntax errors.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "line {line}, column {column}: ")?;
        }
        if let Some(i) = self.statement {
            write!(f, "statement {i}: ")?;
        }
        f.write_str(&self.message)
    }
}

struct Errors(Vec<PolicyError>);

impl Errors {
    fn at(&mut self, statement: Option<usize>, message: impl Into<String>) {
        self.0.push(PolicyError {
            statement,
            position: None,
            message: message.into(),
        });
    }
}

/// Parses and validates a policy document, reporting every problem.
pub fn parse(text: &str) -> Result<Document, Vec<PolicyError>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        vec![PolicyError {
            statement: None,
            position: Some((e.line(), e.column())),
            message: format!("invalid JSON: {e}"),
        }]
    })?;
    let mut errors = Errors(Vec::new());
    let Value::Object(root) = value else {
        errors.at(None, "a policy document is a JSON object");
        return Err(errors.0);
    };
    let mut variables = false;
    let mut statements = Vec::new();
    let mut seen_statement = false;
    for (key, value) in &root {
        match key.as_str() {
            "Version" => match value.as_str() {
                Some("2012-10-17") => variables = true,
                Some("2008-10-17") => {}
                _ => errors.at(None, "Version must be \"2012-10-17\" (or \"2008-10-17\")"),
            },
            "Id" => {}
            "Statement" => {
                seen_statement = true;
                let list: Vec<&Value> = match value {
                    Value::Array(items) => items.iter().collect(),
                    Value::Object(_) => vec![value],
                    _ => {
                        errors.at(None, "Statement must be an object or an array of objects");
                        continue;
                    }
                };
                if list.is_empty() {
                    errors.at(None, "Statement is empty");
                }
                for (i, st) in list.into_iter().enumerate() {
                    if let Some(s) = statement(st, i, &mut errors) {
                        statements.push(s);
                    }
                }
            }
            other => errors.at(None, format!("unknown member `{other}`")),
        }
    }
    if !seen_statement {
        errors.at(None, "missing Statement");
    }
    if !variables && text.contains("${") {
        errors.at(
            None,
            "policy variables need \"Version\": \"2012-10-17\"; without it `${...}` would be literal text",
        );
    }
    if errors.0.is_empty() {
        Ok(Document {
            statements,
            variables,
        })
    } else {
        Err(errors.0)
    }
}

fn statement(value: &Value, i: usize, errors: &mut Errors) -> Option<Statement> {
    let Value::Object(map) = value else {
        errors.at(Some(i), "a statement is a JSON object");
        return None;
    };
    let before = errors.0.len();
    let mut effect = None;
    let mut sid = None;
    let mut actions = None;
    let mut resources = None;
    let mut conditions = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "Sid" => match value.as_str() {
                Some(s) => sid = Some(s.to_owned()),
                None => errors.at(Some(i), "Sid must be a string"),
            },
            "Effect" => match value.as_str() {
                Some("Allow") => effect = Some(Effect::Allow),
                Some("Deny") => effect = Some(Effect::Deny),
                _ => errors.at(
                    Some(i),
                    "Effect must be \"Allow\" or \"Deny\" (case-sensitive)",
                ),
            },
            "Action" | "NotAction" => {
                if actions.is_some() {
                    errors.at(Some(i), "only one of Action and NotAction");
                }
                actions = strings(value, key, i, errors).map(|v| (v, key == "NotAction"));
            }
            "Resource" | "NotResource" => {
                if resources.is_some() {
                    errors.at(Some(i), "only one of Resource and NotResource");
                }
                resources = strings(value, key, i, errors).map(|v| (v, key == "NotResource"));
            }
            "Condition" => conditions = condition_block(value, i, errors),
            "Principal" | "NotPrincipal" => {
                errors.at(Some(i), format!("{key} is not used in AWS IoT policies"));
            }
            other => errors.at(Some(i), format!("unknown member `{other}`")),
        }
    }
    if effect.is_none()
        && !errors.0[before..]
            .iter()
            .any(|e| e.message.starts_with("Effect"))
    {
        errors.at(Some(i), "missing Effect");
    }
    if actions.is_none() && !map.contains_key("Action") && !map.contains_key("NotAction") {
        errors.at(Some(i), "missing Action or NotAction");
    }
    if resources.is_none() && !map.contains_key("Resource") && !map.contains_key("NotResource") {
        errors.at(Some(i), "missing Resource or NotResource");
    }
    if let Some((list, _)) = &actions {
        for a in list {
            if a != "*" && !a.contains(':') {
                errors.at(
                    Some(i),
                    format!("action `{a}` is not of the form service:action"),
                );
            } else if super::vocabulary::unknown_action(a) {
                errors.at(
                    Some(i),
                    format!("unknown action `{a}`: AWS IoT has no such action"),
                );
            }
        }
    }
    if let Some((list, _)) = &resources {
        for r in list {
            if r != "*" && !r.starts_with("arn:") {
                errors.at(Some(i), format!("resource `{r}` is neither `*` nor an ARN"));
            } else if r != "*" && r.splitn(6, ':').count() < 6 {
                errors.at(
                    Some(i),
                    format!("resource `{r}` must have the form arn:partition:service:region:account:resource"),
                );
            }
        }
    }
    if errors.0.len() > before {
        return None;
    }
    let (actions, not_action) = actions?;
    let (resources, not_resource) = resources?;
    Some(Statement {
        sid,
        effect: effect?,
        actions,
        not_action,
        resources,
        not_resource,
        conditions,
    })
}

fn strings(value: &Value, key: &str, i: usize, errors: &mut Errors) -> Option<Vec<String>> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) => out.push(s.to_owned()),
                    None => {
                        errors.at(Some(i), format!("{key} must hold only strings"));
                        return None;
                    }
                }
            }
            out
        }
        _ => {
            errors.at(
                Some(i),
                format!("{key} must be a string or an array of strings"),
            );
            return None;
        }
    };
    if list.is_empty() {
        errors.at(Some(i), format!("{key} is empty"));
        return None;
    }
    Some(list)
}

fn condition_block(value: &Value, i: usize, errors: &mut Errors) -> Vec<Condition> {
    let Value::Object(ops) = value else {
        errors.at(Some(i), "Condition must be an object of operators");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (op_name, keys) in ops {
        let Some(operator) = Operator::parse(op_name) else {
            errors.at(Some(i), format!("unknown condition operator `{op_name}`"));
            continue;
        };
        let Value::Object(keys) = keys else {
            errors.at(
                Some(i),
                format!("{op_name} must map condition keys to values"),
            );
            continue;
        };
        condition_keys(operator, op_name, keys, i, errors, &mut out);
    }
    out
}

fn condition_keys(
    operator: Operator,
    op_name: &str,
    keys: &Map<String, Value>,
    i: usize,
    errors: &mut Errors,
    out: &mut Vec<Condition>,
) {
    for (key, value) in keys {
        if super::vocabulary::unknown_key(key) {
            errors.at(Some(i), format!("{op_name}: unknown condition key `{key}`"));
            continue;
        }
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let values: Option<Vec<String>> = match value {
            Value::Array(items) => items.iter().map(scalar).collect(),
            v => scalar(v).map(|s| vec![s]),
        };
        // An empty list is allowed, as in AWS's connect policy examples
        // (`"iot:ConnectAttributes": []`): no value matches it.
        match values {
            Some(values) => {
                let bad = values.iter().find(|v| !value_fits(operator.base, v));
                if let Some(v) = bad {
                    errors.at(
                        Some(i),
                        format!("{op_name}: `{v}` is not a valid value for this operator"),
                    );
                    continue;
                }
                out.push(Condition {
                    operator,
                    key: key.clone(),
                    values,
                });
            }
            _ => errors.at(
                Some(i),
                format!("{op_name}: `{key}` needs a string, number, boolean or an array of them"),
            ),
        }
    }
}

/// Values that an operator can never use are caught when the policy is loaded.
fn value_fits(op: BaseOperator, v: &str) -> bool {
    use BaseOperator::*;
    if v.contains("${") {
        return true;
    }
    match op {
        Bool | Null => v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"),
        NumericEquals
        | NumericNotEquals
        | NumericLessThan
        | NumericLessThanEquals
        | NumericGreaterThan
        | NumericGreaterThanEquals => v.parse::<f64>().is_ok(),
        IpAddress | NotIpAddress => Cidr::parse(v).is_some(),
        _ => true,
    }
}

/// An IPv4 or IPv6 network, for `IpAddress` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { net, bits })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (ip, self.net) {
            (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let net = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(
            net.contains("::ffff:10.0.0.1".parse().expect("ip")),
            "mapped v4"
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("any")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains("2001:db8::1".parse().expect("ip")));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(
            Cidr::parse("1.2.3.4")
                .expect("host")
                .contains("1.2.3.4".parse().expect("ip"))
        );
    }

    #[test]
    fn spec_example_parses() {
        let doc = parse(
            r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
     "Resource": "arn:aws:iot:us-east-1:123456789012:topic/dev/${iot:ClientId}/*"},
    {"Effect": "Deny", "NotAction": "iot:Publish", "NotResource": ["*"],
     "Condition": {"ForAnyValue:StringLikeIfExists": {"iot:ClientId": ["a*", 5, true]}}}
  ]
}"#,
        )
        .expect("valid");
        assert!(doc.variables);
        assert_eq!(doc.statements.len(), 3);
        assert_eq!(
            doc.statements[1].actions,
            vec!["iot:Publish", "iot:Receive"]
        );
        let c = &doc.statements[2].conditions[0];
        assert_eq!(c.operator.set, Some(SetQualifier::AnyValue));
        assert!(c.operator.if_exists);
        assert_eq!(c.operator.base, BaseOperator::StringLike);
        assert_eq!(c.values, vec!["a*", "5", "true"]);
        assert!(doc.statements[2].not_action && doc.statements[2].not_resource);
    }

    #[test]
    fn a_single_statement_object_is_allowed() {
        let doc = parse(r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}"#)
            .expect("valid");
        assert_eq!(doc.statements.len(), 1);
        assert!(!doc.variables);
    }

    #[test]
    fn every_problem_is_reported_with_its_statement() {
        let errors = parse(
            r#"{"Version": "2012-10-17", "Extra": 1, "Statement": [
                {"Effect": "allow", "Action": "iot:Publish", "Resource": "*"},
                {"Effect": "Allow", "Action": "Publish", "Resource": "topic/x"},
                {"Effect": "Deny", "Action": "iot:*", "NotAction": "iot:Connect", "Resource": "*"},
                {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": {"StringWeird": {"k": "v"}}},
                {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "300.1.1.1/8"}}},
                {"Action": "iot:*"}
            ]}"#,
        )
        .expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for needle in [
            "unknown member `Extra`",
            "statement 0: Effect must be",
            "statement 1: action `Publish`",
            "statement 1: resource `topic/x`",
            "statement 2: only one of Action and NotAction",
            "statement 3: unknown condition operator `StringWeird`",
            "statement 4: IpAddress: `300.1.1.1/8`",
            "statement 5: missing Effect",
            "statement 5: missing Resource",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let errors = parse("{\n  \"Statement\": [\n    {\"Effect\": }\n]}").expect_err("invalid");
        assert_eq!(errors.len(), 1);
        let (line, _) = errors[0].position.expect("position");
        assert_eq!(line, 3);
    }

    #[test]
    fn variables_need_the_2012_version() {
        let errors = parse(
            r#"{"Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:r:a:client/${iot:ClientId}"}}"#,
        )
        .expect_err("needs version");
        assert!(errors[0].message.contains("2012-10-17"));
    }

    #[test]
    fn operators_parse_with_qualifiers() {
        let op = Operator::parse("ForAllValues:StringNotEqualsIgnoreCaseIfExists").expect("op");
        assert_eq!(op.base, BaseOperator::StringNotEqualsIgnoreCase);
        assert_eq!(op.set, Some(SetQualifier::AllValues));
        assert!(op.if_exists);
        assert!(Operator::parse("Null").is_some());
        assert!(Operator::parse("Sometimes:StringEquals").is_none());
    }
}
