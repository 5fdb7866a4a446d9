//! A device shadow of 1 KiB and a 100-byte update of it, for the shadow
//! merge bench and the instruction counts.

use edgegate::shadow::document::{Limits, Shadow, parse_update};
use serde_json::{Map, json};

/// The shadow (28 reported sensors, a desired mode and target), the
/// update (one sensor, one new field, a client token) and the limits.
pub(crate) fn shadow_and_update() -> (Shadow, &'static [u8], Limits) {
    let limits = Limits::default();
    let mut fields = Map::new();
    for i in 0..28 {
        fields.insert(format!("sensor_{i:02}"), json!({"value": i, "unit": "C"}));
    }
    let document = json!({"state": {"desired": {"mode": "eco", "target": 21}, "reported": fields}});
    let created = parse_update(document.to_string().as_bytes(), &limits).expect("valid");
    let shadow = Shadow::default()
        .update(&created, 1, &limits)
        .expect("accepted")
        .shadow;
    assert!(
        (900..=1200).contains(&shadow.state_bytes()),
        "{}",
        shadow.state_bytes()
    );
    let update: &[u8] = br#"{"state":{"reported":{"sensor_03":{"value":22.5,"unit":"F"},"mode":"eco"}},"clientToken":"tok-0001"}"#;
    assert!((90..=110).contains(&update.len()));
    (shadow, update, limits)
}
