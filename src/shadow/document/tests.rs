//! The rules of spec/aws-iot-shadow-rules.md §1.3-§1.11, each with the
//! spec's own examples; the merge and the delta against a naive model.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn doc(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a JSON document")
}

/// An update, with its `update/documents`.
#[derive(Debug)]
struct Done {
    shadow: Shadow,
    accepted: Vec<u8>,
    delta: Option<Vec<u8>>,
    documents: Vec<u8>,
}

fn update(shadow: &Shadow, body: Value, now: u64) -> Result<Done, ShadowError> {
    let req = parse_update(body.to_string().as_bytes(), &Limits::default()).map_err(|r| r.error)?;
    let u = shadow.update(&req, now, &Limits::default())?;
    let documents = shadow.documents(&u.shadow, req.client_token.as_deref(), now);
    Ok(Done {
        shadow: u.shadow,
        accepted: u.accepted,
        delta: u.delta,
        documents,
    })
}

fn refusal(body: &[u8]) -> (ErrorKind, String, Option<String>) {
    let r = parse_update(body, &Limits::default()).expect_err("refused");
    (r.error.kind, r.error.message, r.client_token)
}

#[test]
fn request_validation_answers_with_aws_messages() {
    use ErrorKind::*;
    let cases: &[(&[u8], ErrorKind, &str)] = &[
        (
            b"\xff\xfe",
            UnsupportedEncoding,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
        (b"not json", InvalidRequest, "Invalid JSON"),
        (b"[1,2]", InvalidRequest, "Invalid JSON"),
        (b"{}", InvalidRequest, "Missing required node: state"),
        (
            br#"{"state":"on"}"#,
            InvalidRequest,
            "State node must be an object",
        ),
        (
            br#"{"state":[]}"#,
            InvalidRequest,
            "State node must be an object",
        ),
        (
            br#"{"state":{"desired":1}}"#,
            InvalidRequest,
            "Desired node must be an object",
        ),
        (
            br#"{"state":{"reported":"x"}}"#,
            InvalidRequest,
            "Reported node must be an object",
        ),
        (
            br#"{"state":{"delta":{"a":1}}}"#,
            InvalidRequest,
            "State contains an invalid node: 'delta'",
        ),
        (
            br#"{"state":{},"version":"3"}"#,
            InvalidRequest,
            "Invalid version",
        ),
        (
            br#"{"state":{},"version":-1}"#,
            InvalidRequest,
            "Invalid version",
        ),
        (
            br#"{"state":{},"version":1.5}"#,
            InvalidRequest,
            "Invalid version",
        ),
        (
            br#"{"state":{},"clientToken":7}"#,
            InvalidRequest,
            "Invalid clientToken",
        ),
        // The schema before the version, the version before the depth.
        (
            br#"{"version":"x"}"#,
            InvalidRequest,
            "Missing required node: state",
        ),
        (
            br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}},"reported":"x"}}"#,
            InvalidRequest,
            "Reported node must be an object",
        ),
        (
            br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}},"version":"x"}"#,
            InvalidRequest,
            "Invalid version",
        ),
        (
            br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}"#,
            InvalidRequest,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
    ];
    for (body, kind, message) in cases {
        let (k, m, _) = refusal(body);
        assert_eq!(
            (k, m.as_str()),
            (*kind, *message),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let long = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "t".repeat(65));
    assert_eq!(refusal(long.as_bytes()).1, "Invalid clientToken");
    let (kind, _, _) = refusal(br#"{"state":{"desired":{"colors":[null,"RED"]}}}"#);
    assert_eq!(kind, InvalidRequest);
}

#[test]
fn six_levels_are_allowed() {
    let body = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}}"#;
    assert!(parse_update(body, &Limits::default()).is_ok());
}

#[test]
fn refusals_echo_the_client_token_once_it_is_read() {
    let (_, _, token) = refusal(br#"{"clientToken":"tok-1"}"#);
    assert_eq!(token.as_deref(), Some("tok-1"));
    let (_, _, token) = refusal(br#"{"clientToken":"tok-2","state":{"desired":1}}"#);
    assert_eq!(token.as_deref(), Some("tok-2"));
    assert_eq!(refusal(b"junk").2, None);
}

#[test]
fn error_documents_have_code_message_token_and_seconds() {
    let e = ShadowError::no_shadow("HelloWorld");
    let d = doc(&e.document(Some("tok"), 1_747_329_779));
    assert_eq!(
        d,
        json!({"code": 404, "message": "No shadow exists with name: 'HelloWorld'",
               "clientToken": "tok", "timestamp": 1_747_329_779})
    );
    assert!(doc(&e.document(None, 1)).get("clientToken").is_none());
}

#[test]
fn get_and_delete_tokens_are_read_leniently() {
    assert_eq!(
        client_token(br#"{"clientToken":"abc"}"#).as_deref(),
        Some("abc")
    );
    assert_eq!(client_token(b"{}"), None);
    assert_eq!(client_token(b""), None);
    assert_eq!(client_token(b"\x00garbage"), None);
}

/// §1.11, the SDK's cloud transcript, step by step.
#[test]
fn the_worked_sequence() {
    let none = Shadow::default();
    // 1. get before anything exists.
    assert_eq!(none.get(Some("t"), 10), None);
    // 2. reported Color=green: documents without previous, accepted v1, no delta.
    let u = update(
        &none,
        json!({"state":{"reported":{"Color":"green"}},"clientToken":"c2"}),
        100,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 1);
    assert!(u.delta.is_none());
    let documents = doc(&u.documents);
    assert!(documents.get("previous").is_none());
    assert_eq!(documents["current"]["version"], 1);
    assert_eq!(
        documents["current"]["state"],
        json!({"reported":{"Color":"green"}})
    );
    assert_eq!(documents["clientToken"], "c2");
    let accepted = doc(&u.accepted);
    assert_eq!(
        accepted,
        json!({"state":{"reported":{"Color":"green"}},
               "metadata":{"reported":{"Color":{"timestamp":100}}},
               "version":1,"timestamp":100,"clientToken":"c2"})
    );
    // 3. desired Color=green: in sync, no delta.
    let u = update(
        &u.shadow,
        json!({"state":{"desired":{"Color":"green"}}}),
        110,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 2);
    assert!(u.delta.is_none());
    // 4. desired Color=red: delta with the desired timestamp.
    let u = update(
        &u.shadow,
        json!({"state":{"desired":{"Color":"red"}},"clientToken":"c4"}),
        120,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 3);
    let documents = doc(&u.documents);
    assert_eq!(documents["previous"]["version"], 2);
    assert_eq!(documents["current"]["version"], 3);
    assert_eq!(
        doc(u.delta.as_ref().unwrap()),
        json!({"state":{"Color":"red"},"metadata":{"Color":{"timestamp":120}},
               "version":3,"timestamp":120,"clientToken":"c4"})
    );
    // 5. reported Color=red: back in sync.
    let u = update(
        &u.shadow,
        json!({"state":{"reported":{"Color":"red"}}}),
        130,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 4);
    assert!(u.delta.is_none());
    // 6. Status=Great both ways: v5, v6; get has both sections and no delta.
    let u = update(
        &u.shadow,
        json!({"state":{"reported":{"Status":"Great"}}}),
        140,
    )
    .unwrap();
    let u = update(
        &u.shadow,
        json!({"state":{"desired":{"Status":"Great"}}}),
        150,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 6);
    let got = doc(&u.shadow.get(None, 155).unwrap());
    assert_eq!(
        got["state"],
        json!({"desired":{"Color":"red","Status":"Great"},"reported":{"Color":"red","Status":"Great"}})
    );
    assert_eq!(got["version"], 6);
    // Per-field metadata: Color keeps the time it was written.
    assert_eq!(got["metadata"]["reported"]["Color"]["timestamp"], 130);
    assert_eq!(got["metadata"]["reported"]["Status"]["timestamp"], 140);
    // 7. reported Status=Awful: a reported-only update still publishes the delta.
    let u = update(
        &u.shadow,
        json!({"state":{"reported":{"Status":"Awful"}}}),
        160,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 7);
    assert_eq!(
        doc(u.delta.as_ref().unwrap())["state"],
        json!({"Status":"Great"})
    );
    assert_eq!(
        doc(u.delta.as_ref().unwrap())["metadata"],
        json!({"Status":{"timestamp":150}})
    );
    // 8. Status=null both ways: v8, v9; only Color remains.
    let u = update(
        &u.shadow,
        json!({"state":{"reported":{"Status":null}}}),
        170,
    )
    .unwrap();
    let u = update(&u.shadow, json!({"state":{"desired":{"Status":null}}}), 180).unwrap();
    assert_eq!(u.shadow.version, 9);
    let got = doc(&u.shadow.get(Some("g"), 185).unwrap());
    assert_eq!(
        got["state"],
        json!({"desired":{"Color":"red"},"reported":{"Color":"red"}})
    );
    assert_eq!(
        got["metadata"]["reported"],
        json!({"Color":{"timestamp":130}})
    );
    assert_eq!(got["clientToken"], "g");
    // 9. delete answers with the last version; the next shadow carries on from it.
    let (tombstone, deleted) = u.shadow.delete(Some("d"), 190).unwrap();
    assert_eq!(
        doc(&deleted),
        json!({"version":9,"timestamp":190,"clientToken":"d"})
    );
    assert_eq!(tombstone.get(None, 191), None);
    assert_eq!(tombstone.delete(None, 191), None);
    let again = update(&tombstone, json!({"state":{"reported":{"x":1}}}), 200).unwrap();
    assert_eq!(again.shadow.version, 10);
    // After 48 hours a new shadow starts again from version 1.
    let later = 190 + TOMBSTONE_SECS;
    assert!(!tombstone.is_expired(later - 1) && tombstone.is_expired(later));
    let fresh = update(&tombstone, json!({"state":{"reported":{"x":1}}}), later).unwrap();
    assert_eq!(fresh.shadow.version, 1);
    assert!(doc(&fresh.documents).get("previous").is_none());
    assert_eq!(
        doc(&again.shadow.get(None, 201).unwrap())["state"],
        json!({"reported":{"x":1}})
    );
    assert!(doc(&again.documents).get("previous").is_none());
}

#[test]
fn merge_rules() {
    // (before, update state, desired after, reported after)
    let cases = [
        // Untouched fields stay; null deletes; nested objects merge.
        (
            json!({"desired":{"a":1,"b":{"c":1,"d":2}}}),
            json!({"desired":{"b":{"c":null,"e":3},"f":true}}),
            json!({"a":1,"b":{"d":2,"e":3},"f":true}),
            Value::Null,
        ),
        // Arrays replace whole.
        (
            json!({"reported":{"l":[1,2,3]}}),
            json!({"reported":{"l":[4]}}),
            Value::Null,
            json!({"l":[4]}),
        ),
        // A section set to null or {} is removed.
        (
            json!({"desired":{"a":1},"reported":{"a":1}}),
            json!({"desired":null,"reported":{}}),
            Value::Null,
            Value::Null,
        ),
        // A section whose last field is deleted disappears.
        (
            json!({"desired":{"a":1}}),
            json!({"desired":{"a":null}}),
            Value::Null,
            Value::Null,
        ),
        // New objects are stored without their null and empty fields.
        (
            json!({}),
            json!({"desired":{"a":{"b":null,"c":{}},"d":{"e":null}}}),
            Value::Null,
            Value::Null,
        ),
        // Type changes replace.
        (
            json!({"desired":{"a":{"b":1},"c":5}}),
            json!({"desired":{"a":"flat","c":{"d":1}}}),
            json!({"a":"flat","c":{"d":1}}),
            Value::Null,
        ),
        // state null clears both; state {} changes nothing.
        (
            json!({"desired":{"a":1},"reported":{"b":2}}),
            Value::Null,
            Value::Null,
            Value::Null,
        ),
        (
            json!({"desired":{"a":1},"reported":{"b":2}}),
            json!({}),
            json!({"a":1}),
            json!({"b":2}),
        ),
    ];
    for (before, state, desired, reported) in cases {
        let shadow = if before == json!({}) {
            Shadow::default()
        } else {
            update(&Shadow::default(), json!({ "state": before }), 1)
                .unwrap()
                .shadow
        };
        let u = update(&shadow, json!({ "state": state }), 2).unwrap();
        let section = |s: &Option<Map<String, Value>>| s.clone().map_or(Value::Null, Value::Object);
        assert_eq!(section(&u.shadow.desired), desired, "desired after {state}");
        assert_eq!(
            section(&u.shadow.reported),
            reported,
            "reported after {state}"
        );
        assert_eq!(
            u.shadow.version,
            shadow.version + 1,
            "every update is a version"
        );
    }
}

#[test]
fn metadata_follows_writes() {
    let s = update(
        &Shadow::default(),
        json!({"state":{"reported":{"a":1,"l":[1,{"x":2}],"o":{"p":1}}}}),
        10,
    )
    .unwrap()
    .shadow;
    assert_eq!(
        Value::Object(s.metadata.reported.clone().unwrap()),
        json!({"a":{"timestamp":10},"l":[{"timestamp":10},{"x":{"timestamp":10}}],"o":{"p":{"timestamp":10}}})
    );
    let u = update(&s, json!({"state":{"reported":{"o":{"q":2},"a":null}}}), 20).unwrap();
    assert_eq!(
        Value::Object(u.shadow.metadata.reported.clone().unwrap()),
        json!({"l":[{"timestamp":10},{"x":{"timestamp":10}}],"o":{"p":{"timestamp":10},"q":{"timestamp":20}}})
    );
    // The update's own metadata is the request's shape, deletions included.
    assert_eq!(
        doc(&u.accepted)["metadata"],
        json!({"reported":{"o":{"q":{"timestamp":20}},"a":{"timestamp":20}}})
    );
    // The echo is the request's state as sent, nulls included.
    assert_eq!(
        doc(&u.accepted)["state"],
        json!({"reported":{"o":{"q":2},"a":null}})
    );
}

#[test]
fn delta_rules() {
    let cases = [
        // Only in desired: pending.
        (json!({"a":1}), Value::Null, Some(json!({"a":1}))),
        // Only in reported: never in the delta.
        (json!({"a":1}), json!({"a":1,"b":2}), None),
        // Numbers compare by value.
        (json!({"a":1}), json!({"a":1.0}), None),
        // Nested: the path down to the differing leaf.
        (
            json!({"lights":{"color":{"r":0,"g":255}}}),
            json!({"lights":{"color":{"r":0,"g":0}}}),
            Some(json!({"lights":{"color":{"g":255}}})),
        ),
        // Arrays whole.
        (
            json!({"l":[1,2]}),
            json!({"l":[1]}),
            Some(json!({"l":[1,2]})),
        ),
        (json!({"l":[1,2]}), json!({"l":[1,2]}), None),
        // Type mismatch.
        (json!({"a":"1"}), json!({"a":1}), Some(json!({"a":"1"}))),
    ];
    for (desired, reported, delta) in cases {
        let mut state = json!({ "desired": desired });
        if !reported.is_null() {
            state["reported"] = reported.clone();
        }
        let s = update(&Shadow::default(), json!({ "state": state }), 5)
            .unwrap()
            .shadow;
        assert_eq!(
            s.delta().map(|(d, _)| Value::Object(d)),
            delta,
            "desired {desired} reported {reported}"
        );
    }
}

#[test]
fn optimistic_locking() {
    let s = update(&Shadow::default(), json!({"state":{"desired":{"a":1}}}), 1)
        .unwrap()
        .shadow;
    let s = update(&s, json!({"state":{"desired":{"a":2}}}), 2)
        .unwrap()
        .shadow;
    assert_eq!(s.version, 2);
    // The version the client last saw is accepted.
    let next = update(&s, json!({"state":{"desired":{"a":3}},"version":2}), 3).unwrap();
    assert_eq!(next.shadow.version, 3);
    let e = update(&s, json!({"state":{"desired":{"a":3}},"version":1}), 3).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Conflict, "Version conflict")
    );
    assert_eq!(e.kind.code(), 409);
    // A shadow that never existed is at version 0.
    assert!(update(&Shadow::default(), json!({"state":{},"version":0}), 1).is_ok());
    assert_eq!(
        update(&Shadow::default(), json!({"state":{},"version":3}), 1)
            .unwrap_err()
            .kind,
        ErrorKind::Conflict
    );
}

#[test]
fn size_limit_is_on_the_merged_state() {
    let limits = Limits::default();
    let half = "x".repeat(4000);
    let s = update(
        &Shadow::default(),
        json!({"state":{"desired":{"a":half}}}),
        1,
    )
    .unwrap()
    .shadow;
    let s = update(&s, json!({"state":{"reported":{"a":half}}}), 1)
        .unwrap()
        .shadow;
    let e = update(&s, json!({"state":{"reported":{"b":"y".repeat(300)}}}), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(e.message, "The payload exceeds the maximum size allowed");
    assert!(s.state_bytes() <= limits.max_state_bytes);
    // A refused update changes nothing, and deleting to shrink is accepted.
    let shrunk = update(&s, json!({"state":{"reported":{"a":null}}}), 1).unwrap();
    assert!(shrunk.shadow.state_bytes() < 5000);
}

#[test]
fn records_round_trip() {
    let s = update(
        &Shadow::default(),
        json!({"state":{"desired":{"a":[1,2]},"reported":{"b":{"c":"d"}}}}),
        9,
    )
    .unwrap()
    .shadow;
    assert_eq!(Shadow::from_record(&s.to_record()), Some(s.clone()));
    let (tombstone, _) = s.delete(None, 10).unwrap();
    assert_eq!(Shadow::from_record(&tombstone.to_record()), Some(tombstone));
    assert_eq!(Shadow::from_record(b"\x00 not a record"), None);
}

/// A document as its leaves: path to value; arrays are leaves, empty
/// objects have none.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut BTreeMap<Vec<String>, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                path.push(k.clone());
                leaves(v, path, out);
                path.pop();
            }
        }
        other => {
            out.insert(path.clone(), other.clone());
        }
    }
}

fn flat(section: &Option<Map<String, Value>>) -> BTreeMap<Vec<String>, Value> {
    let mut out = BTreeMap::new();
    if let Some(m) = section {
        leaves(&Value::Object(m.clone()), &mut Vec::new(), &mut out);
    }
    out
}

/// The patch's leaves in order, with `{}` as a deletion like `null`.
fn patch_leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(k.clone());
                patch_leaves(v, path, out);
                path.pop();
            }
        }
        Value::Object(_) => out.push((path.clone(), Value::Null)),
        other => out.push((path.clone(), other.clone())),
    }
}

/// The naive merge: each leaf of the patch replaces what is on its path
/// (a value on the way becomes an object) and everything below it; a null
/// removes everything below it.
fn model_merge(model: &mut BTreeMap<Vec<String>, Value>, patch: &Value) {
    let mut ops = Vec::new();
    patch_leaves(patch, &mut Vec::new(), &mut ops);
    for (path, value) in ops {
        for n in 1..path.len() {
            model.remove(&path[..n]);
        }
        model.retain(|k, _| !k.starts_with(&path));
        if !value.is_null() {
            model.insert(path, value);
        }
    }
}

fn model_delta(
    desired: &BTreeMap<Vec<String>, Value>,
    reported: &BTreeMap<Vec<String>, Value>,
) -> BTreeMap<Vec<String>, Value> {
    desired
        .iter()
        .filter(|(path, want)| match (reported.get(*path), want) {
            (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() != b.as_f64(),
            (Some(have), want) => have != *want,
            (None, _) => true,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0i64..4).prop_map(Value::from),
        prop_oneof![Just("a"), Just("b")].prop_map(Value::from),
        prop::collection::vec((0i64..3).prop_map(Value::from), 0..3).prop_map(Value::Array),
    ]
}

fn object() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop::collection::btree_map(prop_oneof![Just("x"), Just("y"), Just("z")], inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    })
}

fn section_patch() -> impl Strategy<Value = Value> {
    object().prop_filter_map("an object", |v| v.is_object().then_some(v))
}

proptest! {
    #[test]
    fn merge_and_delta_agree_with_the_model(
        patches in prop::collection::vec((section_patch(), section_patch()), 1..6)
    ) {
        let limits = Limits { max_state_bytes: usize::MAX, max_depth: 64 };
        let mut shadow = Shadow::default();
        let (mut desired, mut reported) = (BTreeMap::new(), BTreeMap::new());
        for (d, r) in patches {
            let body = json!({"state": {"desired": d, "reported": r}}).to_string();
            let req = parse_update(body.as_bytes(), &limits).expect("valid");
            shadow = shadow.update(&req, 1, &limits).expect("accepted").shadow;
            // A section set to {} is cleared as a whole.
            if d.as_object().is_some_and(Map::is_empty) { desired.clear() } else { model_merge(&mut desired, &d) }
            if r.as_object().is_some_and(Map::is_empty) { reported.clear() } else { model_merge(&mut reported, &r) }
            prop_assert_eq!(flat(&shadow.desired), desired.clone());
            prop_assert_eq!(flat(&shadow.reported), reported.clone());
            let delta = shadow.delta().map(|(d, _)| d);
            prop_assert_eq!(flat(&delta), model_delta(&desired, &reported));
            // Every stored leaf has a timestamp at the same path.
            let meta = flat(&shadow.metadata.desired);
            for path in desired.keys() {
                let mut at = path.clone();
                if !matches!(desired[path], Value::Array(_)) {
                    at.push("timestamp".into());
                    prop_assert!(meta.contains_key(&at), "no metadata at {:?}", at);
                }
            }
        }
    }

    #[test]
    fn requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_update(&bytes, &Limits::default());
        let _ = client_token(&bytes);
        let _ = Shadow::from_record(&bytes);
    }

    #[test]
    fn json_requests_never_panic(state in object(), version in prop::option::of(0u64..3)) {
        let mut body = json!({"state": state});
        if let Some(v) = version { body["version"] = v.into(); }
        if let Ok(req) = parse_update(body.to_string().as_bytes(), &Limits::default()) {
            let s = Shadow::default();
            if let Ok(u) = s.update(&req, 1, &Limits::default()) {
                let _ = u.shadow.get(None, 2);
            }
        }
    }
}

#[test]
fn a_stored_shadow_reads_back_with_the_numbers_it_was_given() {
    // Found by fuzz/run shadow_document: this integer, too big for 64 bits,
    // was accepted as 1.7000600000000001e44 and read back from the store as
    // 1.70006e44.
    let body = br#"{"state":{"reported":{"big":170006000000000000000000003016412660772459848,"pi":3.141592653589793}}}"#;
    let req = parse_update(body, &Limits::default()).expect("valid");
    let done = Shadow::default()
        .update(&req, 1_796_000_000, &Limits::default())
        .expect("accepted");
    let back = Shadow::from_record(&done.shadow.to_record()).expect("readable");
    assert_eq!(back, done.shadow);
}
