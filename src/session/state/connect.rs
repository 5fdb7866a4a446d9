//! CONNECT negotiation: whether a CONNECT is acceptable as written, and
//! what the session gets (client identifier, keep alive, session expiry,
//! windows) and the CONNACK says. Pure: the assigned client identifier
//! comes from the caller, and policies are asked afterwards.

use crate::codec::{Connect, Properties, Protocol, reason};
use crate::config::Config;
use crate::metrics::LimitKind;

/// What a CONNECT negotiated.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// The client identifier, as sent or as assigned.
    pub client_id: String,
    /// Keep alive in seconds; the connection may stay silent 1.5 times this.
    pub keep_alive_secs: u16,
    /// Session expiry in seconds (0: ends with the connection).
    pub expiry: u32,
    /// The CONNACK's properties (MQTT 5).
    pub connack: Properties,
    /// Unacknowledged QoS 1/2 publishes the gateway may send.
    pub send_window: usize,
    /// The largest packet the client takes.
    pub client_max_packet: usize,
    /// Topic aliases the client takes.
    pub out_alias_max: u16,
    /// Whether reason strings may be sent.
    pub problem_info: bool,
}

/// Why a CONNECT is refused: the CONNACK reason code, and the limit that
/// refused it, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// MQTT 5 reason code (mapped for 3.1.1 when encoded).
    pub code: u8,
    /// The configured limit behind it, if one.
    pub limit: Option<LimitKind>,
}

impl Refused {
    /// The certificate is not admitted, or its policies deny `iot:Connect`
    /// or the will's publish.
    pub const NOT_AUTHORIZED: Refused = Refused {
        code: reason::NOT_AUTHORIZED,
        limit: None,
    };
    /// The client id made more CONNECT attempts a second than allowed: 0x9F
    /// Connection rate exceeded (3.1.1: 3 Server unavailable).
    pub const CONNECT_RATE: Refused = Refused {
        code: reason::CONNECTION_RATE_EXCEEDED,
        limit: Some(LimitKind::ConnectRate),
    };
    /// A new persistent session past `limits.max_sessions`: 0x97 Quota
    /// exceeded (3.1.1: 3 Server unavailable).
    pub const SESSIONS: Refused = Refused {
        code: reason::QUOTA_EXCEEDED,
        limit: Some(LimitKind::Sessions),
    };
    /// The policy context cannot be built (a value past the gateway's limits).
    pub const NO_POLICY_CONTEXT: Refused = Refused {
        code: reason::IMPLEMENTATION_SPECIFIC_ERROR,
        limit: None,
    };
}

/// How a CONNECT of a protocol level the gateway does not speak is
/// answered: in 3.1.1's format, return code 1 [MQTT-3.1.2-2], which MQTT 5
/// allows too and a client of any level can read (Mosquitto answers so).
pub const UNKNOWN_LEVEL: (Protocol, u8) = (Protocol::V4, reason::UNSUPPORTED_PROTOCOL_VERSION);

fn refuse(code: u8, limit: Option<LimitKind>) -> Result<Negotiated, Refused> {
    Err(Refused { code, limit })
}

/// Negotiates `c` under `cfg`; `assign` makes a client identifier for a
/// client that sent none.
pub fn negotiate(
    c: &Connect,
    cfg: &Config,
    assign: impl FnOnce() -> String,
) -> Result<Negotiated, Refused> {
    let limits = &cfg.limits;
    let v5 = c.protocol == Protocol::V5;
    if c.properties.authentication_method.is_some() {
        return refuse(reason::BAD_AUTHENTICATION_METHOD, None);
    }
    if c.client_id.len() > limits.max_client_id_bytes || c.client_id.starts_with('$') {
        return refuse(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            Some(LimitKind::ClientId),
        );
    }
    if c.client_id.is_empty() && !c.clean_start && !v5 {
        // [MQTT-3.1.3-8]
        return refuse(reason::CLIENT_IDENTIFIER_NOT_VALID, None);
    }
    if let Some(w) = &c.will {
        if w.qos as u8 > limits.max_qos {
            return refuse(reason::QOS_NOT_SUPPORTED, Some(LimitKind::Qos));
        }
        // The rules a publish meets, retain on reserved topics included.
        match super::unpublishable(w.topic.as_str(), w.retain, limits.topics()) {
            Some(super::Unpublishable::RetainedReserved) => {
                return refuse(reason::RETAIN_NOT_SUPPORTED, None);
            }
            Some(_) => return refuse(reason::TOPIC_NAME_INVALID, None),
            None if w.payload.len() > limits.max_payload_bytes => {
                return refuse(reason::TOPIC_NAME_INVALID, None);
            }
            None => {}
        }
    }
    let mut props = Properties::default();
    let client_id = if c.client_id.is_empty() {
        let assigned = assign();
        if v5 {
            props.assigned_client_identifier = Some(assigned.clone());
        }
        assigned
    } else {
        c.client_id.clone()
    };
    let max_ka = cfg.mqtt.max_keep_alive_secs;
    let keep_alive_secs = if c.keep_alive == 0 || c.keep_alive > max_ka {
        max_ka
    } else {
        c.keep_alive
    };
    if v5 {
        props.server_keep_alive = Some(keep_alive_secs);
    }
    let expiry = if v5 {
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        let capped = asked.min(cfg.mqtt.max_session_expiry_secs);
        if capped != asked {
            props.session_expiry_interval = Some(capped);
        }
        capped
    } else if c.clean_start {
        0
    } else {
        cfg.mqtt.session_expiry_secs
    };
    if v5 {
        props.receive_maximum = Some(limits.max_inflight);
        props.maximum_packet_size = Some(limits.max_packet_bytes as u32);
        props.topic_alias_maximum = Some(cfg.mqtt.topic_alias_maximum);
        if limits.max_qos < 2 {
            props.maximum_qos = Some(limits.max_qos);
        }
    }
    let client_recv_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    Ok(Negotiated {
        client_id,
        keep_alive_secs,
        expiry,
        connack: props,
        send_window: usize::from(client_recv_max.min(limits.max_inflight)),
        client_max_packet: c
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        out_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        problem_info: c.properties.request_problem_information != Some(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{QoS, Will};

    fn cfg() -> Config {
        Config::embedded(std::path::Path::new(".")).expect("embedded config")
    }

    fn connect(protocol: Protocol, client_id: &str, clean_start: bool, keep_alive: u16) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    fn assigned() -> String {
        "edgegate-assigned".into()
    }

    #[test]
    fn client_identifiers() {
        let cfg = cfg();
        // (statement, protocol, client id, clean start, accepted, assigned)
        let cases = [
            (
                "MQTT-3.1.3-6: an empty id with clean session is assigned one",
                Protocol::V4,
                "",
                true,
                true,
                true,
            ),
            (
                "MQTT-3.1.3-8: an empty id without clean session is refused",
                Protocol::V4,
                "",
                false,
                false,
                false,
            ),
            (
                "MQTT-3.1.3-6 (5.0): an empty id is assigned one and told",
                Protocol::V5,
                "",
                false,
                true,
                true,
            ),
            (
                "AWS IoT: ids starting with $ are reserved",
                Protocol::V4,
                "$aws",
                true,
                false,
                false,
            ),
            (
                "MQTT-3.1.3-5: an ordinary id is kept",
                Protocol::V5,
                "dev-1",
                true,
                true,
                false,
            ),
        ];
        for (statement, protocol, id, clean, ok, is_assigned) in cases {
            let got = negotiate(&connect(protocol, id, clean, 30), &cfg, assigned);
            assert_eq!(got.is_ok(), ok, "{statement}");
            if let Ok(n) = got {
                assert_eq!(
                    n.client_id == "edgegate-assigned",
                    is_assigned,
                    "{statement}"
                );
                // MQTT-3.2.2-16: the assigned id is in the CONNACK (5.0 only).
                assert_eq!(
                    n.connack.assigned_client_identifier.is_some(),
                    is_assigned && protocol == Protocol::V5,
                    "{statement}"
                );
            } else if let Err(r) = got {
                assert_eq!(r.code, reason::CLIENT_IDENTIFIER_NOT_VALID, "{statement}");
            }
        }
        let long = "c".repeat(cfg.limits.max_client_id_bytes + 1);
        assert_eq!(
            negotiate(&connect(Protocol::V4, &long, true, 30), &cfg, assigned),
            Err(Refused {
                code: reason::CLIENT_IDENTIFIER_NOT_VALID,
                limit: Some(LimitKind::ClientId)
            })
        );
    }

    #[test]
    fn keep_alive_and_server_keep_alive() {
        let cfg = cfg();
        let max = cfg.mqtt.max_keep_alive_secs;
        // (statement, protocol, asked, granted, Server Keep Alive sent)
        let cases = [
            (
                "§3.1.2.10: 0 turns keep alive off; the gateway uses its maximum, as AWS IoT does",
                Protocol::V4,
                0,
                max,
                None,
            ),
            (
                "a keep alive within the maximum is kept",
                Protocol::V4,
                60,
                60,
                None,
            ),
            (
                "§3.2.2.3.14: the Server Keep Alive is sent (5.0)",
                Protocol::V5,
                60,
                60,
                Some(60),
            ),
            (
                "§3.2.2.3.14: a longer one is capped, and 5.0 is told",
                Protocol::V5,
                max + 1,
                max,
                Some(max),
            ),
        ];
        for (statement, protocol, asked, granted, server) in cases {
            let n =
                negotiate(&connect(protocol, "k", true, asked), &cfg, assigned).expect(statement);
            assert_eq!(n.keep_alive_secs, granted, "{statement}");
            assert_eq!(n.connack.server_keep_alive, server, "{statement}");
        }
    }

    #[test]
    fn session_expiry() {
        let cfg = cfg();
        let persistent = connect(Protocol::V4, "p", false, 30);
        assert_eq!(
            negotiate(&persistent, &cfg, assigned).expect("ok").expiry,
            cfg.mqtt.session_expiry_secs,
            "3.1.1 persistent sessions last session_expiry_secs (AWS IoT: 1 hour)"
        );
        let clean = connect(Protocol::V4, "c", true, 30);
        assert_eq!(negotiate(&clean, &cfg, assigned).expect("ok").expiry, 0);
        let mut asks = connect(Protocol::V5, "e", false, 30);
        asks.properties.session_expiry_interval = Some(u32::MAX);
        let n = negotiate(&asks, &cfg, assigned).expect("ok");
        // 5.0 §3.2.2.3.2: a server that uses another expiry says so.
        assert_eq!(n.expiry, cfg.mqtt.max_session_expiry_secs);
        assert_eq!(
            n.connack.session_expiry_interval,
            Some(cfg.mqtt.max_session_expiry_secs)
        );
        asks.properties.session_expiry_interval = Some(60);
        let n = negotiate(&asks, &cfg, assigned).expect("ok");
        assert_eq!((n.expiry, n.connack.session_expiry_interval), (60, None));
    }

    #[test]
    fn windows_and_what_the_connack_announces() {
        let cfg = cfg();
        let mut c = connect(Protocol::V5, "w", true, 30);
        c.properties.receive_maximum = Some(5);
        c.properties.maximum_packet_size = Some(1000);
        c.properties.topic_alias_maximum = Some(3);
        c.properties.request_problem_information = Some(0);
        let n = negotiate(&c, &cfg, assigned).expect("ok");
        // MQTT-3.3.4-9: no more unacknowledged publishes than the client's Receive Maximum.
        assert_eq!(n.send_window, 5);
        // MQTT-3.1.2-24: nothing larger than the client's Maximum Packet Size.
        assert_eq!(n.client_max_packet, 1000);
        assert_eq!(n.out_alias_max, 3);
        // MQTT-3.1.2-29: no reason strings when the client asks for none.
        assert!(!n.problem_info);
        assert_eq!(n.connack.receive_maximum, Some(cfg.limits.max_inflight));
        assert_eq!(
            n.connack.maximum_packet_size,
            Some(cfg.limits.max_packet_bytes as u32)
        );
        assert_eq!(
            n.connack.topic_alias_maximum,
            Some(cfg.mqtt.topic_alias_maximum)
        );
        // A client that says nothing gets the gateway's own window.
        let n = negotiate(&connect(Protocol::V5, "x", true, 30), &cfg, assigned).expect("ok");
        assert_eq!(n.send_window, usize::from(cfg.limits.max_inflight));
        assert!(n.problem_info);
        // 3.1.1 has no CONNACK properties.
        let n = negotiate(&connect(Protocol::V4, "x", true, 30), &cfg, assigned).expect("ok");
        assert_eq!(n.connack, Properties::default());
    }

    #[test]
    fn wills_and_authentication() {
        let mut cfg = cfg();
        cfg.limits.max_qos = 1;
        let will = |topic: &str, qos| Will {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos,
            retain: false,
            properties: Default::default(),
            delay_interval: 0,
        };
        let mut c = connect(Protocol::V5, "w", true, 30);
        c.will = Some(will("status/w", QoS::ExactlyOnce));
        assert_eq!(
            negotiate(&c, &cfg, assigned),
            Err(Refused {
                code: reason::QOS_NOT_SUPPORTED,
                limit: Some(LimitKind::Qos)
            }),
            "MQTT-3.2.2-12: a will QoS above the maximum is refused"
        );
        c.will = Some(will("$aws/events/presence/connected/w", QoS::AtLeastOnce));
        assert_eq!(
            negotiate(&c, &cfg, assigned).map_err(|r| r.code),
            Err(reason::TOPIC_NAME_INVALID),
            "a will may not be published where only the gateway publishes"
        );
        let mut retained = will("$aws/rules/r/w", QoS::AtLeastOnce);
        retained.retain = true;
        c.will = Some(retained);
        assert_eq!(
            negotiate(&c, &cfg, assigned).map_err(|r| r.code),
            Err(reason::RETAIN_NOT_SUPPORTED),
            "§3.2.2.2: a retained will on a reserved topic is refused, as a retained publish is"
        );
        c.will = Some(will("status/w", QoS::AtLeastOnce));
        let n = negotiate(&c, &cfg, assigned).expect("ok");
        assert_eq!(
            n.connack.maximum_qos,
            Some(1),
            "MQTT-3.2.2-9: Maximum QoS announced"
        );
        c.properties.authentication_method = Some("SCRAM".into());
        assert_eq!(
            negotiate(&c, &cfg, assigned).map_err(|r| r.code),
            Err(reason::BAD_AUTHENTICATION_METHOD),
            "enhanced authentication is not offered"
        );
    }
}
