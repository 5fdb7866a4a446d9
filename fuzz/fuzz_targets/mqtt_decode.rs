//! The MQTT decoder on anything a client could send, in both protocol
//! versions: it must never panic, and every packet it accepts must encode
//! to bytes that decode to the same packet (what the gateway forwards is
//! what it understood).
#![no_main]

use bytes::BytesMut;
use edgegate::codec::{Protocol, decode, encode};
use libfuzzer_sys::fuzz_target;

/// The gateway's default `limits.max_packet_bytes`.
const MAX_PACKET: usize = 256 * 1024 + 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&version, bytes)) = data.split_first() else {
        return;
    };
    let protocol = if version & 1 == 0 {
        Protocol::V4
    } else {
        Protocol::V5
    };
    let mut buf = BytesMut::from(bytes);
    // Packet after packet, as a connection reads them, until one is
    // incomplete or refused.
    while let Ok(Some(packet)) = decode(&mut buf, protocol, MAX_PACKET) {
        let mut out = BytesMut::new();
        encode(&packet, protocol, &mut out);
        let again = decode(&mut out, protocol, usize::MAX);
        assert!(
            matches!(&again, Ok(Some(p)) if *p == packet),
            "{packet:?} encodes to what decodes as {again:?}"
        );
        assert!(out.is_empty(), "{packet:?} encodes to more than one packet");
    }
});
