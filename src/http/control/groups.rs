//! Static thing groups: their hierarchy, properties and members.

use super::things::{attributes, optional_str, version, with_next};
use super::{Call, Control, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::registry::groups::{GroupUpdate, ThingGroup};
use axum::response::Response;
use serde_json::{Value, json};

/// A page of groups, by name and ARN.
fn groups_page(
    c: &Control,
    call: &Call<'_>,
    groups: Vec<ThingGroup>,
) -> Result<Response, AwsError> {
    let page = paginate(
        groups,
        |g| &g.name,
        call.query("nextToken"),
        call.query("maxResults"),
        50,
    )?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|g| json!({"groupName": g.name, "groupArn": c.arn("thinggroup", &g.name)}))
        .collect();
    Ok(ok(with_next(
        json!({ "thingGroups": items }),
        "nextToken",
        page.next,
    )))
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let props = &input["thingGroupProperties"];
    let g = c.registry.create_thing_group(
        call.label(0),
        optional_str(&input, "parentGroupName")?,
        optional_str(props, "thingGroupDescription")?.unwrap_or_default(),
        attributes(&props["attributePayload"])?.unwrap_or_default(),
    )?;
    Ok(ok(json!({
        "thingGroupName": g.name,
        "thingGroupArn": c.arn("thinggroup", &g.name),
        "thingGroupId": g.id,
    })))
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let v = c.registry.thing_group(call.label(0))?;
    let g = &v.group;
    let mut metadata = json!({
        "rootToParentThingGroups": v.ancestors.iter().map(|(n, _)| json!({
            "groupName": n,
            "groupArn": c.arn("thinggroup", n),
        })).collect::<Vec<_>>(),
        "creationDate": secs(g.created_ms),
    });
    if let Some(p) = &g.parent {
        metadata["parentGroupName"] = p.as_str().into();
    }
    Ok(ok(json!({
        "thingGroupName": g.name,
        "thingGroupId": g.id,
        "thingGroupArn": c.arn("thinggroup", &g.name),
        "version": g.version,
        "thingGroupProperties": {
            "thingGroupDescription": g.description,
            "attributePayload": {"attributes": g.attributes},
        },
        "thingGroupMetadata": metadata,
    })))
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let props = &input["thingGroupProperties"];
    let payload = &props["attributePayload"];
    let version = c.registry.update_thing_group(
        call.label(0),
        GroupUpdate {
            description: optional_str(props, "thingGroupDescription")?,
            attributes: attributes(payload)?
                .map(|a| (a, payload["merge"].as_bool().unwrap_or(false))),
            expected_version: version(input.get("expectedVersion"))?,
        },
    )?;
    Ok(ok(json!({ "version": version })))
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.registry
        .delete_thing_group(call.label(0), call.number("expectedVersion")?)?;
    done()
}

/// ListThingGroups: below `parentGroup` (its children, or with `recursive`
/// every descendant), else every group (or with `recursive=false` only
/// those at the top), optionally by name prefix.
pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let recursive = match call.query("recursive").as_deref() {
        None => None,
        Some(_) => Some(call.flag("recursive")?),
    };
    let groups = match call.query("parentGroup") {
        Some(parent) => c
            .registry
            .child_groups(&parent, recursive.unwrap_or(false))?,
        None => c
            .registry
            .thing_groups()
            .into_iter()
            .filter(|g| recursive != Some(false) || g.parent.is_none())
            .collect(),
    };
    let prefix = call.query("namePrefixFilter").unwrap_or_default();
    let groups: Vec<ThingGroup> = groups
        .into_iter()
        .filter(|g| g.name.starts_with(&prefix))
        .collect();
    groups_page(c, call, groups)
}

/// A name given as itself or in an ARN (`...:thinggroup/NAME`).
fn named(input: &Value, name: &str, arn: &str, kind: &str) -> Result<String, AwsError> {
    if let Some(n) = optional_str(input, name)? {
        return Ok(n);
    }
    let arn = optional_str(input, arn)?
        .ok_or_else(|| AwsError::invalid_request(format!("{name} is required")))?;
    arn.rsplit_once(&format!(":{kind}/"))
        .map(|(_, n)| n.to_owned())
        .ok_or_else(|| AwsError::invalid_request(format!("`{arn}` is not a {kind} ARN")))
}

pub(super) fn add_thing(c: &Control, call: &Call<'_>, add: bool) -> Result<Response, AwsError> {
    let input = call.json()?;
    let group = named(&input, "thingGroupName", "thingGroupArn", "thinggroup")?;
    let thing = named(&input, "thingName", "thingArn", "thing")?;
    if add {
        c.registry.add_thing_to_group(&group, &thing)?;
    } else {
        c.registry.remove_thing_from_group(&group, &thing)?;
    }
    done()
}

pub(super) fn update_for_thing(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let thing = optional_str(&input, "thingName")?
        .ok_or_else(|| AwsError::invalid_request("thingName is required"))?;
    let list = |key: &str| -> Result<Vec<String>, AwsError> {
        match &input[key] {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| AwsError::invalid_request(format!("{key} holds names")))
                })
                .collect(),
            _ => Err(AwsError::invalid_request(format!("{key} is a list"))),
        }
    };
    let (remove, add) = (list("thingGroupsToRemove")?, list("thingGroupsToAdd")?);
    // Every group is checked first, so that a wrong name changes nothing.
    for group in remove.iter().chain(&add) {
        c.registry.thing_group(group)?;
    }
    for group in &remove {
        c.registry.remove_thing_from_group(group, &thing)?;
    }
    for group in &add {
        c.registry.add_thing_to_group(group, &thing)?;
    }
    done()
}

pub(super) fn things_in(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let things = c
        .registry
        .things_in_group(call.label(0), call.flag("recursive")?)?;
    let page = paginate(
        things,
        String::as_str,
        call.query("nextToken"),
        call.query("maxResults"),
        50,
    )?;
    Ok(ok(with_next(
        json!({ "things": page.items }),
        "nextToken",
        page.next,
    )))
}

pub(super) fn of_thing(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let groups = c.registry.groups_of_thing(call.label(0))?;
    groups_page(c, call, groups)
}
