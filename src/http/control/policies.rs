//! Policies and their versions, which certificates they are attached to,
//! and the authorization questions an operator asks: which policies are in
//! effect for a certificate, and what they decide (TestAuthorization, with
//! the broker's evaluator and the broker's context).

use super::things::with_next;
use super::{Call, Control, by_creation, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::policy::compile;
use crate::policy::document::Document;
use crate::policy::eval::{Action, Decision, ResourceType};
use crate::policy::versions::{Policy, Version};
use crate::registry::ClientIdentity;
use crate::session::authz::{ConnectFacts, context};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;

fn document_of(call: &Call<'_>) -> Result<String, AwsError> {
    call.json()?["policyDocument"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| AwsError::invalid_request("policyDocument is required"))
}

/// A generation id that changes with every change of the policy.
fn generation(p: &Policy) -> String {
    format!("{}-{}", p.default, p.modified_ms)
}

fn version_id(call: &Call<'_>) -> Result<u64, AwsError> {
    let v = call.label(1);
    v.parse()
        .map_err(|_| AwsError::invalid_request(format!("policyVersionId `{v}` is not a number")))
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let text = document_of(call)?;
    let p = c.policies.create(name, &text)?;
    Ok(ok(json!({
        "policyName": name,
        "policyArn": c.arn("policy", name),
        "policyDocument": text,
        "policyVersionId": p.default.to_string(),
    })))
}

pub(super) fn get(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let p = c.policies.get(name)?;
    let text = p
        .default_version()
        .map(|v| v.text.clone())
        .unwrap_or_default();
    Ok(ok(json!({
        "policyName": name,
        "policyArn": c.arn("policy", name),
        "policyDocument": text,
        "defaultVersionId": p.default.to_string(),
        "creationDate": secs(p.created_ms),
        "lastModifiedDate": secs(p.modified_ms),
        "generationId": generation(&p),
    })))
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    c.policies
        .delete(name, || !c.registry.policy_targets(name).is_empty())?;
    done()
}

fn policy_ref(c: &Control, name: &str) -> Value {
    json!({"policyName": name, "policyArn": c.arn("policy", name)})
}

/// Policies in creation order, newest first unless `isAscendingOrder`.
pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let ascending = call.flag("isAscendingOrder")?;
    let mut keyed: Vec<(String, String)> = c
        .policies
        .list()
        .into_iter()
        .map(|(name, p)| (by_creation(p.created_ms, &name, ascending), name))
        .collect();
    keyed.sort();
    let page = paginate(
        keyed,
        |(k, _)| k,
        call.query("marker"),
        call.query("pageSize"),
        25,
    )?;
    let items: Vec<Value> = page.items.iter().map(|(_, n)| policy_ref(c, n)).collect();
    Ok(ok(with_next(
        json!({ "policies": items }),
        "nextMarker",
        page.next,
    )))
}

pub(super) fn create_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let text = document_of(call)?;
    let set_default = call.flag("setAsDefault")?;
    let v = c.policies.create_version(name, &text, set_default)?;
    Ok(ok(json!({
        "policyArn": c.arn("policy", name),
        "policyDocument": v.text,
        "policyVersionId": v.id.to_string(),
        "isDefaultVersion": set_default,
    })))
}

pub(super) fn list_versions(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let p = c.policies.get(call.label(0))?;
    let items: Vec<Value> = p
        .versions
        .iter()
        .rev()
        .map(|v| {
            json!({
                "versionId": v.id.to_string(),
                "isDefaultVersion": v.id == p.default,
                "createDate": secs(v.created_ms),
            })
        })
        .collect();
    Ok(ok(json!({ "policyVersions": items })))
}

pub(super) fn get_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let id = version_id(call)?;
    let p = c.policies.get(name)?;
    let v: &Version = p
        .version(id)
        .ok_or_else(|| AwsError::not_found(format!("The policy {name} has no version {id}")))?;
    Ok(ok(json!({
        "policyArn": c.arn("policy", name),
        "policyName": name,
        "policyDocument": v.text,
        "policyVersionId": v.id.to_string(),
        "isDefaultVersion": v.id == p.default,
        "creationDate": secs(v.created_ms),
        "lastModifiedDate": secs(v.created_ms),
        "generationId": generation(&p),
    })))
}

pub(super) fn set_default(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.policies.set_default(call.label(0), version_id(call)?)?;
    done()
}

pub(super) fn delete_version(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.policies
        .delete_version(call.label(0), version_id(call)?)?;
    done()
}

/// Attaches or detaches policy `name` to or from the certificate `target`.
fn attach_to(c: &Control, name: &str, target: &str, attach: bool) -> Result<Response, AwsError> {
    let id = c.cert_id_of(target)?;
    if attach {
        c.policies.get(name)?;
        c.registry.attach_policy(&id, name)?;
    } else {
        c.registry.detach_policy(&id, name)?;
    }
    done()
}

pub(super) fn attach(c: &Control, call: &Call<'_>, attach: bool) -> Result<Response, AwsError> {
    let input = call.json()?;
    let target = input["target"]
        .as_str()
        .ok_or_else(|| AwsError::invalid_request("target is required"))?;
    attach_to(c, call.label(0), target, attach)
}

/// The deprecated AttachPrincipalPolicy and DetachPrincipalPolicy, which
/// old scripts still call: the principal travels in a header.
pub(super) fn attach_principal(
    c: &Control,
    call: &Call<'_>,
    attach: bool,
) -> Result<Response, AwsError> {
    let target = call
        .header("x-amzn-iot-principal")
        .ok_or_else(|| AwsError::invalid_request("the x-amzn-iot-principal header is required"))?
        .to_owned();
    attach_to(c, call.label(0), &target, attach)
}

pub(super) fn list_attached(
    c: &Control,
    call: &Call<'_>,
    target: &str,
) -> Result<Response, AwsError> {
    let id = c.cert_id_of(target)?;
    let cert = c
        .registry
        .certificate(&id)
        .ok_or_else(|| AwsError::not_found(format!("Certificate {id} does not exist")))?;
    let mut names = cert.policies;
    names.sort();
    let page = paginate(
        names,
        String::as_str,
        call.query("marker"),
        call.query("pageSize"),
        25,
    )?;
    let items: Vec<Value> = page.items.iter().map(|n| policy_ref(c, n)).collect();
    Ok(ok(with_next(
        json!({ "policies": items }),
        "nextMarker",
        page.next,
    )))
}

pub(super) fn list_targets(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    c.policies.get(name)?;
    let targets: Vec<String> = c
        .registry
        .policy_targets(name)
        .into_iter()
        .map(|id| c.arn("cert", &id))
        .collect();
    let page = paginate(
        targets,
        String::as_str,
        call.query("marker"),
        call.query("pageSize"),
        25,
    )?;
    Ok(ok(with_next(
        json!({ "targets": page.items }),
        "nextMarker",
        page.next,
    )))
}

/// The named policies' default documents, parsed; unknown names are skipped.
fn documents(c: &Control, names: &[String]) -> Vec<(Arc<str>, Document, String)> {
    names
        .iter()
        .filter_map(|n| {
            let p = c.policies.get(n).ok()?;
            let text = p.default_version()?.text.clone();
            let doc = crate::policy::document::parse(&text).ok()?;
            Some((Arc::from(n.as_str()), doc, text))
        })
        .collect()
}

pub(super) fn effective(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let principal = input["principal"]
        .as_str()
        .ok_or_else(|| AwsError::invalid_request("principal is required"))?;
    let id = c.cert_id_of(principal)?;
    let cert = c
        .registry
        .certificate(&id)
        .ok_or_else(|| AwsError::not_found(format!("Certificate {id} does not exist")))?;
    let items: Vec<Value> = documents(c, &cert.policies)
        .into_iter()
        .map(|(name, _, text)| {
            json!({
                "policyName": &*name,
                "policyArn": c.arn("policy", &name),
                "policyDocument": text,
            })
        })
        .collect();
    Ok(ok(json!({ "effectivePolicies": items })))
}

/// The action an `authInfo` names, and the resource type its ARNs must have.
fn action_of(action_type: &str) -> Option<(Action, &'static [ResourceType])> {
    Some(match action_type {
        "CONNECT" => (Action::Connect, &[ResourceType::Client]),
        "PUBLISH" => (Action::Publish, &[ResourceType::Topic]),
        "SUBSCRIBE" => (Action::Subscribe, &[ResourceType::TopicFilter]),
        "RECEIVE" => (Action::Receive, &[ResourceType::Topic]),
        _ => return None,
    })
}

/// TestAuthorization: the certificate's policies (plus and minus those
/// named), compiled with the context a connection with that certificate
/// and client id would have, decide each `authInfo`.
pub(super) fn test_authorization(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let strings = |key: &str| -> Vec<String> {
        input[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let client_id = call.query("clientId");
    let mut identity = None;
    let mut principal = crate::registry::Principal::anonymous(&[]);
    if let Some(arn) = input["principal"].as_str() {
        let id = c.cert_id_of(arn)?;
        let cert = c
            .registry
            .certificate(&id)
            .ok_or_else(|| AwsError::not_found(format!("Certificate {id} does not exist")))?;
        identity = ClientIdentity::from_pem(&cert.pem);
        principal = c
            .registry
            .principal_for(&id, client_id.as_deref().unwrap_or_default());
    }
    // The context a connection with this certificate and client id would
    // have, built by the broker's own builder.
    let facts = ConnectFacts {
        client_id: client_id.as_deref(),
        peer: None,
        persistent: false,
        will_topic: None,
        domain_name: None,
        vars: &[],
    };
    let ctx = context(identity.as_ref(), &principal, facts, &c.head);
    let mut names = principal.policies;
    let skip = strings("policyNamesToSkip");
    names.retain(|n| !skip.contains(n));
    for add in strings("policyNamesToAdd") {
        if !names.contains(&add) {
            names.push(add);
        }
    }
    let docs = documents(c, &names);
    let set = compile::compile(docs.iter().map(|(n, d, _)| (n, d)), &c.head, &ctx);
    let missing = compile::missing(docs.iter().map(|(_, d, _)| d), &ctx);
    let infos = input["authInfos"]
        .as_array()
        .ok_or_else(|| AwsError::invalid_request("authInfos is required"))?;
    let mut results = Vec::new();
    for info in infos {
        let action_type = info["actionType"].as_str().unwrap_or_default();
        let (action, types) = action_of(action_type).ok_or_else(|| {
            AwsError::invalid_request(format!(
                "actionType `{action_type}` is not CONNECT, PUBLISH, SUBSCRIBE or RECEIVE"
            ))
        })?;
        let mut decision = Decision::Allowed;
        let (mut allowed, mut explicit) = (Vec::new(), Vec::new());
        for resource in info["resources"].as_array().into_iter().flatten() {
            let arn = resource.as_str().unwrap_or_default();
            let path = arn.splitn(6, ':').nth(5).unwrap_or(arn);
            let (ty, name) = types
                .iter()
                .find_map(|t| path.strip_prefix(t.prefix()).map(|n| (*t, n)))
                .ok_or_else(|| {
                    AwsError::invalid_request(format!(
                        "resource `{arn}` does not fit actionType {action_type}"
                    ))
                })?;
            let (d, st) = set.explain(action, ty, name);
            let policy = st.map(|s| s.policy.to_string());
            match d {
                Decision::ExplicitDeny => {
                    decision = d;
                    explicit.extend(policy);
                }
                Decision::ImplicitDeny if decision == Decision::Allowed => decision = d,
                Decision::Allowed => allowed.extend(policy),
                Decision::ImplicitDeny => {}
            }
        }
        let refs = |names: &mut Vec<String>| -> Vec<Value> {
            names.sort();
            names.dedup();
            names.iter().map(|n| policy_ref(c, n)).collect()
        };
        let implicit: Vec<Value> = if decision == Decision::ImplicitDeny {
            docs.iter().map(|(n, _, _)| policy_ref(c, n)).collect()
        } else {
            Vec::new()
        };
        results.push(json!({
            "authInfo": info,
            "allowed": { "policies": if decision == Decision::Allowed { refs(&mut allowed) } else { Vec::new() } },
            "denied": {
                "implicitDeny": { "policies": implicit },
                "explicitDeny": { "policies": refs(&mut explicit) },
            },
            "authDecision": decision.name(),
            "missingContextValues": missing,
        }));
    }
    Ok(ok(json!({ "authResults": results })))
}
