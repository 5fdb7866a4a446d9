//! Topic rules: those made through the API, which persist and take effect
//! at once, and those of `config.toml`, listed but changed only there.

use super::things::with_next;
use super::{Call, Control, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::rules::book::{BookError, Entry, Source, to_payload};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

impl From<BookError> for AwsError {
    fn from(e: BookError) -> Self {
        let message = e.to_string();
        match e {
            // AWS answers a rule that does not exist as unauthorized: the
            // model gives these operations no not-found error.
            BookError::NotFound(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", message)
            }
            BookError::AlreadyExists(_) => Self::new(
                StatusCode::CONFLICT,
                "ResourceAlreadyExistsException",
                message,
            ),
            BookError::Conflict(_) => Self::new(
                StatusCode::CONFLICT,
                "ConflictingResourceUpdateException",
                message,
            ),
            BookError::Invalid(_) => Self::invalid_request(message),
            BookError::Sql(_) => Self::new(StatusCode::BAD_REQUEST, "SqlParseException", message),
        }
    }
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.rules.create(call.label(0), &call.json()?)?;
    done()
}

pub(super) fn replace(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.rules.replace(call.label(0), &call.json()?)?;
    done()
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.rules.delete(call.label(0))?;
    done()
}

pub(super) fn set_enabled(c: &Control, call: &Call<'_>, on: bool) -> Result<Response, AwsError> {
    c.rules.set_enabled(call.label(0), on)?;
    done()
}

pub(super) fn get(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let e = c.rules.get(call.label(0))?;
    let mut rule = to_payload(&e.rule);
    rule["createdAt"] = secs(e.created_ms).into();
    Ok(ok(json!({
        "ruleArn": c.arn("rule", &e.rule.name),
        "rule": rule,
        // Beyond AWS's shape: where the rule comes from, so that an operator
        // knows which ones only config.toml changes.
        "source": source(&e),
    })))
}

fn source(e: &Entry) -> &'static str {
    match e.source {
        Source::Config => "config.toml",
        Source::Api => "api",
    }
}

pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let topic = call.query("topic");
    let disabled = match call.query("ruleDisabled").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(AwsError::invalid_request(format!(
                "ruleDisabled: `{v}` is not true or false"
            )));
        }
    };
    let rules: Vec<(Entry, String)> = c
        .rules
        .list()
        .into_iter()
        .map(|e| {
            let from = crate::sql::parse(&e.rule.sql)
                .map(|s| s.from)
                .unwrap_or_default();
            (e, from)
        })
        .filter(|(e, from)| {
            topic.as_ref().is_none_or(|t| t == from) && disabled.is_none_or(|d| d != e.rule.enabled)
        })
        .collect();
    let page = paginate(
        rules,
        |(e, _)| &e.rule.name,
        call.query("nextToken"),
        call.query("maxResults"),
        100,
    )?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(e, from)| {
            json!({
                "ruleArn": c.arn("rule", &e.rule.name),
                "ruleName": e.rule.name,
                "topicPattern": from,
                "createdAt": secs(e.created_ms),
                "ruleDisabled": !e.rule.enabled,
                "source": source(e),
            })
        })
        .collect();
    Ok(ok(with_next(
        json!({ "rules": items }),
        "nextToken",
        page.next,
    )))
}
