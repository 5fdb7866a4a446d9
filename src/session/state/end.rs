//! How a connection ends, and what that means on the wire. This is the one
//! place an ending becomes an MQTT 5 reason code; MQTT 3.1.1 has a single
//! rule: it has no server DISCONNECT, so the gateway closes the socket.

use crate::codec::{Disconnect, Packet, Protocol, ProtocolError, reason};

/// Why a connection ended; decides the DISCONNECT sent, the will and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent DISCONNECT; `will` is true for reason 0x04.
    Client {
        /// Disconnect with Will Message.
        will: bool,
    },
    /// The socket closed or failed.
    Io,
    /// The client broke the protocol: the reason code for DISCONNECT, and why.
    Protocol(u8, &'static str),
    /// No packet within 1.5 times the keep alive.
    KeepAlive,
    /// Another connection took the client id.
    TakenOver,
    /// The gateway is shutting down.
    Shutdown,
    /// The client reads too slowly to keep up with its messages.
    SlowConsumer,
    /// The store could not make a publish durable (MQTT 3.1.1, which has no
    /// failure acknowledgement).
    Store,
    /// A policy refused the connection or one of its publishes (MQTT 3.1.1).
    NotAuthorized(&'static str),
    /// The certificate was revoked or deactivated: its will is not published.
    Revoked,
    /// The custom authorizer's `disconnectAfterInSeconds` passed.
    AuthExpired,
    /// A connection over a SigV4-signed WebSocket URL reached AWS's 24 hours.
    WebSocketExpired,
}

impl End {
    /// The MQTT 5 DISCONNECT reason code, or none when the client left or
    /// the socket is gone and nothing can be said.
    pub fn reason_code(&self) -> Option<u8> {
        match self {
            End::Client { .. } | End::Io => None,
            End::Protocol(code, _) => Some(*code),
            End::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::SlowConsumer => Some(reason::QUOTA_EXCEEDED),
            End::Store => Some(reason::UNSPECIFIED_ERROR),
            End::NotAuthorized(_) | End::Revoked => Some(reason::NOT_AUTHORIZED),
            End::AuthExpired | End::WebSocketExpired => Some(reason::MAXIMUM_CONNECT_TIME),
        }
    }

    /// The DISCONNECT the gateway sends before it closes: MQTT 5 only (in
    /// 3.1.1, §3.14, only a client sends DISCONNECT), and only with a
    /// reason to give.
    pub fn disconnect(
        &self,
        protocol: Protocol,
        reason_string: Option<String>,
    ) -> Option<Disconnect> {
        let code = self.reason_code()?;
        (protocol == Protocol::V5).then(|| Disconnect::with_reason(code, reason_string))
    }

    /// Whether the will is published: on every ending but a normal
    /// DISCONNECT [MQTT-3.1.2-10] and a certificate that lost its standing.
    pub fn publishes_will(&self) -> bool {
        match self {
            End::Client { will } => *will,
            End::Revoked => false,
            _ => true,
        }
    }

    /// The kind of refusal this ending is, for the operator's log; `None`
    /// when the gateway refused nothing (the client left, the socket went,
    /// the gateway stops, the session moved on, or its own store failed).
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            End::Protocol(..) => Some("protocol_error"),
            End::NotAuthorized(_) => Some("not_authorized"),
            End::Revoked => Some("certificate_inactive"),
            End::SlowConsumer => Some("slow_consumer"),
            End::KeepAlive => Some("keep_alive"),
            End::AuthExpired => Some("custom_auth_expired"),
            End::WebSocketExpired => Some("websocket_expired"),
            End::Client { .. } | End::Io | End::TakenOver | End::Shutdown | End::Store => None,
        }
    }

    /// The `disconnectReason` of the `disconnected` lifecycle event, as AWS
    /// IoT names it (spec aws-iot-auth.md §4.1).
    pub fn disconnect_reason(&self) -> &'static str {
        match self {
            End::Client { .. } => "CLIENT_INITIATED_DISCONNECT",
            End::Io => "CONNECTION_LOST",
            End::Protocol(code, _) if is_throttling(*code) => "THROTTLED",
            End::Protocol(..) => "CLIENT_ERROR",
            End::KeepAlive => "MQTT_KEEP_ALIVE_TIMEOUT",
            End::TakenOver => "DUPLICATE_CLIENTID",
            End::Shutdown => "SERVER_INITIATED_DISCONNECT",
            End::SlowConsumer => "THROTTLED",
            End::Store => "SERVER_ERROR",
            End::NotAuthorized(_) | End::Revoked => "AUTH_ERROR",
            End::AuthExpired => "CUSTOMAUTH_TTL_EXPIRATION",
            End::WebSocketExpired => "WEBSOCKET_TTL_EXPIRATION",
        }
    }

    /// The client broke the protocol (counted as a protocol error).
    pub fn is_protocol_error(&self) -> bool {
        matches!(self, End::Protocol(..))
    }

    /// Why, in words: for the log and the MQTT 5 reason string.
    pub fn why(&self) -> &'static str {
        match self {
            End::Client { .. } => "client disconnected",
            End::Io => "connection lost",
            End::Protocol(_, why) | End::NotAuthorized(why) => why,
            End::KeepAlive => "keep alive timeout",
            End::TakenOver => "session taken over",
            End::Shutdown => "server shutting down",
            End::SlowConsumer => "client too slow",
            End::Store => "store failure",
            End::Revoked => "certificate no longer active",
            End::AuthExpired => "the custom authorizer's disconnectAfterInSeconds passed",
            End::WebSocketExpired => "a signed WebSocket connection lasts 24 hours",
        }
    }

    /// A packet a client may not send once connected: a second CONNECT
    /// [MQTT-3.1.0-2], AUTH (no authentication method is offered, §4.12),
    /// or one only a server sends.
    pub fn unexpected(p: &Packet) -> End {
        let why = match p {
            Packet::Connect(_) => "second CONNECT [MQTT-3.1.0-2]",
            Packet::Auth(_) => "AUTH without an authentication method",
            _ => "packet a client may not send",
        };
        End::Protocol(reason::PROTOCOL_ERROR, why)
    }

    /// The client's DISCONNECT: how the connection ends and, when the client
    /// changed it, the session expiry from now on (at most `max`). A session
    /// that was to end with the connection cannot be made to outlive it
    /// [MQTT-3.14.2-2].
    pub fn client_disconnect(
        d: &Disconnect,
        expiry: u32,
        max: u32,
    ) -> Result<(End, Option<u32>), End> {
        let changed = match d.properties.session_expiry_interval {
            Some(e) if expiry == 0 && e > 0 => {
                return Err(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "session expiry changed from 0 [MQTT-3.14.2-2]",
                ));
            }
            Some(e) => Some(e.min(max)),
            None => None,
        };
        let will = d.code == reason::DISCONNECT_WITH_WILL;
        Ok((End::Client { will }, changed))
    }
}

/// Codes that say the client went over a rate or quota.
fn is_throttling(code: u8) -> bool {
    matches!(
        code,
        reason::QUOTA_EXCEEDED | reason::CONNECTION_RATE_EXCEEDED
    )
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> Self {
        End::Protocol(e.reason_code(), e.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Properties;

    #[test]
    fn every_ending_on_the_wire() {
        // (statement, end, MQTT 5 reason code, will published)
        let cases = [
            (
                "MQTT-3.14.4-3: a normal DISCONNECT discards the will",
                End::Client { will: false },
                None,
                false,
            ),
            (
                "§3.14.2.1: 0x04 Disconnect with Will Message publishes it",
                End::Client { will: true },
                None,
                true,
            ),
            (
                "MQTT-3.1.2-8: a lost connection publishes the will",
                End::Io,
                None,
                true,
            ),
            (
                "§4.13.1: a protocol error closes with its reason",
                End::Protocol(reason::PROTOCOL_ERROR, "x"),
                Some(0x82),
                true,
            ),
            (
                "MQTT-3.1.2-22: keep alive timeout is 0x8D",
                End::KeepAlive,
                Some(0x8D),
                true,
            ),
            (
                "MQTT-3.1.4-3: takeover is 0x8E Session taken over",
                End::TakenOver,
                Some(0x8E),
                true,
            ),
            (
                "§3.14.2.1: shutdown is 0x8B Server shutting down",
                End::Shutdown,
                Some(0x8B),
                true,
            ),
            (
                "a consumer too slow for its quota is 0x97",
                End::SlowConsumer,
                Some(0x97),
                true,
            ),
            (
                "a store failure is 0x80 Unspecified error",
                End::Store,
                Some(0x80),
                true,
            ),
            (
                "AWS IoT: a denied publish closes 3.1.1 with Not authorized",
                End::NotAuthorized("x"),
                Some(0x87),
                true,
            ),
            (
                "a revoked certificate's will is not published",
                End::Revoked,
                Some(0x87),
                false,
            ),
        ];
        for (statement, end, code, will) in cases {
            assert_eq!(end.reason_code(), code, "{statement}");
            assert_eq!(end.publishes_will(), will, "{statement}");
            assert_eq!(
                end.disconnect(Protocol::V5, None).map(|d| d.code),
                code,
                "{statement}"
            );
            // 3.1.1 §3.14: only a client sends DISCONNECT.
            assert_eq!(end.disconnect(Protocol::V4, None), None, "{statement}");
            assert!(!end.why().is_empty(), "{statement}");
            // Every ending with a reason but shutdown, takeover and the
            // store's own failure is a refusal the operator sees.
            let gateway_side = matches!(end, End::Shutdown | End::TakenOver | End::Store);
            assert_eq!(
                end.refusal().is_some(),
                code.is_some() && !gateway_side,
                "{statement}"
            );
        }
    }

    #[test]
    fn every_ending_has_the_disconnect_reason_aws_names() {
        let cases = [
            (End::Client { will: false }, "CLIENT_INITIATED_DISCONNECT"),
            (End::Client { will: true }, "CLIENT_INITIATED_DISCONNECT"),
            (End::Io, "CONNECTION_LOST"),
            (End::Protocol(reason::PROTOCOL_ERROR, "x"), "CLIENT_ERROR"),
            (End::Protocol(reason::PACKET_TOO_LARGE, "x"), "CLIENT_ERROR"),
            (End::Protocol(reason::QUOTA_EXCEEDED, "x"), "THROTTLED"),
            (End::KeepAlive, "MQTT_KEEP_ALIVE_TIMEOUT"),
            (End::TakenOver, "DUPLICATE_CLIENTID"),
            (End::Shutdown, "SERVER_INITIATED_DISCONNECT"),
            (End::SlowConsumer, "THROTTLED"),
            (End::Store, "SERVER_ERROR"),
            (End::NotAuthorized("x"), "AUTH_ERROR"),
            (End::Revoked, "AUTH_ERROR"),
            (End::AuthExpired, "CUSTOMAUTH_TTL_EXPIRATION"),
            (End::WebSocketExpired, "WEBSOCKET_TTL_EXPIRATION"),
        ];
        for (end, aws) in cases {
            assert_eq!(end.disconnect_reason(), aws, "{end:?}");
        }
    }

    #[test]
    fn packets_a_client_may_not_send() {
        let connect = crate::codec::Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let cases = [
            (
                "MQTT-3.1.0-2: a second CONNECT is a protocol error",
                Packet::Connect(Box::new(connect)),
                "second CONNECT [MQTT-3.1.0-2]",
            ),
            (
                "§4.12: AUTH without an authentication method",
                Packet::Auth(Disconnect::with_reason(0x18, None)),
                "AUTH without an authentication method",
            ),
            (
                "a server's packet from a client",
                Packet::PingResp,
                "packet a client may not send",
            ),
        ];
        for (statement, p, why) in cases {
            let end = End::unexpected(&p);
            assert_eq!(
                end,
                End::Protocol(reason::PROTOCOL_ERROR, why),
                "{statement}"
            );
        }
    }

    #[test]
    fn decode_errors_keep_their_reason() {
        let end = End::from(ProtocolError::PacketTooLarge { size: 10, max: 5 });
        assert_eq!(end.reason_code(), Some(reason::PACKET_TOO_LARGE));
        assert!(end.is_protocol_error());
    }

    #[test]
    fn client_disconnect_and_session_expiry() {
        let disconnect = |code, expiry| Disconnect {
            code,
            properties: Properties {
                session_expiry_interval: expiry,
                ..Properties::default()
            },
        };
        assert_eq!(
            End::client_disconnect(&disconnect(0, None), 60, 3600),
            Ok((End::Client { will: false }, None))
        );
        assert_eq!(
            End::client_disconnect(&disconnect(reason::DISCONNECT_WITH_WILL, Some(0)), 60, 3600),
            Ok((End::Client { will: true }, Some(0))),
            "§3.14.2.2.2: the client may end its session now"
        );
        assert_eq!(
            End::client_disconnect(&disconnect(0, Some(u32::MAX)), 60, 3600),
            Ok((End::Client { will: false }, Some(3600))),
            "the new expiry is capped like CONNECT's"
        );
        assert_eq!(
            End::client_disconnect(&disconnect(0, Some(10)), 0, 3600).map_err(|e| e.reason_code()),
            Err(Some(reason::PROTOCOL_ERROR)),
            "MQTT-3.14.2-2"
        );
    }
}
