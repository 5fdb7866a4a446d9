//! Evaluation of AWS IoT SQL over one message (spec/aws-iot-shadow-rules.md
//! §2.2-§2.9), under SQL version 2016-03-23.
//!
//! Values are JSON values plus Undefined (`None`). Attribute access borrows
//! from the parsed payload (`Cow::Borrowed`), so a rule reads a message
//! without copying it; only computed values are owned. The payload is
//! parsed once per message, by the caller, however many rules read it.
//! Nothing here panics on any payload or statement: wrong types, failed
//! conversions and bad arguments give Undefined, as AWS does.

use super::parser::{BinOp, Expr, Item, Nested, Select, Statement};
use crate::registry::identity::uuid_v4;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// A value, or Undefined.
type V<'a> = Option<Cow<'a, Value>>;

/// What a statement can see of one message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// The raw payload.
    pub payload: &'a [u8],
    /// The payload parsed, if it is a JSON object.
    pub json: Option<&'a Value>,
    /// The publisher's client id; `None` when not published over MQTT.
    pub client_id: Option<&'a str>,
    /// The publisher's principal (certificate id).
    pub principal: Option<&'a str>,
    /// Now, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The account id, for `accountid()`.
    pub account: &'a str,
}

impl<'a> Message<'a> {
    /// Parses a payload the way the rules engine sees it: only a JSON
    /// object is JSON (a bare number or string is "non-JSON").
    pub fn parse_payload(payload: &[u8]) -> Option<Value> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => None,
        }
    }
}

/// What a rule produced for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A JSON document (objects, and `SELECT VALUE` results).
    Json(Value),
    /// The raw payload (`SELECT *` on a non-JSON payload).
    Raw(Vec<u8>),
    /// `SELECT VALUE` gave Undefined: the rule produces nothing.
    Nothing,
    /// The statement cannot apply to this message (e.g. `*` with other
    /// items on a binary payload): an action failure, for the error action.
    Invalid(&'static str),
}

impl Output {
    /// The bytes actions send.
    pub fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Self::Json(v) => v.to_string().into_bytes().into(),
            Self::Raw(b) => b.as_slice().into(),
            Self::Nothing | Self::Invalid(_) => (&[][..]).into(),
        }
    }
}

/// The state of one evaluation.
struct Eval<'a, 'm> {
    msg: &'m Message<'a>,
    vars: HashMap<&'m str, V<'m>>,
}

/// The `SET` variables of one evaluation, for the action templates.
pub type Variables = HashMap<String, Value>;

/// What a statement made of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// `None` when WHERE does not hold.
    pub output: Option<Output>,
    /// The `SET` variables (Undefined ones left out).
    pub variables: Variables,
}

/// Runs a statement over a message.
pub fn evaluate<'m>(stmt: &'m Statement, msg: &'m Message<'_>) -> Evaluation {
    let mut ev = Eval {
        msg,
        vars: HashMap::new(),
    };
    for (name, expr) in &stmt.set {
        let v = ev.expr(expr, msg.json);
        ev.vars.insert(name.as_str(), v);
    }
    let holds = stmt
        .filter
        .as_ref()
        .is_none_or(|f| is_true(&ev.expr(f, msg.json)));
    let output = holds.then(|| ev.select(&stmt.select, msg.json));
    let variables = ev
        .vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.into_owned())))
        .collect();
    Evaluation { output, variables }
}

/// An expression's value as template text: strings as they are, objects
/// and arrays as compact JSON, Undefined and Null as nothing.
pub fn render_expr(e: &Expr, msg: &Message<'_>, variables: &Variables) -> String {
    let ev = Eval {
        msg,
        vars: variables
            .iter()
            .map(|(k, v)| (k.as_str(), Some(Cow::Borrowed(v))))
            .collect(),
    };
    ev.expr(e, msg.json)
        .as_deref()
        .and_then(text)
        .unwrap_or_default()
}

/// Whether WHERE holds: Boolean true, or the string "true".
fn is_true(v: &V<'_>) -> bool {
    match v.as_deref() {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn int(i: i64) -> V<'static> {
    Some(Cow::Owned(Value::from(i)))
}

fn dec(d: f64) -> V<'static> {
    if !d.is_finite() {
        return None;
    }
    // A whole number is an Int under 2016-03-23.
    if d.fract() == 0.0 && d.abs() < 9.0e15 {
        return int(d as i64);
    }
    Number::from_f64(d).map(|n| Cow::Owned(Value::Number(n)))
}

fn string(s: impl Into<String>) -> V<'static> {
    Some(Cow::Owned(Value::String(s.into())))
}

fn boolean(b: bool) -> V<'static> {
    Some(Cow::Owned(Value::Bool(b)))
}

/// A number as Int when it is whole, else Decimal.
enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    fn f(&self) -> f64 {
        match self {
            Self::Int(i) => *i as f64,
            Self::Dec(d) => *d,
        }
    }
}

/// Implicit conversion to a number (§2.4): numbers, and numeric strings.
fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Num::Int(i)),
            None => {
                let d = n.as_f64()?;
                Some(if d.fract() == 0.0 && d.abs() < 9.0e15 {
                    Num::Int(d as i64)
                } else {
                    Num::Dec(d)
                })
            }
        },
        // Numeric strings (exactly `-?\d+(\.\d+)?(E-?\d+)?`) convert to Decimal.
        Value::String(s) if numeric_string(s) => {
            let d: f64 = s.parse().ok()?;
            d.is_finite().then_some(Num::Dec(d))
        }
        _ => None,
    }
}

/// Whether a string is a number as AWS IoT SQL reads one (§2.4).
fn numeric_string(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let s = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e.strip_prefix('-').unwrap_or(e)))
}

/// Implicit conversion to a string (§2.4).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
        Value::Null => None,
    }
}

/// Implicit conversion to a Boolean: Booleans and "true"/"false".
fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// `=` semantics (§2.5): numbers numerically, arrays in order, objects by key;
/// mismatched types are unequal.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => match (num(a), num(b)) {
            (Some(Num::Int(x)), Some(Num::Int(y))) => x == y,
            (Some(x), Some(y)) => x.f() == y.f(),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        (Value::Null, Value::Null) => true,
        _ => a == b,
    }
}

impl<'a, 'm> Eval<'a, 'm> {
    /// Evaluates an expression; `scope` is the object bare names resolve in.
    fn expr(&self, e: &'m Expr, scope: Option<&'m Value>) -> V<'m> {
        match e {
            Expr::Int(i) => int(*i),
            Expr::Decimal(d) => dec(*d),
            Expr::Str(s) => string(s.clone()),
            Expr::Bool(b) => boolean(*b),
            Expr::Null => Some(Cow::Owned(Value::Null)),
            Expr::Attr(name) => scope?.get(name).map(Cow::Borrowed),
            Expr::Variable(name) => self.vars.get(name.as_str()).cloned().flatten(),
            // `*` outside a function call is only meaningful in SELECT.
            Expr::Star => scope.map(Cow::Borrowed),
            Expr::Member(inner, name) => match self.expr(inner, scope)? {
                Cow::Borrowed(v) => v.get(name).map(Cow::Borrowed),
                Cow::Owned(v) => v.get(name).cloned().map(Cow::Owned),
            },
            Expr::Index(inner, index) => {
                let i = self.expr(index, scope)?;
                let i = match num(&i)? {
                    Num::Int(i) => usize::try_from(i).ok()?,
                    Num::Dec(_) => return None,
                };
                match self.expr(inner, scope)? {
                    Cow::Borrowed(v) => v.get(i).map(Cow::Borrowed),
                    Cow::Owned(v) => v.get(i).cloned().map(Cow::Owned),
                }
            }
            Expr::Neg(inner) => match num(self.expr(inner, scope).as_deref()?)? {
                Num::Int(i) => i.checked_neg().map_or_else(|| dec(-(i as f64)), int),
                Num::Dec(d) => dec(-d),
            },
            Expr::Not(inner) => boolean(!truth(self.expr(inner, scope).as_deref()?)?),
            Expr::Binary(op, l, r) => self.binary(*op, l, r, scope),
            Expr::Call(name, args) => self.call(name, args, scope),
            Expr::Cast(inner, ty) => cast(self.expr(inner, scope).as_deref()?, ty),
            Expr::Case {
                subject,
                arms,
                otherwise,
            } => {
                let subject = match subject {
                    Some(s) => Some(self.expr(s, scope)?),
                    None => None,
                };
                for (when, then) in arms {
                    let w = self.expr(when, scope);
                    let hit = match (&subject, &w) {
                        (Some(s), Some(w)) => equal(s, w),
                        (None, w) => is_true(w),
                        _ => false,
                    };
                    if hit {
                        return self.expr(then, scope);
                    }
                }
                otherwise.as_ref().and_then(|o| self.expr(o, scope))
            }
            Expr::Object(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    if let Some(v) = self.expr(v, scope) {
                        m.insert(k.clone(), v.into_owned());
                    }
                }
                Some(Cow::Owned(Value::Object(m)))
            }
            Expr::Array(items) => Some(Cow::Owned(Value::Array(
                items
                    .iter()
                    .filter_map(|i| self.expr(i, scope).map(Cow::into_owned))
                    .collect(),
            ))),
            Expr::Nested(n) => self.nested(n, scope),
        }
    }

    fn binary(&self, op: BinOp, l: &'m Expr, r: &'m Expr, scope: Option<&'m Value>) -> V<'m> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let a = truth(self.expr(l, scope).as_deref()?)?;
            let b = truth(self.expr(r, scope).as_deref()?)?;
            return boolean(if op == BinOp::And { a && b } else { a || b });
        }
        let a = self.expr(l, scope)?;
        let b = self.expr(r, scope)?;
        match op {
            BinOp::Eq => boolean(equal(&a, &b)),
            BinOp::Ne => boolean(!equal(&a, &b)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ordering = match (num(&a)?, num(&b)?) {
                    // Exact for integers beyond f64's precision.
                    (Num::Int(x), Num::Int(y)) => x.cmp(&y),
                    (x, y) => x.f().partial_cmp(&y.f())?,
                };
                boolean(match op {
                    BinOp::Lt => ordering.is_lt(),
                    BinOp::Le => ordering.is_le(),
                    BinOp::Gt => ordering.is_gt(),
                    _ => ordering.is_ge(),
                })
            }
            BinOp::Add if a.is_string() || b.is_string() => {
                string(format!("{}{}", text(&a)?, text(&b)?))
            }
            _ => arithmetic(op, num(&a)?, num(&b)?),
        }
    }

    fn select(&self, select: &'m Select, scope: Option<&'m Value>) -> Output {
        match select {
            Select::Value(e) => match self.expr(e, scope) {
                Some(v) => Output::Json(v.into_owned()),
                None => Output::Nothing,
            },
            Select::Items(items) => {
                if let [Item::Star] = items.as_slice() {
                    return match scope {
                        Some(v) => Output::Json(v.clone()),
                        None => Output::Raw(self.msg.payload.to_vec()),
                    };
                }
                let star = items.iter().any(|i| matches!(i, Item::Star));
                if star && scope.is_none() && !self.msg.payload.is_empty() {
                    return Output::Invalid("`*` with other items needs a JSON payload");
                }
                Output::Json(Value::Object(self.object(items, scope)))
            }
        }
    }

    fn object(&self, items: &'m [Item], scope: Option<&'m Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for item in items {
            match item {
                Item::Star => {
                    if let Some(Value::Object(m)) = scope {
                        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                Item::Expr(e, alias) => {
                    let Some(v) = self.expr(e, scope) else {
                        continue;
                    };
                    let key = match alias {
                        Some(a) => a.clone(),
                        None => implicit_name(e),
                    };
                    out.insert(key, v.into_owned());
                }
            }
        }
        out
    }

    fn nested(&self, n: &'m Nested, scope: Option<&'m Value>) -> V<'m> {
        let mut array = scope?;
        for step in &n.from {
            array = array.get(step)?;
        }
        let elements = array.as_array()?;
        let mut out = Vec::new();
        for element in elements {
            if let Some(f) = &n.filter
                && !is_true(&self.expr(f, Some(element)))
            {
                continue;
            }
            match &n.select {
                Select::Value(e) => {
                    if let Some(v) = self.expr(e, Some(element)) {
                        out.push(v.into_owned());
                    }
                }
                Select::Items(items) => out.push(Value::Object(self.object(items, Some(element)))),
            }
        }
        Some(Cow::Owned(Value::Array(out)))
    }

    fn call(&self, name: &str, args: &'m [Expr], scope: Option<&'m Value>) -> V<'m> {
        let arg = |i: usize| args.get(i).and_then(|a| self.expr(a, scope));
        let one_num = |f: fn(f64) -> f64| dec(f(num(arg(0).as_deref()?)?.f()));
        match (name, args.len()) {
            ("topic", 0) => string(self.msg.topic),
            ("topic", 1) => {
                let n = match num(arg(0).as_deref()?)? {
                    Num::Int(n) => usize::try_from(n).ok()?,
                    Num::Dec(_) => return None,
                };
                string(self.msg.topic.split('/').nth(n.checked_sub(1)?)?)
            }
            ("clientid", 0) => string(self.msg.client_id.unwrap_or("n/a")),
            ("principal", 0) => string(self.msg.principal?),
            ("timestamp", 0) => int(self.msg.timestamp_ms),
            ("accountid", 0) => string(self.msg.account),
            ("sql_version", 0) => string("2016-03-23"),
            ("newuuid", 0) => string(uuid_v4()),
            ("isundefined", 1) => boolean(arg(0).is_none()),
            ("isnull", 1) => boolean(matches!(arg(0).as_deref(), Some(Value::Null))),
            ("get", 2) => {
                let container = arg(0)?;
                let key = arg(1)?;
                let found = match (&*container, &*key) {
                    (Value::Object(m), Value::String(k)) => m.get(k).cloned(),
                    // Decimal indexes round, numeric strings truncate (§2.9); negative is Undefined.
                    (Value::Array(_) | Value::String(_), k) => {
                        let i = match (k, num(k)?) {
                            (_, Num::Int(i)) => i,
                            (Value::String(_), Num::Dec(d)) => d.trunc() as i64,
                            (_, Num::Dec(d)) => d.round() as i64,
                        };
                        let i = usize::try_from(i).ok()?;
                        match &*container {
                            Value::Array(a) => a.get(i).cloned(),
                            Value::String(s) => {
                                s.chars().nth(i).map(|c| Value::String(c.to_string()))
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                found.map(Cow::Owned)
            }
            ("nanvl", 2) => match arg(0) {
                Some(v) if !v.is_null() && !matches!(num(&v), Some(Num::Dec(d)) if d.is_nan()) => {
                    Some(v)
                }
                _ => arg(1),
            },
            ("lower", 1) => string(text(arg(0).as_deref()?)?.to_lowercase()),
            ("upper", 1) => string(text(arg(0).as_deref()?)?.to_uppercase()),
            ("length", 1) => int(text(arg(0).as_deref()?)?.chars().count() as i64),
            ("numbytes", 1) => int(text(arg(0).as_deref()?)?.len() as i64),
            ("trim", 1) => string(text(arg(0).as_deref()?)?.trim_matches([' ', '\t'])),
            ("ltrim", 1) => string(text(arg(0).as_deref()?)?.trim_start_matches([' ', '\t'])),
            ("rtrim", 1) => string(text(arg(0).as_deref()?)?.trim_end_matches([' ', '\t'])),
            ("startswith", 2) => {
                boolean(text(arg(0).as_deref()?)?.starts_with(&text(arg(1).as_deref()?)?))
            }
            ("endswith", 2) => {
                boolean(text(arg(0).as_deref()?)?.ends_with(&text(arg(1).as_deref()?)?))
            }
            ("indexof", 2) => {
                let s = text(arg(0).as_deref()?)?;
                let sub = text(arg(1).as_deref()?)?;
                int(s.find(&sub).map_or(-1, |b| s[..b].chars().count() as i64))
            }
            ("replace", 3) => string(
                text(arg(0).as_deref()?)?
                    .replace(&text(arg(1).as_deref()?)?, &text(arg(2).as_deref()?)?),
            ),
            ("substring", 2 | 3) => {
                let chars: Vec<char> = text(arg(0).as_deref()?)?.chars().collect();
                let bound = |v: V<'_>| -> Option<usize> {
                    let n = num(v.as_deref()?)?.f().floor().max(0.0) as usize;
                    Some(n.min(chars.len()))
                };
                let start = bound(arg(1))?;
                let end = if args.len() == 3 {
                    bound(arg(2))?
                } else {
                    chars.len()
                };
                string(if start >= end {
                    String::new()
                } else {
                    chars[start..end].iter().collect()
                })
            }
            ("concat", n) if n > 0 => {
                let values: Vec<Value> =
                    (0..n).filter_map(|i| arg(i).map(Cow::into_owned)).collect();
                if values.len() != n {
                    return None;
                }
                if values.iter().any(Value::is_array) {
                    let mut flat = Vec::new();
                    for v in values {
                        match v {
                            Value::Array(a) => flat.extend(a),
                            v => flat.push(v),
                        }
                    }
                    return Some(Cow::Owned(Value::Array(flat)));
                }
                string(values.iter().map(text).collect::<Option<String>>()?)
            }
            ("abs", 1) => match num(arg(0).as_deref()?)? {
                Num::Int(i) => i.checked_abs().map_or_else(|| dec((i as f64).abs()), int),
                Num::Dec(d) => dec(d.abs()),
            },
            ("round", 1) => whole(num(arg(0).as_deref()?)?, f64::round),
            ("floor", 1) => whole(num(arg(0).as_deref()?)?, f64::floor),
            ("ceil", 1) => whole(num(arg(0).as_deref()?)?, f64::ceil),
            ("sign", 1) => dec(match num(arg(0).as_deref()?)?.f() {
                x if x > 0.0 => 1.0,
                x if x < 0.0 => -1.0,
                _ => 0.0,
            }),
            ("sqrt", 1) => one_num(f64::sqrt),
            ("exp", 1) => one_num(f64::exp),
            ("ln", 1) => one_num(f64::ln),
            ("log", 1) => one_num(f64::log10),
            ("sin", 1) => one_num(f64::sin),
            ("cos", 1) => one_num(f64::cos),
            ("tan", 1) => one_num(f64::tan),
            ("power", 2) => dec(num(arg(0).as_deref()?)?
                .f()
                .powf(num(arg(1).as_deref()?)?.f())),
            ("mod" | "remainder", 2) => arithmetic(
                BinOp::Mod,
                num(arg(0).as_deref()?)?,
                num(arg(1).as_deref()?)?,
            ),
            ("encode", 2) if text(arg(1).as_deref()?)?.eq_ignore_ascii_case("base64") => {
                let bytes = match &args[0] {
                    Expr::Star => self.msg.payload.to_vec(),
                    _ => text(arg(0).as_deref()?)?.into_bytes(),
                };
                string(base64_encode(&bytes))
            }
            ("decode", 2) if text(arg(1).as_deref()?)?.eq_ignore_ascii_case("base64") => {
                let Some(bytes) = base64_decode(&text(arg(0).as_deref()?)?) else {
                    return Some(Cow::Owned(Value::Null));
                };
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => Some(Cow::Owned(v)),
                    Err(_) => string(String::from_utf8_lossy(&bytes).into_owned()),
                }
            }
            ("sha256", 1) => {
                let d = ring::digest::digest(
                    &ring::digest::SHA256,
                    text(arg(0).as_deref()?)?.as_bytes(),
                );
                string(
                    d.as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                )
            }
            // Unknown functions and wrong argument counts give Undefined (§2.9).
            _ => None,
        }
    }
}

/// An Int stays exact; a Decimal goes through `f` (round, floor, ceil).
fn whole(n: Num, f: fn(f64) -> f64) -> V<'static> {
    match n {
        Num::Int(i) => int(i),
        Num::Dec(d) => dec(f(d)),
    }
}

fn arithmetic(op: BinOp, a: Num, b: Num) -> V<'static> {
    if let (Num::Int(x), Num::Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        return match op {
            BinOp::Add => x
                .checked_add(y)
                .map_or_else(|| dec(x as f64 + y as f64), int),
            BinOp::Sub => x
                .checked_sub(y)
                .map_or_else(|| dec(x as f64 - y as f64), int),
            BinOp::Mul => x
                .checked_mul(y)
                .map_or_else(|| dec(x as f64 * y as f64), int),
            BinOp::Div => x.checked_div(y).and_then(int),
            BinOp::Mod => x.checked_rem(y).and_then(int),
            _ => None,
        };
    }
    let (x, y) = (a.f(), b.f());
    match op {
        BinOp::Add => dec(x + y),
        BinOp::Sub => dec(x - y),
        BinOp::Mul => dec(x * y),
        BinOp::Div if y != 0.0 => dec(x / y),
        BinOp::Mod if y != 0.0 => dec(x % y),
        _ => None,
    }
}

/// `cast(v AS type)` (§2.4).
fn cast(v: &Value, ty: &str) -> V<'static> {
    match ty {
        "string" | "nvarchar" | "text" | "ntext" | "varchar" => string(text(v)?),
        "int" | "integer" => match v {
            Value::Bool(b) => int(i64::from(*b)),
            v => whole(num(v)?, f64::floor),
        },
        "double" | "decimal" => match v {
            Value::Bool(b) => int(i64::from(*b)),
            v => match num(v)? {
                Num::Int(i) => int(i),
                Num::Dec(d) => dec(d),
            },
        },
        "bool" | "boolean" => match v {
            Value::Number(_) => boolean(num(v)?.f() != 0.0),
            v => boolean(truth(v)?),
        },
        _ => None,
    }
}

/// The key an unaliased SELECT item gets: a path's last segment, a
/// zero-argument function's name, else the expression's kind.
fn implicit_name(e: &Expr) -> String {
    match e {
        Expr::Attr(n) | Expr::Member(_, n) => n.clone(),
        Expr::Variable(n) => n.clone(),
        Expr::Call(n, _) => n.clone(),
        _ => "_".into(),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Each byte's value in [`B64`], 0xff outside it.
const B64_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 64 {
        t[B64[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Standard base64 with padding, as `encode(x, 'base64')` produces.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; `None` on a character outside the alphabet.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match B64_VALUE[usize::from(c)] {
            0xff => return None,
            v => u32::from(v),
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(sql: &str, payload: &str, topic: &str) -> Option<Output> {
        let stmt = parse(sql).expect("valid statement");
        let json = Message::parse_payload(payload.as_bytes());
        let msg = Message {
            topic,
            payload: payload.as_bytes(),
            json: json.as_ref(),
            client_id: Some("dev-1"),
            principal: Some("ab12"),
            timestamp_ms: 1_700_000_000_000,
            account: "000000000000",
        };
        evaluate(&stmt, &msg).output
    }

    fn value(sql: &str, payload: &str) -> Option<Value> {
        match run(sql, payload, "sensors/dev-1/temp")? {
            Output::Json(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn the_typical_rule() {
        let p = r#"{"a": 1, "b": {"c": "x"}, "temp": 31.5}"#;
        assert_eq!(
            value("SELECT a, b.c FROM 'x/+' WHERE temp > 30", p),
            Some(json!({"a": 1, "c": "x"}))
        );
        assert_eq!(run("SELECT a FROM 'x/+' WHERE temp > 40", p, "x/y"), None);
    }

    #[test]
    fn spec_select_semantics() {
        let p = r#"{"temp": 55, "color": "red", "e": [{"n": "temperature", "v": 20}, {"n": "h", "v": 3}]}"#;
        assert_eq!(
            value(
                "SELECT *, topic(2) AS device FROM 'sensors/+/temp' WHERE temp > 50",
                p
            ),
            Some(
                json!({"temp": 55, "color": "red", "e": [{"n": "temperature", "v": 20}, {"n": "h", "v": 3}], "device": "dev-1"})
            )
        );
        assert_eq!(value("SELECT VALUE color FROM 'x'", p), Some(json!("red")));
        assert_eq!(
            value(
                "SELECT (SELECT VALUE v FROM e WHERE n = 'temperature') AS t FROM 'x'",
                p
            ),
            Some(json!({"t": [20]}))
        );
        // Undefined keys are left out; null stays.
        assert_eq!(
            value("SELECT missing, n FROM 'x'", r#"{"n": null}"#),
            Some(json!({"n": null}))
        );
        // SET variables are usable in WHERE; aliases are not.
        assert_eq!(
            value(
                "SET @t = temp * 2 SELECT @t AS d FROM 'x' WHERE @t > 100",
                p
            ),
            Some(json!({"d": 110}))
        );
    }

    #[test]
    fn non_json_payloads() {
        // SELECT * passes the bytes through; attributes are Undefined.
        assert_eq!(
            run("SELECT * FROM 'x'", "\u{1}raw", "x"),
            Some(Output::Raw(b"\x01raw".to_vec()))
        );
        assert_eq!(run("SELECT * FROM 'x' WHERE a = 1", "80", "x"), None);
        assert_eq!(
            value("SELECT encode(*, 'base64') AS data FROM 'x'", "hi!"),
            Some(json!({"data": "aGkh"}))
        );
        assert_eq!(
            value(
                "SELECT decode('eyJ0IjozfQ==', 'base64').t AS t FROM 'x'",
                "{}"
            ),
            Some(json!({"t": 3}))
        );
    }

    #[test]
    fn operators_and_undefined() {
        let rows: &[(&str, Value)] = &[
            ("1 + 2 * 3", json!(7)),
            ("7 / 2", json!(3)),
            ("7.0 / 2", json!(3)),
            ("7.5 / 2.5", json!(3)),
            ("1.5 + 1", json!(2.5)),
            ("'a' + 1", json!("a1")),
            ("'5' - 2", json!(3)),
            ("10 % 4", json!(2)),
            ("-(3)", json!(-3)),
            ("1 = 1.0", json!(true)),
            ("'1' = 1", json!(false)),
            ("'1' <> 1", json!(true)),
            ("[1, 2] = [1, 2]", json!(true)),
            ("{'a': 1, 'b': 2} = {'b': 2, 'a': 1}", json!(true)),
            ("'10' > 9", json!(true)),
            ("true AND 'true'", json!(true)),
            ("NOT false", json!(true)),
            (
                "CASE 2 WHEN 1 THEN 'one' WHEN 2 THEN 'two' ELSE 'many' END",
                json!("two"),
            ),
            ("cast('12.7' AS Int)", json!(12)),
            ("cast(1 AS Boolean)", json!(true)),
            ("cast(3.5 AS String)", json!("3.5")),
            ("isUndefined(nothing)", json!(true)),
            ("isNull(null)", json!(true)),
            ("get([10, 20], 1)", json!(20)),
            ("get({'k': 'v'}, 'k')", json!("v")),
            ("get('abc', 1)", json!("b")),
            ("substring('012345', 2)", json!("2345")),
            ("substring(true, 1.2)", json!("rue")),
            ("lower('AbC') + upper('d')", json!("abcD")),
            ("length('héllo')", json!(5)),
            ("concat('a', 1, true)", json!("a1true")),
            ("concat([1], 2)", json!([1, 2])),
            ("indexof('hello', 'l')", json!(2)),
            ("round(-1.5)", json!(-2)),
            ("abs(-4)", json!(4)),
            ("topic()", json!("sensors/dev-1/temp")),
            ("topic(3)", json!("temp")),
            ("clientid()", json!("dev-1")),
            ("principal()", json!("ab12")),
            ("timestamp()", json!(1_700_000_000_000_i64)),
            ("nanvl(missing, 'x')", json!("x")),
            ("'7' / 2", json!(3.5)),
            ("9007199254740993 = 9007199254740992", json!(false)),
            ("9007199254740993 > 9007199254740992", json!(true)),
            (
                "cast(1700000000000000123 AS Int)",
                json!(1_700_000_000_000_000_123_i64),
            ),
            (
                "floor(1700000000000000123)",
                json!(1_700_000_000_000_000_123_i64),
            ),
            ("get('abc', '1.9')", json!("b")),
        ];
        for (expr, want) in rows {
            let got = value(&format!("SELECT VALUE {expr} FROM 'x'"), "{}");
            assert_eq!(got.as_ref(), Some(want), "{expr}");
        }
        for undefined in [
            "1 + true",
            "missing = 1",
            "1 / 0",
            "topic(9)",
            "CASE missing WHEN 1 THEN 2 END",
            "nosuchfunction(1)",
            "upper()",
            "'x' > 1",
            "true AND 1",
            "get([10, 20], -1.2)",
            "'+5' > 4",
            "' 5' > 4",
            "'5.' > 4",
        ] {
            assert_eq!(
                run(&format!("SELECT VALUE {undefined} FROM 'x'"), "{}", "x"),
                Some(Output::Nothing),
                "{undefined}"
            );
        }
        let uuid = value("SELECT VALUE newuuid() FROM 'x'", "{}").expect("uuid");
        assert_eq!(uuid.as_str().map(str::len), Some(36));
    }

    #[test]
    fn base64_roundtrips() {
        for s in ["", "a", "ab", "abc", "abcd", "\u{0}\u{ff}binary"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())),
                Some(s.as_bytes().to_vec())
            );
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("!!"), None);
    }

    proptest! {
        #[test]
        fn evaluating_arbitrary_json_never_panics(
            payload in "\\{(\"[a-c]\": ?(-?[0-9]{1,3}(\\.[0-9])?|\"[a-z0-9.]{0,4}\"|true|null|\\[\\]|\\{\\}),? ?){0,4}\\}",
            sql in prop_oneof![
                Just("SELECT * FROM 'x'"),
                Just("SELECT a + b AS s, c FROM 'x' WHERE a > b OR c = 'x'"),
                Just("SELECT VALUE a * b - c / a % b FROM 'x'"),
                Just("SELECT get(a, b), cast(c AS Int), substring(a, b, c), concat(a, b) FROM 'x'"),
                Just("SELECT VALUE CASE a WHEN b THEN c END FROM 'x' WHERE NOT a"),
            ],
        ) {
            let _ = run(sql, &payload, "x");
        }
    }
}
