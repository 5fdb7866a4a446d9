use super::reason;
use crate::topic::TopicError;

/// Why bytes from a peer are not a valid MQTT packet, or break a protocol rule.
///
/// Always the peer's fault, `Copy`, and never allocates. The only mapping to
/// the wire is [`ProtocolError::reason_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The variable-length remaining length runs past four bytes [MQTT-1.5.5-1].
    #[error("malformed remaining length")]
    MalformedLength,
    /// The packet is bigger than the maximum packet size the receiver set.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Size of the whole packet.
        size: usize,
        /// The limit it broke.
        max: usize,
    },
    /// Packet type 0, or 15 on 3.1.1.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved bits of the fixed header are not as the spec fixes them [MQTT-2.2.2-2].
    #[error("reserved flags in the fixed header are wrong [MQTT-2.2.2-2]")]
    BadFixedHeaderFlags,
    /// The packet is structurally invalid; the text says where.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A string is not well-formed UTF-8 or contains U+0000 [MQTT-1.5.3-1, MQTT-1.5.3-2].
    #[error("invalid UTF-8 string [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// The packet is well-formed but breaks a protocol rule; the text cites it.
    #[error("protocol error: {0}")]
    Violation(&'static str),
    /// CONNECT names a protocol level other than 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// CONNECT names a protocol other than "MQTT" [MQTT-3.1.2-1].
    #[error("unsupported protocol name")]
    InvalidProtocolName,
    /// A property other than user property or subscription identifier appears twice.
    #[error("property {0:#04x} appears twice")]
    DuplicateProperty(u8),
    /// A property this packet may not carry, or an unknown one.
    #[error("property {0:#04x} is not allowed here")]
    UnexpectedProperty(u8),
    /// A property has a value the spec forbids (e.g. Receive Maximum 0).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A topic name or filter is invalid.
    #[error("invalid topic: {0}")]
    Topic(TopicError),
}

impl ProtocolError {
    /// The MQTT 5 reason code to send in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            Self::UnsupportedProtocol(_) | Self::InvalidProtocolName => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::Violation(_)
            | Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::UnexpectedProperty(_) => reason::PROTOCOL_ERROR,
            Self::Topic(_) => reason::TOPIC_NAME_INVALID,
            Self::MalformedLength
            | Self::InvalidPacketType(_)
            | Self::BadFixedHeaderFlags
            | Self::Malformed(_)
            | Self::InvalidUtf8 => reason::MALFORMED_PACKET,
        }
    }

    /// Short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PacketTooLarge { .. } => "packet_too_large",
            Self::UnsupportedProtocol(_) | Self::InvalidProtocolName => "unsupported_protocol",
            Self::Violation(_) => "protocol_error",
            Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::UnexpectedProperty(_) => "bad_property",
            Self::Topic(_) => "invalid_topic",
            Self::MalformedLength
            | Self::InvalidPacketType(_)
            | Self::BadFixedHeaderFlags
            | Self::Malformed(_)
            | Self::InvalidUtf8 => "malformed",
        }
    }
}

impl From<TopicError> for ProtocolError {
    fn from(e: TopicError) -> Self {
        Self::Topic(e)
    }
}
