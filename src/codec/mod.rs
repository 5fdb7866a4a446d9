//! MQTT 3.1.1 and 5.0 framing: one packet model for both versions.
//!
//! Pure: bytes in, packets out, and back. The model is the MQTT 5 superset;
//! version 3.1.1 simply never carries properties or reason codes, and the
//! encoder leaves out what a v3.1.1 peer cannot read.
//!
//! Decoding is strict, because a broker that accepts malformed input passes
//! it on to every subscriber: reserved flag bits, UTF-8 rules, duplicate
//! properties, properties in the wrong packet and zero packet identifiers
//! are all refused with a [`ProtocolError`]. "Need more bytes" is `Ok(None)`,
//! never an error. Payloads and topics are slices of the read buffer
//! ([`Bytes`]), so decoding a PUBLISH copies nothing.
//!
//! Written here rather than taken from `mqttbytes`: that crate is no longer
//! maintained, accepts reserved bits and duplicate properties, and allocates
//! topic strings per publish.

mod decode;
mod encode;
mod error;

pub use decode::decode;
pub use encode::{PublishView, encode, encode_publish, publish_len};
pub use error::ProtocolError;

use bytes::Bytes;
use std::fmt;

/// The protocol level a connection negotiated in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte as sent in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V4 => 4,
            Self::V5 => 5,
        }
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged with PUBACK, may be duplicated.
    AtLeastOnce = 1,
    /// Four-way handshake, delivered exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is malformed [MQTT-3.3.1-4].
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string that shares the read buffer it was decoded from.
///
/// Checked once, when made (a `bytestring::ByteString` inside): reading it
/// costs nothing, however often a topic is looked at on its way through.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ByteStr(bytestring::ByteString);

impl ByteStr {
    /// Wraps bytes after checking that they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        bytestring::ByteString::try_from(bytes).map(Self)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw bytes, for encoding.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MQTT 5 properties of every packet but PUBLISH, one field per property.
///
/// Which properties a packet may carry is checked by the decoder; the encoder
/// writes whatever is set, so callers set only what the packet allows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// 0x11
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<String>,
    /// 0x13
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<String>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17
    pub request_problem_information: Option<u8>,
    /// 0x18
    pub will_delay_interval: Option<u32>,
    /// 0x19
    pub request_response_information: Option<u8>,
    /// 0x1A
    pub response_information: Option<String>,
    /// 0x1C
    pub server_reference: Option<String>,
    /// 0x1F
    pub reason_string: Option<String>,
    /// 0x21
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    /// 0x24
    pub maximum_qos: Option<u8>,
    /// 0x25
    pub retain_available: Option<u8>,
    /// 0x26
    pub user_properties: Vec<(String, String)>,
    /// 0x27
    pub maximum_packet_size: Option<u32>,
    /// 0x28
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A
    pub shared_subscription_available: Option<u8>,
    /// 0x0B, only in SUBSCRIBE (at most one).
    pub subscription_identifier: Option<u32>,
}

/// MQTT 5 properties of a PUBLISH (and of a will message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// 0x01: 1 means the payload is UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds the message may live.
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<String>,
    /// 0x08
    pub response_topic: Option<String>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x23: only on the connection it was sent on, never forwarded.
    pub topic_alias: Option<u16>,
    /// 0x0B: set by the server when delivering; a client may not send it [MQTT-3.3.4-6].
    pub subscription_identifiers: Vec<u32>,
    /// 0x26
    pub user_properties: Vec<(String, String)>,
}

/// CONNECT.
#[derive(Clone, PartialEq)]
pub struct Connect {
    /// Negotiated protocol level.
    pub protocol: Protocol,
    /// Clean Session (3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// The will message.
    pub will: Option<Will>,
    /// User name: AWS SDKs put metrics here, so it is never a credential.
    pub username: Option<String>,
    /// Password: never logged.
    pub password: Option<Bytes>,
    /// MQTT 5 CONNECT properties.
    pub properties: Properties,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("properties", &self.properties)
            .finish()
    }
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: ByteStr,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (MQTT 5) but the delay.
    pub properties: PublishProperties,
    /// Will Delay Interval (MQTT 5, seconds).
    pub delay_interval: u32,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnAck {
    /// Whether the server resumed a session.
    pub session_present: bool,
    /// The MQTT 5 reason code; mapped to a 3.1.1 return code on encoding,
    /// and from one on decoding.
    pub code: u8,
    /// MQTT 5 CONNACK properties.
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty when a v5 client sends only a topic alias.
    pub topic: ByteStr,
    /// Packet identifier (0 for QoS 0).
    pub pkid: u16,
    /// MQTT 5 PUBLISH properties.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// Packet identifier.
    pub pkid: u16,
    /// MQTT 5 reason code (0 on 3.1.1).
    pub code: u8,
    /// MQTT 5 properties (reason string, user properties).
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement.
    pub fn ok(pkid: u16) -> Self {
        Self::with_code(pkid, 0)
    }

    /// An acknowledgement with a reason code and no properties.
    pub fn with_code(pkid: u16, code: u8) -> Self {
        Self {
            pkid,
            code,
            properties: Properties::default(),
        }
    }
}

/// Options of one filter in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS the client wants.
    pub qos: QoS,
    /// MQTT 5: do not deliver the client's own publishes back.
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag on live deliveries.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained on subscribe, 1 only if new, 2 never.
    pub retain_handling: u8,
}

impl SubOptions {
    /// Plain options with a QoS, as 3.1.1 knows them.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pkid: u16,
    /// Filters as sent, with their options.
    pub filters: Vec<(String, SubOptions)>,
    /// MQTT 5 properties (subscription identifier, user properties).
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    /// Packet identifier.
    pub pkid: u16,
    /// One reason code per filter (granted QoS or failure 0x80 and up).
    pub codes: Vec<u8>,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pkid: u16,
    /// Filters as sent.
    pub filters: Vec<String>,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub pkid: u16,
    /// MQTT 5 reason code per filter; empty on 3.1.1.
    pub codes: Vec<u8>,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// DISCONNECT (either direction) or AUTH.
#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    /// MQTT 5 reason code.
    pub code: u8,
    /// MQTT 5 properties.
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and a reason string.
    pub fn with_reason(code: u8, reason: Option<String>) -> Self {
        Self {
            code,
            properties: Properties {
                reason_string: reason,
                ..Properties::default()
            },
        }
    }
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT
    Connect(Box<Connect>),
    /// CONNACK
    ConnAck(ConnAck),
    /// PUBLISH
    Publish(Publish),
    /// PUBACK
    PubAck(Ack),
    /// PUBREC
    PubRec(Ack),
    /// PUBREL
    PubRel(Ack),
    /// PUBCOMP
    PubComp(Ack),
    /// SUBSCRIBE
    Subscribe(Subscribe),
    /// SUBACK
    SubAck(SubAck),
    /// UNSUBSCRIBE
    Unsubscribe(Unsubscribe),
    /// UNSUBACK
    UnsubAck(UnsubAck),
    /// PINGREQ
    PingReq,
    /// PINGRESP
    PingResp,
    /// DISCONNECT
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only)
    Auth(Disconnect),
}

impl Packet {
    /// The MQTT control packet type number (1 for CONNECT ... 15 for AUTH).
    pub fn type_number(&self) -> u8 {
        match self {
            Self::Connect(_) => 1,
            Self::ConnAck(_) => 2,
            Self::Publish(_) => 3,
            Self::PubAck(_) => 4,
            Self::PubRec(_) => 5,
            Self::PubRel(_) => 6,
            Self::PubComp(_) => 7,
            Self::Subscribe(_) => 8,
            Self::SubAck(_) => 9,
            Self::Unsubscribe(_) => 10,
            Self::UnsubAck(_) => 11,
            Self::PingReq => 12,
            Self::PingResp => 13,
            Self::Disconnect(_) => 14,
            Self::Auth(_) => 15,
        }
    }
}

/// MQTT 5 reason codes the gateway sends, by name.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS1: u8 = 0x01;
    pub const GRANTED_QOS2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

    /// The MQTT 3.1.1 CONNACK return code for an MQTT 5 CONNACK reason code.
    pub fn connack_v4(code: u8) -> u8 {
        match code {
            SUCCESS => 0,
            UNSUPPORTED_PROTOCOL_VERSION => 1,
            CLIENT_IDENTIFIER_NOT_VALID => 2,
            SERVER_UNAVAILABLE
            | SERVER_BUSY
            | SERVER_SHUTTING_DOWN
            | QUOTA_EXCEEDED
            | CONNECTION_RATE_EXCEEDED => 3,
            BAD_USER_NAME_OR_PASSWORD => 4,
            _ => 5,
        }
    }

    /// The MQTT 5 CONNACK reason code a 3.1.1 return code stands for;
    /// `None` for the reserved codes 6-255 [MQTT-3.2.3].
    pub fn connack_v5(code: u8) -> Option<u8> {
        Some(match code {
            0 => SUCCESS,
            1 => UNSUPPORTED_PROTOCOL_VERSION,
            2 => CLIENT_IDENTIFIER_NOT_VALID,
            3 => SERVER_UNAVAILABLE,
            4 => BAD_USER_NAME_OR_PASSWORD,
            5 => NOT_AUTHORIZED,
            _ => return None,
        })
    }

    /// The PUBACK and PUBREC reason for a refusal: the codes those packets
    /// have pass, any other (Retain not supported is a DISCONNECT and
    /// CONNACK code) becomes Implementation specific error (MQTT 5
    /// §3.4.2.1, §3.5.2.1).
    pub fn puback(code: u8) -> u8 {
        match code {
            SUCCESS
            | NO_MATCHING_SUBSCRIBERS
            | UNSPECIFIED_ERROR
            | NOT_AUTHORIZED
            | TOPIC_NAME_INVALID
            | PACKET_IDENTIFIER_IN_USE
            | QUOTA_EXCEEDED
            | PAYLOAD_FORMAT_INVALID
            | IMPLEMENTATION_SPECIFIC_ERROR => code,
            _ => IMPLEMENTATION_SPECIFIC_ERROR,
        }
    }
}

#[cfg(test)]
mod tests;
