//! Custom authorizers through the control plane, as AWS's API has them:
//! those of `config.toml` are listed and described but not changed.

use super::things::{optional_bool, optional_str, with_next};
use super::{Call, Control, done, paginate, secs};
use crate::authorizers::request::{Connection, Presented, SIGNATURE_KEY};
use crate::authorizers::{Authorizer, Authorizers, ChangeError, Record, Refusal};
use crate::http::aws::{AwsError, ok};
use crate::sql::eval::base64_decode;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

impl From<ChangeError> for AwsError {
    fn from(e: ChangeError) -> Self {
        let message = e.to_string();
        let status = |status, kind| Self::new(status, kind, message.clone());
        match e {
            ChangeError::NotFound(_) => Self::not_found(message),
            ChangeError::AlreadyExists(_) => {
                status(StatusCode::CONFLICT, "ResourceAlreadyExistsException")
            }
            ChangeError::Invalid(_) => Self::invalid_request(message),
            ChangeError::Conflict(_) => status(StatusCode::CONFLICT, "DeleteConflictException"),
            ChangeError::Limit(_) => status(StatusCode::GONE, "LimitExceededException"),
        }
    }
}

fn service(c: &Control) -> Result<&Arc<Authorizers>, AwsError> {
    c.authorizers.as_ref().ok_or_else(|| {
        AwsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "custom authorizers are served by the running gateway; start it first",
        )
    })
}

fn no_authorizer(name: &str) -> AwsError {
    AwsError::not_found(format!("Authorizer {name} does not exist"))
}

/// A `status` (of the body or the query), if given: whether ACTIVE.
fn status(given: Option<&str>) -> Result<Option<bool>, AwsError> {
    match given {
        None => Ok(None),
        Some("ACTIVE") => Ok(Some(true)),
        Some("INACTIVE") => Ok(Some(false)),
        Some(other) => Err(AwsError::invalid_request(format!(
            "status `{other}` is not ACTIVE or INACTIVE"
        ))),
    }
}

/// `tokenSigningPublicKeys`, if given.
fn keys(input: &Value) -> Result<Option<BTreeMap<String, String>>, AwsError> {
    match &input["tokenSigningPublicKeys"] {
        Value::Null => Ok(None),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(pem) => Ok((k.clone(), pem.to_owned())),
                None => Err(AwsError::invalid_request(format!(
                    "tokenSigningPublicKeys.{k} is a PEM string"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        _ => Err(AwsError::invalid_request(
            "tokenSigningPublicKeys is a map of names to PEM keys",
        )),
    }
}

fn reply(c: &Control, name: &str) -> Response {
    ok(json!({
        "authorizerName": name,
        "authorizerArn": c.arn("authorizer", name),
    }))
}

pub(super) fn create(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let authorizers = service(c)?;
    let name = call.label(0).to_owned();
    let name_ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_=,@-".contains(ch));
    if !name_ok {
        return Err(AwsError::invalid_request(format!(
            "authorizerName `{name}` is not 1 to 128 of [\\w=,@-]"
        )));
    }
    let input = call.json()?;
    let endpoint = optional_str(&input, "authorizerFunctionArn")?
        .ok_or_else(|| AwsError::invalid_request("authorizerFunctionArn is required"))?;
    let now = crate::store::now_ms();
    authorizers.create(Record {
        name: name.clone(),
        endpoint,
        token_key_name: optional_str(&input, "tokenKeyName")?,
        keys: keys(&input)?.unwrap_or_default(),
        signing_disabled: optional_bool(&input, "signingDisabled")?.unwrap_or(false),
        active: status(optional_str(&input, "status")?.as_deref())?.unwrap_or(true),
        caching_for_http: optional_bool(&input, "enableCachingForHttp")?.unwrap_or(false),
        created_ms: now,
        modified_ms: now,
    })?;
    Ok(reply(c, &name))
}

fn description(c: &Control, a: &Authorizer) -> Value {
    let r = &a.record;
    let mut v = json!({
        "authorizerName": r.name,
        "authorizerArn": c.arn("authorizer", &r.name),
        "authorizerFunctionArn": r.endpoint,
        "tokenSigningPublicKeys": r.keys,
        "status": if r.active { "ACTIVE" } else { "INACTIVE" },
        "creationDate": secs(r.created_ms),
        "lastModifiedDate": secs(r.modified_ms),
        "signingDisabled": r.signing_disabled,
        "enableCachingForHttp": r.caching_for_http,
    });
    if let Some(k) = &r.token_key_name {
        v["tokenKeyName"] = k.as_str().into();
    }
    if a.from_config {
        v["source"] = "config.toml".into();
    }
    v
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0);
    let a = service(c)?.get(name).ok_or_else(|| no_authorizer(name))?;
    Ok(ok(json!({ "authorizerDescription": description(c, &a) })))
}

pub(super) fn list(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let wanted = status(call.query("status").as_deref())?;
    let listed: Vec<Value> = service(c)?
        .list()
        .iter()
        .filter(|a| wanted.is_none_or(|w| a.record.active == w))
        .map(|a| {
            json!({
                "authorizerName": a.record.name,
                "authorizerArn": c.arn("authorizer", &a.record.name),
            })
        })
        .collect();
    let page = paginate(
        listed,
        |v| v["authorizerName"].as_str().unwrap_or_default(),
        call.query("marker"),
        call.query("pageSize"),
        250,
    )?;
    Ok(ok(with_next(
        json!({ "authorizers": page.items }),
        "nextMarker",
        page.next,
    )))
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let name = call.label(0).to_owned();
    let input = call.json()?;
    if !input["signingDisabled"].is_null() {
        return Err(AwsError::invalid_request(
            "signingDisabled cannot be changed once the authorizer is made",
        ));
    }
    let endpoint = optional_str(&input, "authorizerFunctionArn")?;
    let token_key = optional_str(&input, "tokenKeyName")?;
    let new_keys = keys(&input)?;
    let active = status(optional_str(&input, "status")?.as_deref())?;
    let caching = optional_bool(&input, "enableCachingForHttp")?;
    service(c)?.update(&name, |r| {
        if let Some(e) = endpoint {
            r.endpoint = e;
        }
        if token_key.is_some() {
            r.token_key_name = token_key;
        }
        if let Some(k) = new_keys {
            r.keys = k;
        }
        if let Some(a) = active {
            r.active = a;
        }
        if let Some(h) = caching {
            r.caching_for_http = h;
        }
    })?;
    Ok(reply(c, &name))
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    service(c)?.delete(call.label(0))?;
    done()
}

pub(super) fn set_default(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let name = optional_str(&input, "authorizerName")?
        .ok_or_else(|| AwsError::invalid_request("authorizerName is required"))?;
    service(c)?.set_default(Some(&name))?;
    Ok(reply(c, &name))
}

pub(super) fn describe_default(c: &Control) -> Result<Response, AwsError> {
    let authorizers = service(c)?;
    let a = authorizers
        .default_name()
        .and_then(|n| authorizers.get(&n))
        .ok_or_else(|| AwsError::not_found("No default authorizer is set"))?;
    Ok(ok(json!({ "authorizerDescription": description(c, &a) })))
}

pub(super) fn clear_default(c: &Control) -> Result<Response, AwsError> {
    service(c)?.set_default(None)?;
    done()
}

/// TestInvokeAuthorizer: the authorizer asked as a connection would ask
/// it, the policies answered as strings.
pub(super) async fn test_invoke(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let authorizers = service(c)?;
    let name = call.label(0).to_owned();
    let a = authorizers.get(&name).ok_or_else(|| no_authorizer(&name))?;
    let input = call.json()?;
    let mut params = Vec::new();
    if let (Some(key), Some(token)) = (&a.record.token_key_name, optional_str(&input, "token")?) {
        params.push((key.clone(), token));
    }
    if let Some(sig) = optional_str(&input, "tokenSignature")? {
        params.push((SIGNATURE_KEY.to_owned(), sig));
    }
    let http = &input["httpContext"];
    let mqtt = &input["mqttContext"];
    let connection = Connection {
        server_name: optional_str(&input["tlsContext"], "serverName")?,
        http: (!http.is_null())
            .then(|| -> Result<_, AwsError> {
                let headers = http["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let query = optional_str(http, "queryString")?.unwrap_or_default();
                Ok((headers, query.trim_start_matches('?').to_owned()))
            })
            .transpose()?,
        mqtt: (!mqtt.is_null())
            .then(|| -> Result<_, AwsError> {
                let password = optional_str(mqtt, "password")?
                    .map(|p| {
                        base64_decode(&p).ok_or_else(|| {
                            AwsError::invalid_request("mqttContext.password is base64")
                        })
                    })
                    .transpose()?;
                Ok((
                    optional_str(mqtt, "username")?,
                    password,
                    optional_str(mqtt, "clientId")?.unwrap_or_default(),
                ))
            })
            .transpose()?,
        id: crate::registry::identity::uuid_v4(),
    };
    let answer = authorizers
        .test_invoke(&name, &Presented { params }, &connection)
        .await;
    match answer {
        Ok(a) => Ok(ok(json!({
            "isAuthenticated": true,
            "principalId": a.principal_id,
            "policyDocuments": a.texts,
            "refreshAfterInSeconds": a.refresh_after,
            "disconnectAfterInSeconds": a.disconnect_after,
        }))),
        Err(Refusal::NotAuthenticated) => Ok(ok(json!({ "isAuthenticated": false }))),
        Err(Refusal::Unknown) => Err(no_authorizer(&name)),
        Err(r @ Refusal::BadSignature) => Err(AwsError::invalid_request(r.to_string())),
        Err(r) => Err(AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResponseException",
            r.to_string(),
        )),
    }
}
