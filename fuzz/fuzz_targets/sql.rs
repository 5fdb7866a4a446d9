//! Rule SQL and the messages it runs over: the first line is the statement,
//! the rest the payload. Parsing must never panic, and a statement that
//! parses evaluates over any payload without panicking.
#![no_main]

use edgegate::sql::{Message, evaluate, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (sql, payload) = data.split_at(split);
    let payload = payload.get(1..).unwrap_or_default();
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let Ok(statement) = parse(sql) else {
        return;
    };
    let json = Message::parse_payload(payload);
    let message = Message {
        topic: "site/north/lamp-1/telemetry",
        payload,
        json: json.as_ref(),
        client_id: Some("lamp-1"),
        principal: Some("3f2a"),
        timestamp_ms: 1_796_000_000_000,
        account: "123456789012",
    };
    let _ = evaluate(&statement, &message);
});
