use super::*;
use bytes::BytesMut;
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn roundtrip(p: &Packet, proto: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(p, proto, &mut buf);
    let total = buf.len();
    // Every strict prefix is incomplete, never an error.
    for cut in 0..total {
        let mut part = BytesMut::from(&buf[..cut]);
        assert_eq!(
            decode(&mut part, proto, MAX),
            Ok(None),
            "prefix {cut} of {p:?}"
        );
    }
    let out = decode(&mut buf, proto, MAX)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty());
    out
}

fn raw(bytes: &[u8], proto: Protocol) -> Result<Option<Packet>, ProtocolError> {
    decode(&mut BytesMut::from(bytes), proto, MAX)
}

fn publish(qos: QoS, props: PublishProperties) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: true,
        topic: "a/b".into(),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: props,
        payload: Bytes::from_static(b"hello"),
    }
}

fn sample_packets(proto: Protocol) -> Vec<Packet> {
    let v5 = proto == Protocol::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let pprops = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        topic_alias: Some(3),
        subscription_identifiers: vec![1, 300],
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
    };
    vec![
        Packet::Connect(Box::new(Connect {
            protocol: proto,
            clean_start: true,
            keep_alive: 30,
            client_id: "dev-1".into(),
            will: Some(Will {
                topic: "will/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: if v5 {
                    PublishProperties {
                        message_expiry_interval: Some(10),
                        user_properties: vec![("a".into(), "b".into())],
                        ..Default::default()
                    }
                } else {
                    PublishProperties::default()
                },
                delay_interval: if v5 { 5 } else { 0 },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
            properties: props(Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(10),
                maximum_packet_size: Some(4096),
                topic_alias_maximum: Some(8),
                user_properties: vec![("x".into(), "y".into())],
                ..Default::default()
            }),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: props(Properties {
                maximum_qos: Some(1),
                retain_available: Some(1),
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(60),
                reason_string: Some("ok".into()),
                ..Default::default()
            }),
        }),
        Packet::Publish(publish(QoS::AtMostOnce, PublishProperties::default())),
        Packet::Publish(publish(
            QoS::ExactlyOnce,
            if v5 {
                pprops
            } else {
                PublishProperties::default()
            },
        )),
        Packet::PubAck(Ack::ok(1)),
        Packet::PubRec(Ack {
            pkid: 2,
            code: if v5 { 0x10 } else { 0 },
            properties: props(Properties {
                reason_string: Some("none".into()),
                ..Default::default()
            }),
        }),
        Packet::PubRel(Ack::ok(3)),
        Packet::PubComp(Ack::ok(4)),
        Packet::Subscribe(Subscribe {
            pkid: 5,
            filters: vec![
                ("a/+".into(), SubOptions::qos(QoS::AtLeastOnce)),
                (
                    "$share/g/b/#".into(),
                    SubOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                ),
            ],
            properties: props(Properties {
                subscription_identifier: Some(42),
                ..Default::default()
            }),
        }),
        Packet::SubAck(SubAck {
            pkid: 5,
            codes: vec![1, 0x80],
            properties: Properties::default(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 6,
            filters: vec!["a/+".into()],
            properties: Properties::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 6,
            codes: if v5 { vec![0, 0x11] } else { vec![] },
            properties: Properties::default(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(if v5 {
            Disconnect::with_reason(0x8e, Some("taken over".into()))
        } else {
            Disconnect::with_reason(0, None)
        }),
    ]
}

#[test]
fn every_packet_roundtrips_in_both_versions() {
    for proto in [Protocol::V4, Protocol::V5] {
        for p in sample_packets(proto) {
            assert_eq!(roundtrip(&p, proto), p, "{proto:?}");
        }
    }
}

#[test]
fn auth_roundtrips_on_v5_and_is_invalid_on_v4() {
    let p = Packet::Auth(Disconnect {
        code: 0x18,
        properties: Properties {
            authentication_method: Some("m".into()),
            ..Default::default()
        },
    });
    assert_eq!(roundtrip(&p, Protocol::V5), p);
    assert_eq!(
        raw(&[0xf0, 0x00], Protocol::V4),
        Err(ProtocolError::InvalidPacketType(15))
    );
}

#[test]
fn publish_len_matches_encoding() {
    for proto in [Protocol::V4, Protocol::V5] {
        for p in sample_packets(proto) {
            if let Packet::Publish(p) = p {
                let mut buf = BytesMut::new();
                encode_publish(&p.view(), proto, &mut buf);
                assert_eq!(publish_len(&p.view(), proto), buf.len());
            }
        }
    }
}

#[test]
fn rejects_malformed_fixed_headers() {
    // Remaining length with a fifth byte [MQTT-1.5.5-1].
    assert_eq!(
        raw(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], Protocol::V4),
        Err(ProtocolError::MalformedLength)
    );
    // SUBSCRIBE must have flags 0010 [MQTT-3.8.1-1].
    assert_eq!(
        raw(&[0x80, 0x02, 0x00, 0x01], Protocol::V4),
        Err(ProtocolError::BadFixedHeaderFlags)
    );
    // Packet type 0 is reserved.
    assert_eq!(
        raw(&[0x00, 0x00], Protocol::V4),
        Err(ProtocolError::InvalidPacketType(0))
    );
    // PINGREQ with a body.
    assert!(raw(&[0xc0, 0x01, 0x00], Protocol::V4).is_err());
}

#[test]
fn rejects_oversize_before_buffering_it() {
    // Header announces 1 MiB; only the header has arrived.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V4, 1024),
        Err(ProtocolError::PacketTooLarge {
            size: 4 + (1 << 20),
            max: 1024
        })
    );
}

#[test]
fn rejects_publish_rule_breaks() {
    // QoS 3.
    assert!(matches!(
        raw(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], Protocol::V4),
        Err(ProtocolError::Malformed(_))
    ));
    // DUP on QoS 0 [MQTT-3.3.1-2].
    assert!(matches!(
        raw(&[0x38, 0x03, 0x00, 0x01, b'a'], Protocol::V4),
        Err(ProtocolError::Malformed(_))
    ));
    // Wildcard in a topic name [MQTT-3.3.2-2].
    assert_eq!(
        raw(&[0x30, 0x03, 0x00, 0x01, b'#'], Protocol::V4),
        Err(ProtocolError::Topic(
            crate::topic::TopicError::WildcardInName
        ))
    );
    // Packet id 0 on QoS 1 [MQTT-2.2.1-3].
    assert!(matches!(
        raw(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], Protocol::V4),
        Err(ProtocolError::Violation(_))
    ));
    // Invalid UTF-8 in the topic.
    assert_eq!(
        raw(&[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], Protocol::V4),
        Err(ProtocolError::InvalidUtf8)
    );
    // U+0000 in the topic.
    assert_eq!(
        raw(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], Protocol::V4),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn rejects_reserved_suback_codes_in_311() {
    // Found by fuzz/run mqtt_decode: a reserved code decoded, and encoded
    // back as 0x80, so the packet forwarded was not the one received.
    for code in [0x03, 0x7f, 0x81, 0xc6] {
        assert!(
            matches!(
                raw(&[0x90, 0x03, 0x00, 0x04, code], Protocol::V4),
                Err(ProtocolError::Violation(_))
            ),
            "{code:#04x}"
        );
    }
    for code in [0x00, 0x01, 0x02, 0x80] {
        assert!(raw(&[0x90, 0x03, 0x00, 0x04, code], Protocol::V4).is_ok());
    }
}

#[test]
fn connack_return_codes_of_311_read_as_reason_codes() {
    // Found by fuzz/run mqtt_decode: a 3.1.1 return code was kept as it
    // came, so 1 (unacceptable protocol version) encoded back as 5.
    for (v4, v5) in [
        (0, reason::SUCCESS),
        (1, reason::UNSUPPORTED_PROTOCOL_VERSION),
        (2, reason::CLIENT_IDENTIFIER_NOT_VALID),
        (3, reason::SERVER_UNAVAILABLE),
        (4, reason::BAD_USER_NAME_OR_PASSWORD),
        (5, reason::NOT_AUTHORIZED),
    ] {
        let Ok(Some(Packet::ConnAck(a))) = raw(&[0x20, 0x02, 0x00, v4], Protocol::V4) else {
            panic!("return code {v4}");
        };
        assert_eq!(a.code, v5);
        assert_eq!(
            roundtrip(&Packet::ConnAck(a.clone()), Protocol::V4),
            Packet::ConnAck(a)
        );
    }
    assert!(matches!(
        raw(&[0x20, 0x02, 0x00, 0x0b], Protocol::V4),
        Err(ProtocolError::Violation(_))
    ));
}

#[test]
fn rejects_bad_properties() {
    // PUBLISH v5 with message expiry twice.
    let bytes = [
        0x30, 0x0e, 0x00, 0x01, b'a', 0x0a, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1,
    ];
    assert_eq!(
        raw(&bytes, Protocol::V5),
        Err(ProtocolError::DuplicateProperty(0x02))
    );
    // PUBLISH v5 carrying a session expiry, which only CONNECT, CONNACK and DISCONNECT may.
    let bytes = [0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1];
    assert_eq!(
        raw(&bytes, Protocol::V5),
        Err(ProtocolError::UnexpectedProperty(0x11))
    );
    // SUBSCRIBE with subscription identifier 0.
    let bytes = [0x82, 0x08, 0x00, 0x01, 0x02, 0x0b, 0x00, 0x00, 0x01, b'a'];
    assert!(raw(&bytes, Protocol::V5).is_err());
}

#[test]
fn rejects_bad_connects() {
    let connect = |name: &[u8], level: u8, flags: u8| {
        let mut v = vec![0x10, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&[level, flags, 0, 60, 0, 1, b'c']);
        v[1] = (v.len() - 2) as u8;
        v
    };
    assert!(matches!(
        raw(&connect(b"MQTT", 4, 0x02), Protocol::V4),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(
        raw(&connect(b"MQTT", 3, 0x02), Protocol::V4),
        Err(ProtocolError::UnsupportedProtocol(3))
    );
    assert_eq!(
        raw(&connect(b"MQTX", 4, 0x02), Protocol::V4),
        Err(ProtocolError::InvalidProtocolName)
    );
    // Reserved flag [MQTT-3.1.2-3].
    assert!(raw(&connect(b"MQTT", 4, 0x03), Protocol::V4).is_err());
    // Will QoS without will flag [MQTT-3.1.2-11].
    assert!(raw(&connect(b"MQTT", 4, 0x0a), Protocol::V4).is_err());
    // Password without user name on 3.1.1 [MQTT-3.1.2-22].
    assert!(raw(&connect(b"MQTT", 4, 0x42), Protocol::V4).is_err());
}

#[test]
fn subscribe_option_bits_are_checked() {
    // v3.1.1: upper bits must be 0 [MQTT-3.8.3-4].
    let bytes = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04];
    assert!(raw(&bytes, Protocol::V4).is_err());
    // v5: no local is allowed.
    let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x04];
    assert!(matches!(
        raw(&bytes, Protocol::V5),
        Ok(Some(Packet::Subscribe(_)))
    ));
    // Empty SUBSCRIBE [MQTT-3.8.3-3].
    assert!(raw(&[0x82, 0x02, 0x00, 0x01], Protocol::V4).is_err());
}

#[test]
fn connack_code_maps_to_v4_return_code() {
    let p = Packet::ConnAck(ConnAck {
        session_present: false,
        code: reason::NOT_AUTHORIZED,
        properties: Properties::default(),
    });
    let mut buf = BytesMut::new();
    encode(&p, Protocol::V4, &mut buf);
    assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x05]);
}

#[test]
fn decodes_several_packets_from_one_buffer() {
    let mut buf = BytesMut::new();
    encode(&Packet::PingReq, Protocol::V4, &mut buf);
    encode(&Packet::PubAck(Ack::ok(9)), Protocol::V4, &mut buf);
    assert_eq!(
        decode(&mut buf, Protocol::V4, MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode(&mut buf, Protocol::V4, MAX),
        Ok(Some(Packet::PubAck(Ack::ok(9))))
    );
    assert_eq!(decode(&mut buf, Protocol::V4, MAX), Ok(None));
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for proto in [Protocol::V4, Protocol::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            // Decode until error or need-more; each step must make progress.
            while let Ok(Some(_)) = decode(&mut buf, proto, 1024) {}
        }
    }

    #[test]
    fn publish_roundtrips(
        topic in "[a-z/]{1,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        qos in 0u8..3,
        retain in any::<bool>(),
        pkid in 1u16..,
        expiry in proptest::option::of(any::<u32>()),
        users in proptest::collection::vec(("[a-z]{0,5}", "[a-z]{0,5}"), 0..3),
    ) {
        let qos = QoS::from_u8(qos).expect("0..3");
        for proto in [Protocol::V4, Protocol::V5] {
            let properties = if proto == Protocol::V5 {
                PublishProperties { message_expiry_interval: expiry, user_properties: users.clone(), ..Default::default() }
            } else {
                PublishProperties::default()
            };
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain,
                topic: topic.as_str().into(),
                pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
                properties,
                payload: Bytes::from(payload.clone()),
            });
            let mut buf = BytesMut::new();
            encode(&p, proto, &mut buf);
            prop_assert_eq!(decode(&mut buf, proto, usize::MAX).expect("valid"), Some(p));
        }
    }
}

// Byte strings written from the MQTT specifications' own examples and
// rules, decoded and encoded against fixed bytes rather than against this
// codec's own output.

fn fixed(p: &Packet, proto: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(p, proto, &mut buf);
    buf.to_vec()
}

#[test]
fn mqtt_311_connect_with_every_flag_of_figure_3_6() {
    // Connect Flags 0xCE: user name, password, will QoS 1, will, clean session;
    // Keep Alive 10 (MQTT 3.1.1 §3.1.2, Figure 3.6).
    let bytes = [
        0x10, 0x19, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A, // header
        0x00, 0x01, b'c', 0x00, 0x01, b'w', 0x00, 0x01, b'm', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
    ];
    let Some(Packet::Connect(c)) = raw(&bytes, Protocol::V4).expect("valid") else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol, Protocol::V4);
    assert!(c.clean_start);
    assert_eq!((c.keep_alive, c.client_id.as_str()), (10, "c"));
    let will = c.will.as_ref().expect("will");
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("w", &b"m"[..]));
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, false));
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    // The reserved flag must be zero [MQTT-3.1.2-3].
    let mut reserved = bytes;
    reserved[9] |= 0x01;
    assert!(raw(&reserved, Protocol::V4).is_err());
}

#[test]
fn mqtt_311_publish_and_subscribe_of_the_specification_examples() {
    // PUBLISH QoS 1, topic "a/b", packet identifier 10 (§3.3.2.3, Figure 3.11).
    let publish = [
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    let Some(Packet::Publish(p)) = raw(&publish, Protocol::V4).expect("valid") else {
        panic!("not a PUBLISH");
    };
    assert_eq!(
        (p.topic.as_str(), p.pkid, p.qos),
        ("a/b", 10, QoS::AtLeastOnce)
    );
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(fixed(&Packet::Publish(p), Protocol::V4), publish);
    // SUBSCRIBE "a/b" QoS 1 and "c/d" QoS 2, packet identifier 10 (Figure 3.22).
    let subscribe = [
        0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let Some(Packet::Subscribe(s)) = raw(&subscribe, Protocol::V4).expect("valid") else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!(s.pkid, 10);
    let filters: Vec<(&str, QoS)> = s.filters.iter().map(|(f, o)| (f.as_str(), o.qos)).collect();
    assert_eq!(
        filters,
        [("a/b", QoS::AtLeastOnce), ("c/d", QoS::ExactlyOnce)]
    );
    // SUBSCRIBE's fixed header flags must be 0010 [MQTT-3.8.1-1].
    let mut bad = subscribe;
    bad[0] = 0x80;
    assert!(raw(&bad, Protocol::V4).is_err());
    // SUBACK granting 0, 1, 2 and a failure (Figure 3.26).
    let suback = Packet::SubAck(SubAck {
        pkid: 10,
        codes: vec![0x00, 0x01, 0x02, 0x80],
        properties: Properties::default(),
    });
    assert_eq!(
        fixed(&suback, Protocol::V4),
        [0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80]
    );
}

#[test]
fn fixed_encodings_of_small_packets() {
    let connack = |session_present, code| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: Properties::default(),
        })
    };
    assert_eq!(
        fixed(&connack(true, 0), Protocol::V4),
        [0x20, 0x02, 0x01, 0x00]
    );
    // MQTT 5 Not authorized (0x87) is 3.1.1's return code 5.
    assert_eq!(
        fixed(&connack(false, 0x87), Protocol::V4),
        [0x20, 0x02, 0x00, 0x05]
    );
    assert_eq!(fixed(&Packet::PingResp, Protocol::V4), [0xD0, 0x00]);
    assert_eq!(raw(&[0xC0, 0x00], Protocol::V4), Ok(Some(Packet::PingReq)));
    assert_eq!(
        fixed(&Packet::PubAck(Ack::ok(10)), Protocol::V4),
        [0x40, 0x02, 0x00, 0x0A]
    );
    // PUBREL's flags are 0010 [MQTT-3.6.1-1].
    assert_eq!(
        fixed(&Packet::PubRel(Ack::ok(10)), Protocol::V4),
        [0x62, 0x02, 0x00, 0x0A]
    );
    // MQTT 5: a PUBACK with a reason code other than Success carries it;
    // without properties the property length may be omitted [MQTT-3.4.2.1].
    assert_eq!(
        fixed(&Packet::PubAck(Ack::with_code(10, 0x10)), Protocol::V5),
        [0x40, 0x03, 0x00, 0x0A, 0x10]
    );
    let Some(Packet::PubAck(a)) = raw(&[0x40, 0x02, 0x00, 0x0A], Protocol::V5).expect("valid")
    else {
        panic!("not a PUBACK");
    };
    assert_eq!((a.pkid, a.code), (10, 0));
}

#[test]
fn remaining_length_boundaries_of_table_2_4() {
    // The Remaining Length of a PUBLISH with topic "t" and no packet id is
    // 3 + the payload: payloads chosen to land on the table's boundaries.
    for (remaining, head) in [
        (127usize, &[0x7F][..]),
        (128, &[0x80, 0x01][..]),
        (16_383, &[0xFF, 0x7F][..]),
        (16_384, &[0x80, 0x80, 0x01][..]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01][..]),
    ] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            pkid: 0,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; remaining - 3]),
        });
        let bytes = fixed(&p, Protocol::V4);
        assert_eq!(bytes[0], 0x30);
        assert_eq!(
            &bytes[1..1 + head.len()],
            head,
            "remaining length {remaining}"
        );
        assert_eq!(bytes.len(), 1 + head.len() + remaining);
    }
    // A fifth length byte is malformed [MQTT-2.2.3].
    assert!(raw(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Protocol::V4).is_err());
}

#[test]
fn puback_reasons_are_only_those_puback_has() {
    for code in [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99] {
        assert_eq!(reason::puback(code), code, "{code:#04x} is a PUBACK code");
    }
    for code in [
        reason::RETAIN_NOT_SUPPORTED,
        reason::QOS_NOT_SUPPORTED,
        reason::PACKET_TOO_LARGE,
    ] {
        assert_eq!(reason::puback(code), reason::IMPLEMENTATION_SPECIFIC_ERROR);
    }
}
