//! The shadow document: request validation, the merge of an update, per-field
//! metadata, the delta, versions, limits and every response document
//! (spec/aws-iot-shadow-rules.md §1.3-§1.11).
//!
//! Pure: time comes in as epoch seconds, documents go out as bytes. The
//! service owns storage and topics; this module owns what AWS IoT answers.
//!
//! The merge follows AWS's own local implementation (Greengrass
//! ShadowManager), which mirrors the cloud: `null` deletes a field, `{}`
//! counts as missing, arrays replace whole, a section left empty disappears,
//! and a field's metadata changes only when the field is written. Metadata
//! is kept as a tree of the same shape as the state, `{"timestamp": t}` at
//! each leaf and one entry per array element.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What bounds a shadow (spec §1.10); AWS IoT's values by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Serialized `desired` plus `reported` after the merge.
    pub max_state_bytes: usize,
    /// Nesting levels inside `desired` and `reported`.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_state_bytes: 8192,
            max_depth: 6,
        }
    }
}

/// Longest `clientToken` (spec §1.3).
const MAX_CLIENT_TOKEN: usize = 64;

/// The class of a refusal: its HTTP status on REST and `code` on MQTT, and
/// the exception name boto3 maps it to (spec §1.4, §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 404: no such shadow.
    NotFound,
    /// 409: `version` is not the current version.
    Conflict,
    /// 413: the document would exceed its size limit.
    TooLarge,
    /// 415: the request is not UTF-8.
    UnsupportedEncoding,
    /// 429: too many requests in flight.
    Throttled,
    /// 500: the gateway failed (its store).
    Internal,
}

impl ErrorKind {
    /// The HTTP status, also the `code` of an MQTT error document.
    pub fn code(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::UnsupportedEncoding => 415,
            Self::Throttled => 429,
            Self::Internal => 500,
        }
    }

    /// The `x-amzn-ErrorType` of the REST API.
    pub fn exception(self) -> &'static str {
        match self {
            Self::InvalidRequest => "InvalidRequestException",
            Self::NotFound => "ResourceNotFoundException",
            Self::Conflict => "ConflictException",
            Self::TooLarge => "RequestEntityTooLargeException",
            Self::UnsupportedEncoding => "UnsupportedDocumentEncodingException",
            Self::Throttled => "ThrottlingException",
            Self::Internal => "InternalFailureException",
        }
    }
}

/// A refused shadow request, with AWS's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShadowError {
    /// Its class.
    pub kind: ErrorKind,
    /// AWS's text.
    pub message: String,
}

impl ShadowError {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// AWS's 404 for a get or delete of a shadow that does not exist; the
    /// classic shadow is named by its thing.
    pub fn no_shadow(display_name: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("No shadow exists with name: '{display_name}'"),
        )
    }

    /// The error document published on `.../rejected` (spec §1.4).
    pub fn document(&self, client_token: Option<&str>, now: u64) -> Vec<u8> {
        let mut doc = json!({
            "code": self.kind.code(),
            "message": self.message,
            "timestamp": now,
        });
        if let Some(t) = client_token {
            doc["clientToken"] = t.into();
        }
        doc.to_string().into_bytes()
    }
}

/// A refused request with the `clientToken` it carried, when one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: ShadowError,
    /// The request's token, echoed in the error document.
    pub client_token: Option<String>,
}

/// A section change an update asks for.
#[derive(Debug, Clone, PartialEq)]
enum SectionUpdate {
    /// `null` or `{}`: remove the section.
    Clear,
    /// Merge these fields.
    Merge(Map<String, Value>),
}

/// A validated update request (spec §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The request's `state`, as sent: echoed in `update/accepted`.
    state: Value,
    desired: Option<SectionUpdate>,
    reported: Option<SectionUpdate>,
    /// The request's `clientToken`.
    pub client_token: Option<String>,
    /// The version the client expects the shadow to be at.
    pub version: Option<u64>,
}

/// Reads the `clientToken` of a get or delete request; AWS ignores the rest
/// of the body, and an unreadable one has no token (spec §1.3).
pub fn client_token(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    match v.get("clientToken")? {
        Value::String(s) if s.len() <= MAX_CLIENT_TOKEN => Some(s.clone()),
        _ => None,
    }
}

/// Validates an update request in AWS's order: UTF-8, JSON, the schema, then
/// depth (spec §1.4).
pub fn parse_update(payload: &[u8], limits: &Limits) -> Result<Update, Rejected> {
    let refuse = |error, client_token| Rejected {
        error,
        client_token,
    };
    let text = std::str::from_utf8(payload).map_err(|_| {
        refuse(
            ShadowError::new(
                ErrorKind::UnsupportedEncoding,
                "Unsupported documented encoding; supported encoding is UTF-8",
            ),
            None,
        )
    })?;
    let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(text) else {
        return Err(refuse(ShadowError::invalid("Invalid JSON"), None));
    };
    let client_token = match doc.remove("clientToken") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_TOKEN => Some(s),
        Some(_) => {
            return Err(refuse(ShadowError::invalid("Invalid clientToken"), None));
        }
    };
    let fail = |error| refuse(error, client_token.clone());
    let state = doc
        .remove("state")
        .ok_or_else(|| fail(ShadowError::invalid("Missing required node: state")))?;
    let (mut desired, mut reported) = (None, None);
    match &state {
        // Clears both sections, as AWS's local shadow service does.
        Value::Null => {
            desired = Some(SectionUpdate::Clear);
            reported = Some(SectionUpdate::Clear);
        }
        Value::Object(sections) => {
            for (key, value) in sections {
                let (slot, name) = match key.as_str() {
                    "desired" => (&mut desired, "Desired"),
                    "reported" => (&mut reported, "Reported"),
                    other => {
                        return Err(fail(ShadowError::invalid(format!(
                            "State contains an invalid node: '{other}'"
                        ))));
                    }
                };
                *slot = Some(match value {
                    Value::Null => SectionUpdate::Clear,
                    Value::Object(m) if m.is_empty() => SectionUpdate::Clear,
                    Value::Object(m) => {
                        if has_null_in_array(value, false) {
                            return Err(fail(ShadowError::invalid(
                                "Invalid JSON: arrays in a shadow may not contain null",
                            )));
                        }
                        SectionUpdate::Merge(m.clone())
                    }
                    _ => {
                        return Err(fail(ShadowError::invalid(format!(
                            "{name} node must be an object"
                        ))));
                    }
                });
            }
        }
        _ => return Err(fail(ShadowError::invalid("State node must be an object"))),
    }
    let version = match doc.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| fail(ShadowError::invalid("Invalid version")))?,
        ),
    };
    // Depth once the whole schema holds, as AWS's own local service checks.
    for section in [&desired, &reported] {
        if let Some(SectionUpdate::Merge(m)) = section
            && m.values().map(depth_of).max().unwrap_or(0) + 1 > limits.max_depth
        {
            return Err(fail(ShadowError::invalid(format!(
                "JSON contains too many levels of nesting; maximum is {}",
                limits.max_depth
            ))));
        }
    }
    Ok(Update {
        state,
        desired,
        reported,
        client_token,
        version,
    })
}

/// Levels of nesting below a section: its own fields are level 1.
fn depth_of(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(depth_of).max().unwrap_or(0) + 1,
        Value::Array(a) => a.iter().map(depth_of).max().unwrap_or(0) + 1,
        _ => 0,
    }
}

fn has_null_in_array(v: &Value, in_array: bool) -> bool {
    match v {
        Value::Null => in_array,
        Value::Object(m) => m.values().any(|v| has_null_in_array(v, false)),
        Value::Array(a) => a.iter().any(|v| has_null_in_array(v, true)),
        _ => false,
    }
}

/// Metadata of both sections, shaped like the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Timestamps of `desired`'s fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    /// Timestamps of `reported`'s fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
}

/// One shadow as stored. A deleted shadow stays as a tombstone that keeps
/// its version, so that the next one carries on from it (spec §1.9).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    /// Whether it exists (false: a tombstone).
    pub exists: bool,
    /// Its version: the last accepted update's.
    pub version: u64,
    /// What the device should be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    /// What the device says it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
    /// When each field was last written.
    #[serde(default)]
    pub metadata: Metadata,
}

/// What an accepted update publishes (spec §1.8.1-§1.8.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The shadow after the update, to store.
    pub shadow: Shadow,
    /// `update/accepted`, and the REST response.
    pub accepted: Vec<u8>,
    /// `update/delta`, when the new document has one.
    pub delta: Option<Vec<u8>>,
    /// `update/documents`.
    pub documents: Vec<u8>,
}

impl Shadow {
    /// Reads a stored shadow.
    pub fn from_record(record: &[u8]) -> Option<Self> {
        serde_json::from_slice(record).ok()
    }

    /// The stored form.
    pub fn to_record(&self) -> Vec<u8> {
        // A map of JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Serialized size of the state, the figure the size limit bounds.
    pub fn state_bytes(&self) -> usize {
        let len = |s: &Option<Map<String, Value>>| {
            s.as_ref()
                .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()))
        };
        len(&self.desired) + len(&self.reported)
    }

    /// Applies `update` at `now` (epoch seconds): the version check, the
    /// merge, the size check, then every document it publishes.
    pub fn update(
        &self,
        update: &Update,
        now: u64,
        limits: &Limits,
    ) -> Result<Updated, ShadowError> {
        if let Some(v) = update.version
            && v != self.version
        {
            return Err(ShadowError::new(ErrorKind::Conflict, "Version conflict"));
        }
        let mut next = Shadow {
            exists: true,
            version: self.version + 1,
            ..Shadow::default()
        };
        if self.exists {
            next.desired.clone_from(&self.desired);
            next.reported.clone_from(&self.reported);
            next.metadata = self.metadata.clone();
        }
        apply_section(
            &mut next.desired,
            &mut next.metadata.desired,
            update.desired.as_ref(),
            now,
        );
        apply_section(
            &mut next.reported,
            &mut next.metadata.reported,
            update.reported.as_ref(),
            now,
        );
        if next.state_bytes() > limits.max_state_bytes {
            return Err(ShadowError::new(
                ErrorKind::TooLarge,
                "The payload exceeds the maximum size allowed",
            ));
        }
        let token = update.client_token.as_deref();
        let mut accepted = json!({
            "state": update.state,
            "metadata": patch_metadata(&update.state, now),
            "version": next.version,
            "timestamp": now,
        });
        with_token(&mut accepted, token);
        let delta = next.delta().map(|(state, metadata)| {
            let mut d = json!({
                "version": next.version,
                "timestamp": now,
                "state": state,
                "metadata": metadata,
            });
            with_token(&mut d, token);
            d.to_string().into_bytes()
        });
        let mut documents = json!({
            "previous": if self.exists { self.full_document() } else { Value::Null },
            "current": next.full_document(),
            "timestamp": now,
        });
        if !self.exists
            && let Some(m) = documents.as_object_mut()
        {
            m.remove("previous");
        }
        with_token(&mut documents, token);
        Ok(Updated {
            shadow: next,
            accepted: accepted.to_string().into_bytes(),
            delta,
            documents: documents.to_string().into_bytes(),
        })
    }

    /// `get/accepted`, and the REST response (spec §1.8.4); `None` if it does not exist.
    pub fn get(&self, client_token: Option<&str>, now: u64) -> Option<Vec<u8>> {
        if !self.exists {
            return None;
        }
        let mut state = self.state();
        if let Some((delta, _)) = self.delta() {
            state.insert("delta".into(), Value::Object(delta));
        }
        let mut doc = json!({
            "state": state,
            "metadata": self.metadata,
            "version": self.version,
            "timestamp": now,
        });
        with_token(&mut doc, client_token);
        Some(doc.to_string().into_bytes())
    }

    /// Deletes it: the tombstone to store and `delete/accepted` (spec
    /// §1.8.5); `None` if it does not exist.
    pub fn delete(&self, client_token: Option<&str>, now: u64) -> Option<(Shadow, Vec<u8>)> {
        if !self.exists {
            return None;
        }
        let mut doc = json!({ "version": self.version, "timestamp": now });
        with_token(&mut doc, client_token);
        let tombstone = Shadow {
            version: self.version,
            ..Shadow::default()
        };
        Some((tombstone, doc.to_string().into_bytes()))
    }

    fn state(&self) -> Map<String, Value> {
        let mut state = Map::new();
        if let Some(d) = &self.desired {
            state.insert("desired".into(), Value::Object(d.clone()));
        }
        if let Some(r) = &self.reported {
            state.insert("reported".into(), Value::Object(r.clone()));
        }
        state
    }

    /// State, metadata and version, as in `update/documents`.
    fn full_document(&self) -> Value {
        json!({
            "state": self.state(),
            "metadata": self.metadata,
            "version": self.version,
        })
    }

    /// The delta and its metadata (the desired timestamps of its fields),
    /// if `desired` differs from `reported` (spec §1.7).
    pub fn delta(&self) -> Option<(Map<String, Value>, Map<String, Value>)> {
        let desired = self.desired.as_ref()?;
        let delta = diff(self.reported.as_ref().unwrap_or(&Map::new()), desired);
        if delta.is_empty() {
            return None;
        }
        let metadata = project(
            &delta,
            self.metadata.desired.as_ref().unwrap_or(&Map::new()),
        );
        Some((delta, metadata))
    }
}

fn with_token(doc: &mut Value, token: Option<&str>) {
    if let Some(t) = token {
        doc["clientToken"] = t.into();
    }
}

fn apply_section(
    section: &mut Option<Map<String, Value>>,
    meta: &mut Option<Map<String, Value>>,
    update: Option<&SectionUpdate>,
    now: u64,
) {
    match update {
        None => {}
        Some(SectionUpdate::Clear) => {
            *section = None;
            *meta = None;
        }
        Some(SectionUpdate::Merge(patch)) => {
            let s = section.get_or_insert_with(Map::new);
            let m = meta.get_or_insert_with(Map::new);
            merge(s, m, patch, now);
            if s.is_empty() {
                *section = None;
                *meta = None;
            }
        }
    }
}

/// Whether a value counts as absent: `null` and `{}` (spec §1.5).
fn is_void(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Merges `patch` into `doc`, keeping `meta` in step.
fn merge(
    doc: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: u64,
) {
    for (key, new) in patch {
        if is_void(new) {
            doc.remove(key);
            meta.remove(key);
            continue;
        }
        match (doc.get_mut(key), new) {
            (Some(Value::Object(old)), Value::Object(fields)) => {
                let m = match meta.get_mut(key) {
                    Some(Value::Object(m)) => m,
                    _ => {
                        meta.insert(key.clone(), Value::Object(Map::new()));
                        match meta.get_mut(key) {
                            Some(Value::Object(m)) => m,
                            _ => continue,
                        }
                    }
                };
                merge(old, m, fields, now);
            }
            _ => {
                let value = stripped(new);
                if is_void(&value) {
                    doc.remove(key);
                    meta.remove(key);
                } else {
                    meta.insert(key.clone(), metadata_of(&value, now));
                    doc.insert(key.clone(), value);
                }
            }
        }
    }
}

/// A new value without its `null` and `{}` fields, at every depth.
fn stripped(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, v)| {
                    let v = stripped(v);
                    (!is_void(&v)).then(|| (k.clone(), v))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The metadata of a value written at `now`: its shape, with a timestamp
/// at each leaf and one entry per array element. A `null` is a leaf, so the
/// patch metadata of a request shows the deletions too (spec §1.6).
fn metadata_of(v: &Value, now: u64) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, now)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| metadata_of(v, now)).collect()),
        _ => json!({ "timestamp": now }),
    }
}

/// The metadata of an update response: the request's `state` with every
/// leaf stamped; a whole section set to `null` is one leaf.
fn patch_metadata(state: &Value, now: u64) -> Value {
    match state {
        Value::Object(sections) => Value::Object(
            sections
                .iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, now)))
                .collect(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// What `desired` holds that `reported` does not (spec §1.7): numbers are
/// compared by value, arrays and other values whole.
fn diff(reported: &Map<String, Value>, desired: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        if is_void(want) {
            continue;
        }
        match (reported.get(key), want) {
            (None, _) => {
                out.insert(key.clone(), want.clone());
            }
            (Some(have), _) if is_void(have) => {
                out.insert(key.clone(), want.clone());
            }
            (Some(Value::Object(have)), Value::Object(want)) => {
                let sub = diff(have, want);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (Some(Value::Number(a)), Value::Number(b)) => {
                if !same_number(a, b) {
                    out.insert(key.clone(), want.clone());
                }
            }
            (Some(have), _) => {
                if have != want {
                    out.insert(key.clone(), want.clone());
                }
            }
        }
    }
    out
}

/// `1 == 1.0`, as AWS compares numbers.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// The metadata of the fields of `delta`: the path down to each differing
/// field, and that field's whole metadata.
fn project(delta: &Map<String, Value>, meta: &Map<String, Value>) -> Map<String, Value> {
    delta
        .iter()
        .filter_map(|(k, v)| {
            let m = meta.get(k)?;
            Some((
                k.clone(),
                match (v, m) {
                    (Value::Object(d), Value::Object(m)) if !d.is_empty() => {
                        Value::Object(project(d, m))
                    }
                    _ => m.clone(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
