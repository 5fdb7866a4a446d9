//! Substitution templates: `${expression}` inside action fields
//! (spec/aws-iot-shadow-rules.md §3.1), evaluated against the incoming
//! message, never the SELECT output.
//!
//! A template is parsed once when the rule is loaded; the closing `}` is
//! found while skipping quoted strings and nested braces, so object
//! literals inside an expression work.

use super::eval::{Message, Variables, render_expr};
use super::lexer::SqlError;
use super::parser::{Expr, parse_expr};
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses a template; errors carry the byte offset in `text`.
    pub fn parse(text: &str) -> Result<Self, SqlError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while let Some(off) = text[i..].find('$') {
            let at = i + off;
            literal.push_str(&text[i..at]);
            match text.as_bytes().get(at + 1) {
                // `$$` is a literal `$` (as in `$$aws/things/...`).
                Some(b'$') => {
                    literal.push('$');
                    i = at + 2;
                }
                Some(b'{') => {
                    let body_start = at + 2;
                    let len = closing_brace(&text[body_start..])
                        .ok_or_else(|| SqlError::new(at, "`${` without its `}`"))?;
                    let expr = parse_expr(&text[body_start..body_start + len])
                        .map_err(|e| SqlError::new(body_start + e.at, e.message))?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Expr(expr));
                    i = body_start + len + 1;
                }
                _ => {
                    literal.push('$');
                    i = at + 1;
                }
            }
        }
        literal.push_str(&text[i..]);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self(parts))
    }

    /// Whether rendering it may read the payload.
    pub fn reads_payload(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Part::Expr(e) if e.reads_payload()))
    }

    /// The text, when the template has no expression in it.
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(_) => return None,
            }
        }
        Some(out)
    }

    /// The text with every expression replaced by its string value
    /// (Undefined gives an empty string).
    pub fn render(&self, msg: &Message<'_>, variables: &Variables) -> String {
        self.render_with(msg, variables, |v, out| out.push_str(v))
    }

    /// [`Template::render`] for a URL: every substituted value is
    /// percent-encoded, so that no value can add a path segment, a query
    /// or a fragment to the template's own.
    pub fn render_url(&self, msg: &Message<'_>, variables: &Variables) -> String {
        self.render_with(msg, variables, |v, out| out.push_str(&uri_encode(v, false)))
    }

    fn render_with(
        &self,
        msg: &Message<'_>,
        variables: &Variables,
        substitute: impl Fn(&str, &mut String),
    ) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => substitute(&render_expr(e, msg, variables), &mut out),
            }
        }
        out
    }

    /// The literal text before the first expression.
    pub fn literal_prefix(&self) -> &str {
        match self.0.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }
}

/// Percent-encodes everything but unreserved characters (and `/` if
/// asked), as botocore encodes path labels and query values.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Decodes `%XX` escapes, [`uri_encode`]'s inverse; botocore escapes every
/// reserved character of a path label (a topic's `/` and `$` included), so
/// split first, then decode.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Length of the expression up to its matching `}`, skipping quoted strings and nested braces.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') if depth == 0 => return Some(i),
            (None, '}') => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, payload: &str, topic: &str) -> String {
        let json = Message::parse_payload(payload.as_bytes());
        let msg = Message {
            topic,
            payload: payload.as_bytes(),
            json: json.as_ref(),
            client_id: Some("dev-1"),
            principal: None,
            timestamp_ms: 1234,
            account: "000000000000",
        };
        let mut vars = Variables::new();
        vars.insert("t".into(), serde_json::json!(42));
        Template::parse(template)
            .expect("valid template")
            .render(&msg, &vars)
    }

    #[test]
    fn spec_examples() {
        let p = r#"{"device_id": "d7", "obj": {"a": [1, 2]}, "n": 2.5}"#;
        assert_eq!(render("${topic()}/republish", p, "a/b"), "a/b/republish");
        assert_eq!(render("device/${device_id}", p, "a/b"), "device/d7");
        assert_eq!(
            render(
                "${replace(topic(), '/', '-') + '-' + timestamp()}",
                p,
                "a/b"
            ),
            "a-b-1234"
        );
        assert_eq!(
            render("x/${missing}/y", p, "t"),
            "x//y",
            "Undefined is empty"
        );
        assert_eq!(render("${obj}", p, "t"), r#"{"a":[1,2]}"#);
        assert_eq!(render("${n}", p, "t"), "2.5");
        assert_eq!(
            render("${ {'k': '}'}.k }", p, "t"),
            "}",
            "braces in strings and literals"
        );
        assert_eq!(render("plain", p, "t"), "plain");
        assert_eq!(
            render("${@t}/x", p, "t"),
            "42/x",
            "SET variables are visible"
        );
        assert_eq!(
            render("$$aws/things/${topic(2)}/shadow/update", p, "a/lamp"),
            "$aws/things/lamp/shadow/update"
        );
        assert_eq!(render("cost: 5$", p, "t"), "cost: 5$");
    }

    #[test]
    fn errors_point_into_the_template() {
        let e = Template::parse("a/${topic(}").expect_err("bad expression");
        assert!(e.at >= 4, "{e}");
        let e = Template::parse("a/${topic()").expect_err("unclosed");
        assert_eq!(e.at, 2);
        let e = Template::parse("$$a/${topic(}").expect_err("bad expression");
        assert!(e.at >= 6, "{e}");
    }
}
