use super::*;
use crate::topic;
use bytes::{Buf, BytesMut};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` while the packet is incomplete (having reserved room
/// for the rest of it). A CONNECT is decoded whatever `protocol` says, since
/// it is what decides the protocol; every other packet is read as `protocol`.
/// `max_size` bounds the whole packet, header included, and is checked as
/// soon as the header is read, so an oversize packet is refused before it is
/// buffered.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_size: usize,
) -> Result<Option<Packet>, ProtocolError> {
    let Some((header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_size {
        return Err(ProtocolError::PacketTooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let byte0 = buf[0];
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    packet(byte0, Reader(frame), protocol).map(Some)
}

/// Parses the fixed header: `(header length, remaining length)`, or `None` if incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(ProtocolError::MalformedLength)
}

fn packet(byte0: u8, mut r: Reader, protocol: Protocol) -> Result<Packet, ProtocolError> {
    let kind = byte0 >> 4;
    let flags = byte0 & 0x0f;
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(ProtocolError::BadFixedHeaderFlags)
        }
    };
    let v5 = protocol == Protocol::V5;
    let packet = match kind {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(connect(&mut r)?))
        }
        2 => {
            expect_flags(0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(ProtocolError::Malformed("CONNACK flags"));
            }
            let code = r.u8()?;
            let (code, properties) = if v5 {
                (code, r.properties(Ctx::ConnAck)?.0)
            } else {
                let code = reason::connack_v5(code).ok_or(ProtocolError::Violation(
                    "CONNACK return code reserved in 3.1.1 [MQTT-3.2.2.3]",
                ))?;
                (code, Properties::default())
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => Packet::Publish(publish(flags, &mut r, v5)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(ack(&mut r, v5)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(ack(&mut r, v5)?)
        }
        6 => {
            expect_flags(2)?;
            Packet::PubRel(ack(&mut r, v5)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(ack(&mut r, v5)?)
        }
        8 => {
            expect_flags(2)?;
            Packet::Subscribe(subscribe(&mut r, v5)?)
        }
        9 => {
            expect_flags(0)?;
            let pkid = r.u16()?;
            let properties = if v5 {
                r.properties(Ctx::SubAck)?.0
            } else {
                Properties::default()
            };
            let codes = r.rest().to_vec();
            if !v5 && codes.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return Err(ProtocolError::Violation(
                    "SUBACK return code reserved in 3.1.1 [MQTT-3.9.3-2]",
                ));
            }
            Packet::SubAck(SubAck {
                pkid,
                codes,
                properties,
            })
        }
        10 => {
            expect_flags(2)?;
            let pkid = r.pkid()?;
            let properties = if v5 {
                r.properties(Ctx::Unsubscribe)?.0
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(ProtocolError::Violation(
                    "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
                ));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                properties,
            })
        }
        11 => {
            expect_flags(0)?;
            let pkid = r.u16()?;
            let (properties, codes) = if v5 {
                (r.properties(Ctx::UnsubAck)?.0, r.rest().to_vec())
            } else {
                (Properties::default(), Vec::new())
            };
            Packet::UnsubAck(UnsubAck {
                pkid,
                codes,
                properties,
            })
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect(disconnect(&mut r, v5, Ctx::Disconnect)?)
        }
        15 if v5 => {
            expect_flags(0)?;
            Packet::Auth(disconnect(&mut r, v5, Ctx::Auth)?)
        }
        other => return Err(ProtocolError::InvalidPacketType(other)),
    };
    if !r.is_empty() {
        return Err(ProtocolError::Malformed("trailing bytes after packet"));
    }
    Ok(packet)
}

fn connect(r: &mut Reader) -> Result<Connect, ProtocolError> {
    let name = r.bytes()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V4,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT" | b"MQIsdp", level) => return Err(ProtocolError::UnsupportedProtocol(level)),
        _ => return Err(ProtocolError::InvalidProtocolName),
    };
    let v5 = protocol == Protocol::V5;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(ProtocolError::Malformed(
            "CONNECT reserved flag set [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos =
        QoS::from_u8((flags >> 3) & 0x03).ok_or(ProtocolError::Malformed("will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(ProtocolError::Malformed(
            "will QoS or retain without will flag [MQTT-3.1.2-11]",
        ));
    }
    if !v5 && password_flag && !username_flag {
        return Err(ProtocolError::Malformed(
            "password without user name [MQTT-3.1.2-22]",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        r.properties(Ctx::Connect)?.0
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let (will_props, publish_props) = if v5 {
            r.properties(Ctx::Will)?
        } else {
            Default::default()
        };
        let topic = r.bytestr()?;
        topic::validate_name(topic.as_str())?;
        let payload = r.bytes()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: publish_props,
            delay_interval: will_props.will_delay_interval.unwrap_or(0),
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.bytes()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, ProtocolError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or(ProtocolError::Malformed("PUBLISH QoS 3 [MQTT-3.3.1-4]"))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(ProtocolError::Malformed(
            "DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]",
        ));
    }
    let topic = r.bytestr()?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { r.pkid()? };
    let properties = if v5 {
        r.properties(Ctx::Publish)?.1
    } else {
        PublishProperties::default()
    };
    if !topic.is_empty() || properties.topic_alias.is_none() {
        topic::validate_name(topic.as_str())?;
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        properties,
        payload: r.rest(),
    })
}

fn ack(r: &mut Reader, v5: bool) -> Result<Ack, ProtocolError> {
    let pkid = r.pkid()?;
    let code = if v5 && !r.is_empty() { r.u8()? } else { 0 };
    let properties = if v5 && !r.is_empty() {
        r.properties(Ctx::Ack)?.0
    } else {
        Properties::default()
    };
    Ok(Ack {
        pkid,
        code,
        properties,
    })
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, ProtocolError> {
    let pkid = r.pkid()?;
    let properties = if v5 {
        r.properties(Ctx::Subscribe)?.0
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 {
            return Err(ProtocolError::Malformed(
                "reserved subscription option bits set [MQTT-3.8.3-5]",
            ));
        }
        let qos = QoS::from_u8(options & 0x03).ok_or(ProtocolError::Malformed(
            "subscription QoS 3 [MQTT-3-8.3-4]",
        ))?;
        let retain_handling = (options >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(ProtocolError::Malformed("retain handling 3"));
        }
        filters.push((
            filter,
            SubOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(ProtocolError::Violation(
            "SUBSCRIBE without a topic filter [MQTT-3.8.3-3]",
        ));
    }
    Ok(Subscribe {
        pkid,
        filters,
        properties,
    })
}

fn disconnect(r: &mut Reader, v5: bool, ctx: Ctx) -> Result<Disconnect, ProtocolError> {
    let code = if v5 && !r.is_empty() { r.u8()? } else { 0 };
    let properties = if v5 && !r.is_empty() {
        r.properties(ctx)?.0
    } else {
        Properties::default()
    };
    Ok(Disconnect { code, properties })
}

/// Which packet a property section belongs to; decides which ids are allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    /// MQTT 5.0 §2.2.2.2, table of properties per packet.
    fn allows(self, id: u8) -> bool {
        match id {
            0x26 => true,
            0x1F => !matches!(
                self,
                Self::Connect | Self::Publish | Self::Will | Self::Subscribe | Self::Unsubscribe
            ),
            0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(self, Self::Publish | Self::Will),
            0x0B => matches!(self, Self::Publish | Self::Subscribe),
            0x11 => matches!(self, Self::Connect | Self::ConnAck | Self::Disconnect),
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => self == Self::ConnAck,
            0x15 | 0x16 => matches!(self, Self::Connect | Self::ConnAck | Self::Auth),
            0x17 | 0x19 => self == Self::Connect,
            0x18 => self == Self::Will,
            0x1C => matches!(self, Self::ConnAck | Self::Disconnect),
            0x21 | 0x22 | 0x27 => matches!(self, Self::Connect | Self::ConnAck),
            0x23 => self == Self::Publish,
            _ => false,
        }
    }
}

/// A cursor over one packet's body that never reads past its end.
struct Reader(Bytes);

impl Reader {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.0.len() < n {
            Err(ProtocolError::Malformed("packet shorter than its fields"))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    /// A packet identifier, which is never 0 [MQTT-2.2.1-3].
    fn pkid(&mut self) -> Result<u16, ProtocolError> {
        match self.u16()? {
            0 => Err(ProtocolError::Violation(
                "packet identifier 0 [MQTT-2.2.1-3]",
            )),
            id => Ok(id),
        }
    }

    fn varint(&mut self) -> Result<u32, ProtocolError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtocolError::MalformedLength)
    }

    fn take(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn bytes(&mut self) -> Result<Bytes, ProtocolError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn bytestr(&mut self) -> Result<ByteStr, ProtocolError> {
        let raw = self.bytes()?;
        if raw.contains(&0) {
            return Err(ProtocolError::InvalidUtf8);
        }
        ByteStr::from_utf8(raw).map_err(|_| ProtocolError::InvalidUtf8)
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        Ok(self.bytestr()?.as_str().to_owned())
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    /// Reads a property section; publish-only properties land in the second half.
    fn properties(&mut self, ctx: Ctx) -> Result<(Properties, PublishProperties), ProtocolError> {
        let len = self.varint()? as usize;
        let mut r = Reader(self.take(len)?);
        let mut p = Properties::default();
        let mut pp = PublishProperties::default();
        let mut seen = 0u64;
        while !r.is_empty() {
            let id = r.u8()?;
            if !ctx.allows(id) {
                return Err(ProtocolError::UnexpectedProperty(id));
            }
            let repeatable = id == 0x26 || (id == 0x0B && ctx == Ctx::Publish);
            if !repeatable {
                if seen & (1 << id) != 0 {
                    return Err(ProtocolError::DuplicateProperty(id));
                }
                seen |= 1 << id;
            }
            let flag = |v: u8| {
                if v <= 1 {
                    Ok(v)
                } else {
                    Err(ProtocolError::InvalidPropertyValue(id))
                }
            };
            match id {
                0x01 => pp.payload_format_indicator = Some(flag(r.u8()?)?),
                0x02 => pp.message_expiry_interval = Some(r.u32()?),
                0x03 => pp.content_type = Some(r.string()?),
                0x08 => {
                    let topic = r.string()?;
                    topic::validate_name(&topic)?;
                    pp.response_topic = Some(topic);
                }
                0x09 => pp.correlation_data = Some(r.bytes()?),
                0x0B => {
                    let id_value = r.varint()?;
                    if id_value == 0 {
                        return Err(ProtocolError::InvalidPropertyValue(id));
                    }
                    if ctx == Ctx::Publish {
                        pp.subscription_identifiers.push(id_value);
                    } else {
                        p.subscription_identifier = Some(id_value);
                    }
                }
                0x11 => p.session_expiry_interval = Some(r.u32()?),
                0x12 => p.assigned_client_identifier = Some(r.string()?),
                0x13 => p.server_keep_alive = Some(r.u16()?),
                0x15 => p.authentication_method = Some(r.string()?),
                0x16 => p.authentication_data = Some(r.bytes()?),
                0x17 => p.request_problem_information = Some(flag(r.u8()?)?),
                0x18 => p.will_delay_interval = Some(r.u32()?),
                0x19 => p.request_response_information = Some(flag(r.u8()?)?),
                0x1A => p.response_information = Some(r.string()?),
                0x1C => p.server_reference = Some(r.string()?),
                0x1F => p.reason_string = Some(r.string()?),
                0x21 => match r.u16()? {
                    0 => return Err(ProtocolError::InvalidPropertyValue(id)),
                    v => p.receive_maximum = Some(v),
                },
                0x22 => p.topic_alias_maximum = Some(r.u16()?),
                0x23 => pp.topic_alias = Some(r.u16()?),
                0x24 => p.maximum_qos = Some(flag(r.u8()?)?),
                0x25 => p.retain_available = Some(flag(r.u8()?)?),
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    match ctx {
                        Ctx::Publish | Ctx::Will => pp.user_properties.push((k, v)),
                        _ => p.user_properties.push((k, v)),
                    }
                }
                0x27 => match r.u32()? {
                    0 => return Err(ProtocolError::InvalidPropertyValue(id)),
                    v => p.maximum_packet_size = Some(v),
                },
                0x28 => p.wildcard_subscription_available = Some(flag(r.u8()?)?),
                0x29 => p.subscription_identifier_available = Some(flag(r.u8()?)?),
                0x2A => p.shared_subscription_available = Some(flag(r.u8()?)?),
                _ => return Err(ProtocolError::UnexpectedProperty(id)),
            }
        }
        Ok((p, pp))
    }
}
