//! Device shadows: a stored shadow (as read back from disk) and an update
//! request (as a device sends it), split at the first NUL byte. Neither may
//! panic, and every accepted update stores a shadow that reads back the same.
#![no_main]

use edgegate::shadow::document::{Limits, Shadow, parse_update};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(0);
    let (record, request) = data.split_at(split);
    let request = request.get(1..).unwrap_or_default();
    let limits = Limits::default();
    let now = 1_796_000_000;
    let current = Shadow::from_record(record).unwrap_or_default();
    let _ = current.get(None, now);
    let _ = current.delta();
    let Ok(update) = parse_update(request, &limits) else {
        return;
    };
    if let Ok(updated) = current.update(&update, now, &limits) {
        let stored = updated.shadow.to_record();
        assert_eq!(
            Shadow::from_record(&stored).as_ref(),
            Some(&updated.shadow),
            "an accepted shadow reads back as it was stored"
        );
    }
});
