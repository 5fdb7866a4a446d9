//! Provisioning templates (from `[[provisioning.templates]]`) and the
//! parameters a device sends with RegisterThing, split at the first NUL
//! byte: neither may panic, whatever the other holds.
#![no_main]

use edgegate::provisioning::template::{CERTIFICATE_ID, Template};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (body, params) = data.split_at(split);
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(template) = Template::parse(body) else {
        return;
    };
    let mut given: BTreeMap<String, String> =
        std::str::from_utf8(params.get(1..).unwrap_or_default())
            .ok()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
    given.insert(CERTIFICATE_ID.to_owned(), "0".repeat(64));
    let _ = template.evaluate(&given);
});
