//! Things, thing types, and which certificates are attached to which thing.

use super::{Call, Control, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::registry::{Thing, ThingType, ThingUpdate};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The attribute map of an `AttributePayload`; values must be strings.
pub(super) fn attributes(payload: &Value) -> Result<Option<BTreeMap<String, String>>, AwsError> {
    let Some(map) = payload.get("attributes") else {
        return Ok(None);
    };
    let Some(map) = map.as_object() else {
        return Err(AwsError::invalid_request(
            "attributePayload.attributes must be an object",
        ));
    };
    map.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|v| (k.clone(), v.to_owned()))
                .ok_or_else(|| {
                    AwsError::invalid_request(format!("attribute `{k}` must be a string"))
                })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

pub(super) fn optional_str(v: &Value, key: &str) -> Result<Option<String>, AwsError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AwsError::invalid_request(format!("{key} must be a string"))),
    }
}

/// A boolean member, if present.
pub(super) fn optional_bool(v: &Value, key: &str) -> Result<Option<bool>, AwsError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(AwsError::invalid_request(format!("{key} is not a boolean"))),
    }
}

pub(super) fn version(v: Option<&Value>) -> Result<Option<u64>, AwsError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| AwsError::invalid_request("expectedVersion must be a number")),
    }
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let attrs = attributes(&input["attributePayload"])?.unwrap_or_default();
    let t =
        c.registry
            .create_thing(call.label(0), optional_str(&input, "thingTypeName")?, attrs)?;
    Ok(ok(json!({
        "thingName": t.name,
        "thingArn": c.arn("thing", &t.name),
        "thingId": t.id,
    })))
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let t = c
        .registry
        .thing(name)
        .ok_or_else(|| AwsError::not_found(format!("Thing {name} cannot be found.")))?;
    let mut body = thing_json(c, &t);
    body["defaultClientId"] = t.name.clone().into();
    body["thingId"] = t.id.into();
    Ok(ok(body))
}

fn thing_json(c: &Control, t: &Thing) -> Value {
    let mut v = json!({
        "thingName": t.name,
        "thingArn": c.arn("thing", &t.name),
        "attributes": t.attributes,
        "version": t.version,
    });
    if let Some(ty) = &t.thing_type {
        v["thingTypeName"] = ty.clone().into();
    }
    v
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let payload = &input["attributePayload"];
    let merge = payload["merge"].as_bool().unwrap_or(false);
    c.registry.update_thing(
        call.label(0),
        ThingUpdate {
            thing_type: optional_str(&input, "thingTypeName")?,
            remove_type: input["removeThingType"].as_bool().unwrap_or(false),
            attributes: attributes(payload)?.map(|a| (a, merge)),
            expected_version: version(input.get("expectedVersion"))?,
        },
    )?;
    done()
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.registry
        .delete_thing(call.label(0), call.number("expectedVersion")?)?;
    done()
}

pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.query("attributeName");
    let value = call.query("attributeValue");
    let prefix = call.flag("usePrefixAttributeValue")?;
    let ty = call.query("thingTypeName");
    let things: Vec<Thing> = c
        .registry
        .things()
        .into_iter()
        .filter(|t| ty.is_none() || t.thing_type == ty)
        .filter(|t| match (&name, &value) {
            (None, _) => true,
            (Some(n), None) => t.attributes.contains_key(n),
            (Some(n), Some(v)) => t.attributes.get(n).is_some_and(|have| {
                if prefix {
                    have.starts_with(v.as_str())
                } else {
                    have == v
                }
            }),
        })
        .collect();
    let page = paginate(
        things,
        |t| &t.name,
        call.query("nextToken"),
        call.query("maxResults"),
        50,
    )?;
    let items: Vec<Value> = page.items.iter().map(|t| thing_json(c, t)).collect();
    Ok(ok(with_next(
        json!({ "things": items }),
        "nextToken",
        page.next,
    )))
}

/// Adds the continuation member when there is one.
pub(super) fn with_next(mut body: Value, key: &str, next: Option<String>) -> Value {
    if let Some(n) = next {
        body[key] = n.into();
    }
    body
}

pub(super) fn create_type(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let props = &input["thingTypeProperties"];
    let searchable = props["searchableAttributes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let t = c.registry.create_thing_type(
        call.label(0),
        optional_str(props, "thingTypeDescription")?,
        searchable,
    )?;
    Ok(ok(json!({
        "thingTypeName": t.name,
        "thingTypeArn": c.arn("thingtype", &t.name),
        "thingTypeId": t.id,
    })))
}

fn type_json(c: &Control, t: &ThingType) -> Value {
    let mut props = json!({ "searchableAttributes": t.searchable_attributes });
    if let Some(d) = &t.description {
        props["thingTypeDescription"] = d.clone().into();
    }
    let mut meta = json!({
        "deprecated": t.deprecated_ms.is_some(),
        "creationDate": secs(t.created_ms),
    });
    if let Some(ms) = t.deprecated_ms {
        meta["deprecationDate"] = secs(ms).into();
    }
    json!({
        "thingTypeName": t.name,
        "thingTypeArn": c.arn("thingtype", &t.name),
        "thingTypeProperties": props,
        "thingTypeMetadata": meta,
    })
}

pub(super) fn describe_type(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let t = c
        .registry
        .thing_type(name)
        .ok_or_else(|| AwsError::not_found(format!("Thing type {name} cannot be found.")))?;
    let mut body = type_json(c, &t);
    body["thingTypeId"] = t.id.into();
    Ok(ok(body))
}

pub(super) fn list_types(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.query("thingTypeName");
    let types: Vec<ThingType> = c
        .registry
        .thing_types()
        .into_iter()
        .filter(|t| name.as_ref().is_none_or(|n| *n == t.name))
        .collect();
    let page = paginate(
        types,
        |t| &t.name,
        call.query("nextToken"),
        call.query("maxResults"),
        50,
    )?;
    let items: Vec<Value> = page.items.iter().map(|t| type_json(c, t)).collect();
    Ok(ok(with_next(
        json!({ "thingTypes": items }),
        "nextToken",
        page.next,
    )))
}

pub(super) fn deprecate_type(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let undo = call.json()?["undoDeprecate"].as_bool().unwrap_or(false);
    c.registry.deprecate_thing_type(call.label(0), undo)?;
    done()
}

pub(super) fn delete_type(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.registry.delete_thing_type(call.label(0))?;
    done()
}

/// The certificate named by the `x-amzn-principal` header.
fn principal(c: &Control, call: &Call<'_>) -> Result<String, AwsError> {
    let arn = call
        .header("x-amzn-principal")
        .ok_or_else(|| AwsError::invalid_request("the x-amzn-principal header is required"))?;
    c.cert_id_of(arn)
}

pub(super) fn attach_principal(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let exclusive = match call.query("thingPrincipalType").as_deref() {
        None | Some("NON_EXCLUSIVE_THING") => false,
        Some("EXCLUSIVE_THING") => true,
        Some(other) => {
            return Err(AwsError::invalid_request(format!(
                "thingPrincipalType `{other}` is not EXCLUSIVE_THING or NON_EXCLUSIVE_THING"
            )));
        }
    };
    let id = principal(c, call)?;
    c.registry.attach_thing(&id, call.label(0), exclusive)?;
    done()
}

pub(super) fn detach_principal(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = principal(c, call)?;
    c.registry.detach_thing(&id, call.label(0))?;
    done()
}

fn principal_type(exclusive: bool) -> &'static str {
    if exclusive {
        "EXCLUSIVE_THING"
    } else {
        "NON_EXCLUSIVE_THING"
    }
}

/// A page of (name, exclusive) pairs: V1 lists the names under `v1`, V2
/// (filtered by `thingPrincipalType`) objects of `member` and the type under `v2`.
fn attachments(
    call: &Call<'_>,
    mut pairs: Vec<(String, bool)>,
    v2: Option<(&str, &str)>,
    v1: &str,
) -> Result<Response, AwsError> {
    pairs.sort();
    if v2.is_some()
        && let Some(want) = call.query("thingPrincipalType")
    {
        pairs.retain(|(_, ex)| principal_type(*ex) == want);
    }
    let page = paginate(
        pairs,
        |(name, _)| name,
        call.query("nextToken"),
        call.query("maxResults"),
        250,
    )?;
    let body = match v2 {
        Some((list, member)) => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|(name, ex)| json!({member: name, "thingPrincipalType": principal_type(*ex)}))
                .collect();
            json!({ list: items })
        }
        None => {
            let items: Vec<&String> = page.items.iter().map(|(name, _)| name).collect();
            json!({ v1: items })
        }
    };
    Ok(ok(with_next(body, "nextToken", page.next)))
}

pub(super) fn list_principals(
    c: &Control,
    call: &Call<'_>,
    v2: bool,
) -> Result<Response, AwsError> {
    let pairs = c
        .registry
        .thing_principals(call.label(0))?
        .into_iter()
        .map(|(id, ex)| (c.arn("cert", &id), ex))
        .collect();
    let v2 = v2.then_some(("thingPrincipalObjects", "principal"));
    attachments(call, pairs, v2, "principals")
}

pub(super) fn list_principal_things(
    c: &Control,
    call: &Call<'_>,
    v2: bool,
) -> Result<Response, AwsError> {
    let pairs = c.registry.principal_things(&principal(c, call)?)?;
    let v2 = v2.then_some(("principalThingObjects", "thingName"));
    attachments(call, pairs, v2, "things")
}
