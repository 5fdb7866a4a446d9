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

/// How long a deleted shadow's version is kept: a shadow made again
/// within 48 hours carries on from it, a later one starts again (spec §1.9).
pub const TOMBSTONE_SECS: u64 = 48 * 3600;

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
    /// 503: the gateway holds as many shadows as it may.
    Unavailable,
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
            Self::Unavailable => 503,
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
            Self::Unavailable => "ServiceUnavailableException",
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

/// A validated update request (spec §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The request's `state`, as sent: echoed in `update/accepted`, and
    /// read for what it asks of each section ([`Update::section`]).
    state: Value,
    /// The request's `clientToken`.
    pub client_token: Option<String>,
    /// The version the client expects the shadow to be at.
    pub version: Option<u64>,
}

impl Update {
    /// What the update asks of section `name`: `None` leaves it, `Some(None)`
    /// clears it (`null`, `{}`, or a `null` state), `Some(Some(fields))`
    /// merges them. The state was validated, so nothing else is there.
    fn section(&self, name: &str) -> Option<Option<&Map<String, Value>>> {
        match &self.state {
            Value::Null => Some(None),
            Value::Object(sections) => sections
                .get(name)
                .map(|v| v.as_object().filter(|m| !m.is_empty())),
            _ => None,
        }
    }
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
    // A `null` state clears both sections, as AWS's local shadow service does.
    let sections = match &state {
        Value::Null => None,
        Value::Object(sections) => Some(sections),
        _ => return Err(fail(ShadowError::invalid("State node must be an object"))),
    };
    for (key, value) in sections.into_iter().flatten() {
        let name = match key.as_str() {
            "desired" => "Desired",
            "reported" => "Reported",
            other => {
                return Err(fail(ShadowError::invalid(format!(
                    "State contains an invalid node: '{other}'"
                ))));
            }
        };
        if !matches!(value, Value::Null | Value::Object(_)) {
            return Err(fail(ShadowError::invalid(format!(
                "{name} node must be an object"
            ))));
        }
        if has_null_in_array(value, false) {
            return Err(fail(ShadowError::invalid(
                "Invalid JSON: arrays in a shadow may not contain null",
            )));
        }
    }
    let version = match doc.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| fail(ShadowError::invalid("Invalid version")))?,
        ),
    };
    // Depth once the whole schema holds, as AWS's own local service checks.
    for section in sections.into_iter().flat_map(Map::values) {
        if let Value::Object(m) = section
            && depth(m.values()) > limits.max_depth
        {
            return Err(fail(ShadowError::invalid(format!(
                "JSON contains too many levels of nesting; maximum is {}",
                limits.max_depth
            ))));
        }
    }
    Ok(Update {
        state,
        client_token,
        version,
    })
}

/// Levels of nesting of an object or array with these children: its own
/// fields are level 1.
fn depth<'a>(children: impl Iterator<Item = &'a Value>) -> usize {
    children
        .map(|v| match v {
            Value::Object(m) => depth(m.values()),
            Value::Array(a) => depth(a.iter()),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
        + 1
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
    /// When a tombstone was deleted (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
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
        let mut counted = Counted(0);
        for section in [&self.desired, &self.reported].into_iter().flatten() {
            // Writing to a counter cannot fail.
            let _ = serde_json::to_writer(&mut counted, section);
        }
        counted.0
    }

    /// Applies `update` at `now` (epoch seconds): the version check, the
    /// merge, the size check, then every document it publishes.
    pub fn update(
        &self,
        update: &Update,
        now: u64,
        limits: &Limits,
    ) -> Result<Updated, ShadowError> {
        let version = if self.is_expired(now) {
            0
        } else {
            self.version
        };
        if let Some(v) = update.version
            && v != version
        {
            return Err(ShadowError::new(ErrorKind::Conflict, "Version conflict"));
        }
        let mut next = Shadow {
            exists: true,
            version: version.saturating_add(1),
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
            update.section("desired"),
            now,
        );
        apply_section(
            &mut next.reported,
            &mut next.metadata.reported,
            update.section("reported"),
            now,
        );
        if next.state_bytes() > limits.max_state_bytes {
            return Err(ShadowError::new(
                ErrorKind::TooLarge,
                "The payload exceeds the maximum size allowed",
            ));
        }
        let token = update.client_token.as_deref();
        let accepted = encode(&Accepted {
            state: &update.state,
            metadata: Stamped::Patch(&update.state, now),
            version: next.version,
            timestamp: now,
            client_token: token,
        });
        let delta = next.delta().map(|(state, metadata)| {
            encode(&Delta {
                version: next.version,
                timestamp: now,
                state: &state,
                metadata: &metadata,
                client_token: token,
            })
        });
        Ok(Updated {
            shadow: next,
            accepted,
            delta,
        })
    }

    /// `update/documents` for an update from `self` to `current` (spec
    /// §1.8.3), apart from [`Shadow::update`] since it is the largest
    /// response and often nobody listens for it.
    pub fn documents(&self, current: &Shadow, client_token: Option<&str>, now: u64) -> Vec<u8> {
        encode(&Documents {
            previous: self.exists.then(|| self.full()),
            current: current.full(),
            timestamp: now,
            client_token,
        })
    }

    /// `get/accepted`, and the REST response (spec §1.8.4); `None` if it does not exist.
    pub fn get(&self, client_token: Option<&str>, now: u64) -> Option<Vec<u8>> {
        if !self.exists {
            return None;
        }
        let delta = self.delta().map(|(d, _)| d);
        Some(encode(&Got {
            state: State {
                desired: self.desired.as_ref(),
                reported: self.reported.as_ref(),
                delta: delta.as_ref(),
            },
            metadata: &self.metadata,
            version: self.version,
            timestamp: now,
            client_token,
        }))
    }

    /// Deletes it: the tombstone to store and `delete/accepted` (spec
    /// §1.8.5); `None` if it does not exist.
    pub fn delete(&self, client_token: Option<&str>, now: u64) -> Option<(Shadow, Vec<u8>)> {
        if !self.exists {
            return None;
        }
        let tombstone = Shadow {
            version: self.version,
            deleted_at: Some(now),
            ..Shadow::default()
        };
        let body = encode(&Deleted {
            version: self.version,
            timestamp: now,
            client_token,
        });
        Some((tombstone, body))
    }

    /// Whether it is a tombstone old enough to be forgotten at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        !self.exists
            && self
                .deleted_at
                .is_some_and(|t| now.saturating_sub(t) >= TOMBSTONE_SECS)
    }

    /// State, metadata and version, as in `update/documents`.
    fn full(&self) -> Full<'_> {
        Full {
            state: State {
                desired: self.desired.as_ref(),
                reported: self.reported.as_ref(),
                delta: None,
            },
            metadata: &self.metadata,
            version: self.version,
        }
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

fn apply_section(
    section: &mut Option<Map<String, Value>>,
    meta: &mut Option<Map<String, Value>>,
    update: Option<Option<&Map<String, Value>>>,
    now: u64,
) {
    match update {
        None => {}
        Some(None) => {
            *section = None;
            *meta = None;
        }
        Some(Some(patch)) => {
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

/// Counts what is written, to size a document without keeping it.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A response document's bytes. Every response is written straight from
/// borrowed state: no JSON value is built to be thrown away.
fn encode(doc: &impl Serialize) -> Vec<u8> {
    // Maps with string keys and JSON values always serialize.
    serde_json::to_vec(doc).unwrap_or_default()
}

/// `update/accepted` (spec §1.8.1).
#[derive(Serialize)]
struct Accepted<'a> {
    state: &'a Value,
    metadata: Stamped<'a>,
    version: u64,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// `update/delta` (spec §1.8.2).
#[derive(Serialize)]
struct Delta<'a> {
    version: u64,
    timestamp: u64,
    state: &'a Map<String, Value>,
    metadata: &'a Map<String, Value>,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// `update/documents` (spec §1.8.3): no `previous` when the update created the shadow.
#[derive(Serialize)]
struct Documents<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<Full<'a>>,
    current: Full<'a>,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
struct Full<'a> {
    state: State<'a>,
    metadata: &'a Metadata,
    version: u64,
}

/// The sections that exist, and the delta when asked for.
#[derive(Serialize)]
struct State<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a Map<String, Value>>,
}

/// `get/accepted` (spec §1.8.4).
#[derive(Serialize)]
struct Got<'a> {
    state: State<'a>,
    metadata: &'a Metadata,
    version: u64,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// `delete/accepted` (spec §1.8.5).
#[derive(Serialize)]
struct Deleted<'a> {
    version: u64,
    timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// The metadata of an update response, written from the request as it is
/// serialized: its `state` with every leaf (a whole section set to `null`
/// included) as `{"timestamp": t}`, one entry per array element (spec §1.6).
enum Stamped<'a> {
    /// The request's whole `state`: not a leaf itself, even when `null`.
    Patch(&'a Value, u64),
    /// A value inside it.
    Value(&'a Value, u64),
}

impl Serialize for Stamped<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match *self {
            Self::Patch(Value::Object(sections), now) => {
                let mut m = s.serialize_map(Some(sections.len()))?;
                for (k, v) in sections {
                    m.serialize_entry(k, &Stamped::Value(v, now))?;
                }
                m.end()
            }
            Self::Patch(_, _) => s.serialize_map(Some(0))?.end(),
            Self::Value(Value::Object(fields), now) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, &Stamped::Value(v, now))?;
                }
                m.end()
            }
            Self::Value(Value::Array(items), now) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    q.serialize_element(&Stamped::Value(v, now))?;
                }
                q.end()
            }
            Self::Value(_, now) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("timestamp", &now)?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests;
