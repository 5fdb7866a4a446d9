//! DescribeEventConfigurations and UpdateEventConfigurations: which
//! registry events the gateway publishes on `$aws/events/...`.

use super::{Call, Control, done, secs};
use crate::http::aws::{AwsError, ok};
use crate::registry::EVENT_TYPES;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub(super) fn describe(c: &Control) -> Result<Response, AwsError> {
    let e = c.registry.event_configurations();
    let configurations: Map<String, Value> = EVENT_TYPES
        .iter()
        .map(|t| ((*t).to_owned(), json!({"Enabled": e.enabled.contains(*t)})))
        .collect();
    Ok(ok(json!({
        "eventConfigurations": configurations,
        "creationDate": secs(e.created_ms),
        "lastModifiedDate": secs(e.modified_ms),
    })))
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let Some(given) = input["eventConfigurations"].as_object() else {
        return Err(AwsError::invalid_request("eventConfigurations is required"));
    };
    let mut changes = BTreeMap::new();
    for (kind, config) in given {
        let Some(on) = config["Enabled"].as_bool() else {
            return Err(AwsError::invalid_request(format!(
                "eventConfigurations.{kind}.Enabled must be true or false"
            )));
        };
        changes.insert(kind.clone(), on);
    }
    c.registry.update_event_configurations(&changes)?;
    done()
}
