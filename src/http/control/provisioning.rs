//! Provisioning templates and their versions: those made through the API,
//! which persist and take effect at once, and those of `config.toml`,
//! listed but changed only there.

use super::things::{optional_bool, with_next};
use super::{Call, Control, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::provisioning::catalog::{CatalogError, Create, Entry, Hook, Source, Update};
use crate::store::now_ms;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

/// The longest description AWS takes.
const MAX_DESCRIPTION: usize = 500;

impl From<CatalogError> for AwsError {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        let conflict = |kind| Self::new(StatusCode::CONFLICT, kind, message.clone());
        match e {
            CatalogError::NotFound(_) => Self::not_found(message),
            CatalogError::AlreadyExists(_) => conflict("ResourceAlreadyExistsException"),
            CatalogError::Conflict(_) => conflict("ConflictingResourceUpdateException"),
            CatalogError::VersionsLimit(_) => conflict("VersionsLimitExceededException"),
            CatalogError::DeleteConflict(_) => conflict("DeleteConflictException"),
            CatalogError::Invalid(_) => Self::invalid_request(message),
        }
    }
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let name = string(&input, "templateName")?.unwrap_or_default();
    match string(&input, "type")?.as_deref() {
        None | Some("FLEET_PROVISIONING") => {}
        Some("JITP") => {
            return Err(AwsError::invalid_request(
                "type: JITP templates are not served by this gateway; use FLEET_PROVISIONING",
            ));
        }
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "type: `{other}` is not FLEET_PROVISIONING or JITP"
            )));
        }
    }
    let body = string(&input, "templateBody")?
        .ok_or_else(|| AwsError::invalid_request("templateBody is required"))?;
    let role_arn = string(&input, "provisioningRoleArn")?
        .ok_or_else(|| AwsError::invalid_request("provisioningRoleArn is required"))?;
    let request = Create {
        body,
        description: description(&input)?.unwrap_or_default(),
        enabled: optional_bool(&input, "enabled")?.unwrap_or(false),
        role_arn: role(role_arn)?,
        hook: hook(c, &input["preProvisioningHook"])?,
    };
    c.templates.create(&name, request, now_ms())?;
    Ok(ok(json!({
        "templateArn": c.arn("provisioningtemplate", &name),
        "templateName": name,
        "defaultVersionId": 1,
    })))
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let e = c.templates.get(call.label(0))?;
    let t = &e.template;
    let mut out = summary(c, &e);
    out["defaultVersionId"] = t.default_version.into();
    out["templateBody"] = t.body().into();
    out["provisioningRoleArn"] = t.role_arn.as_str().into();
    if let Some(h) = &t.hook {
        out["preProvisioningHook"] = json!({
            "targetArn": h.target,
            "payloadVersion": h.payload_version,
        });
    }
    Ok(ok(out))
}

pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let page = paginate(
        c.templates.list(),
        |e| &e.name,
        call.query("nextToken"),
        call.query("maxResults"),
        100,
    )?;
    let items: Vec<Value> = page.items.iter().map(|e| summary(c, e)).collect();
    Ok(ok(with_next(
        json!({ "templates": items }),
        "nextToken",
        page.next,
    )))
}

/// What both Describe and List show of a template.
fn summary(c: &Control, e: &Entry) -> Value {
    let t = &e.template;
    json!({
        "templateArn": c.arn("provisioningtemplate", &e.name),
        "templateName": e.name,
        "description": t.description,
        "creationDate": secs(t.created_ms),
        "lastModifiedDate": secs(t.modified_ms),
        "enabled": t.enabled,
        "type": "FLEET_PROVISIONING",
        // Beyond AWS's shape: where the template comes from, so that an
        // operator knows which ones only config.toml changes.
        "source": match e.source {
            Source::Config => "config.toml",
            Source::Api => "api",
        },
    })
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let remove = optional_bool(&input, "removePreProvisioningHook")?.unwrap_or(false);
    let given = hook(c, &input["preProvisioningHook"])?;
    if remove && given.is_some() {
        return Err(AwsError::invalid_request(
            "preProvisioningHook and removePreProvisioningHook cannot both be given",
        ));
    }
    let default_version = match &input["defaultVersionId"] {
        Value::Null => None,
        v => Some(version_number(v.as_u64(), v)?),
    };
    let update = Update {
        description: description(&input)?,
        enabled: optional_bool(&input, "enabled")?,
        default_version,
        role_arn: string(&input, "provisioningRoleArn")?
            .map(role)
            .transpose()?,
        hook: if remove { Some(None) } else { given.map(Some) },
    };
    c.templates.update(call.label(0), update, now_ms())?;
    done()
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.templates.delete(call.label(0))?;
    done()
}

pub(super) fn create_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let input = call.json()?;
    let body = string(&input, "templateBody")?
        .ok_or_else(|| AwsError::invalid_request("templateBody is required"))?;
    let set_default = call.flag("setAsDefault")?;
    let id = c
        .templates
        .create_version(name, body, set_default, now_ms())?;
    Ok(ok(json!({
        "templateArn": c.arn("provisioningtemplate", name),
        "templateName": name,
        "versionId": id,
        "isDefaultVersion": set_default,
    })))
}

pub(super) fn describe_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = path_version(call.label(1))?;
    let (v, is_default) = c.templates.version(call.label(0), id)?;
    Ok(ok(json!({
        "versionId": id,
        "creationDate": secs(v.created_ms),
        "templateBody": v.body,
        "isDefaultVersion": is_default,
    })))
}

pub(super) fn list_versions(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let t = c.templates.get(call.label(0))?.template;
    // Zero-padded ids sort as numbers do, for the page tokens.
    let versions: Vec<(String, u32, u64)> = t
        .versions
        .iter()
        .map(|(id, v)| (format!("{id:010}"), *id, v.created_ms))
        .collect();
    let page = paginate(
        versions,
        |(key, _, _)| key,
        call.query("nextToken"),
        call.query("maxResults"),
        100,
    )?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(_, id, created_ms)| {
            json!({
                "versionId": id,
                "creationDate": secs(*created_ms),
                "isDefaultVersion": t.default_version == *id,
            })
        })
        .collect();
    Ok(ok(with_next(
        json!({ "versions": items }),
        "nextToken",
        page.next,
    )))
}

pub(super) fn delete_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = path_version(call.label(1))?;
    c.templates.delete_version(call.label(0), id, now_ms())?;
    done()
}

/// A string member, if present.
fn string(input: &Value, key: &str) -> Result<Option<String>, AwsError> {
    match &input[key] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(AwsError::invalid_request(format!("{key} is not a string"))),
    }
}

fn description(input: &Value) -> Result<Option<String>, AwsError> {
    let d = string(input, "description")?;
    if d.as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(AwsError::invalid_request(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(d)
}

/// AWS's bounds on `provisioningRoleArn`: 20 to 2048 characters.
fn role(arn: String) -> Result<String, AwsError> {
    if (20..=2048).contains(&arn.chars().count()) {
        Ok(arn)
    } else {
        Err(AwsError::invalid_request(
            "provisioningRoleArn is not 20 to 2048 characters",
        ))
    }
}

/// `preProvisioningHook`, if present.
fn hook(c: &Control, given: &Value) -> Result<Option<Hook>, AwsError> {
    if given.is_null() {
        return Ok(None);
    }
    let target = string(given, "targetArn")?
        .ok_or_else(|| AwsError::invalid_request("preProvisioningHook.targetArn is required"))?;
    let version = string(given, "payloadVersion")?;
    let version = version
        .as_deref()
        .unwrap_or(crate::provisioning::catalog::HOOK_PAYLOAD_VERSION);
    Ok(Some(c.templates.hook(&target, version)?))
}

fn path_version(label: &str) -> Result<u32, AwsError> {
    version_number(label.parse().ok(), label)
}

fn version_number(n: Option<u64>, given: impl std::fmt::Display) -> Result<u32, AwsError> {
    n.and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| AwsError::invalid_request(format!("`{given}` is not a version id")))
}
