use super::*;
use bytes::{BufMut, BytesMut};

/// Appends `packet`, encoded for `protocol`, to `buf`.
///
/// Fields the protocol cannot carry (properties and reason codes on 3.1.1)
/// are left out; a CONNACK code is mapped to its 3.1.1 return code.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    let v5 = protocol == Protocol::V5;
    let mut count = Counter(0);
    body(packet, v5, &mut count);
    buf.reserve(5 + count.0);
    buf.put_u8(first_byte(packet));
    put_varint(buf, count.0 as u32);
    body(packet, v5, buf);
}

/// Appends a PUBLISH built from borrowed parts: the delivery path encodes
/// one shared message for many subscribers without cloning it.
pub fn encode_publish(view: &PublishView<'_>, protocol: Protocol, buf: &mut BytesMut) {
    let v5 = protocol == Protocol::V5;
    let mut count = Counter(0);
    publish_body(view, v5, &mut count);
    buf.reserve(5 + count.0);
    buf.put_u8(publish_first_byte(view));
    put_varint(buf, count.0 as u32);
    publish_body(view, v5, buf);
}

/// Size of the whole encoded PUBLISH, to honour a peer's Maximum Packet Size.
pub fn publish_len(view: &PublishView<'_>, protocol: Protocol) -> usize {
    let mut count = Counter(0);
    publish_body(view, protocol == Protocol::V5, &mut count);
    1 + varint_len(count.0 as u32) + count.0
}

/// The parts of a PUBLISH as the encoder needs them.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// Redelivery flag.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// Retain flag as sent.
    pub retain: bool,
    /// Topic name (empty when only an alias is sent).
    pub topic: &'a [u8],
    /// Packet identifier (ignored for QoS 0).
    pub pkid: u16,
    /// Properties; subscription identifiers, expiry and alias come from the fields below.
    pub properties: &'a PublishProperties,
    /// Message expiry interval as it is to be sent (the remaining lifetime).
    pub message_expiry_interval: Option<u32>,
    /// Topic alias to send.
    pub topic_alias: Option<u16>,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_identifiers: &'a [u32],
    /// Payload.
    pub payload: &'a [u8],
}

impl Publish {
    /// Borrows this publish as a view, properties as they are.
    pub fn view(&self) -> PublishView<'_> {
        PublishView {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.as_bytes(),
            pkid: self.pkid,
            properties: &self.properties,
            message_expiry_interval: self.properties.message_expiry_interval,
            topic_alias: self.properties.topic_alias,
            subscription_identifiers: &self.properties.subscription_identifiers,
            payload: &self.payload,
        }
    }
}

/// Where encoded bytes go: a buffer, or a counter that sizes the packet first.
trait Sink {
    fn u8(&mut self, v: u8);
    fn slice(&mut self, v: &[u8]);
    fn u16(&mut self, v: u16) {
        self.slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.slice(&v.to_be_bytes());
    }
    fn varint(&mut self, mut v: u32) {
        loop {
            let mut b = (v & 0x7f) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            self.u8(b);
            if v == 0 {
                break;
            }
        }
    }
    /// Writes a length-prefixed binary or string; callers keep it under 64 KiB.
    fn binary(&mut self, v: &[u8]) {
        self.u16(v.len().min(usize::from(u16::MAX)) as u16);
        self.slice(&v[..v.len().min(usize::from(u16::MAX))]);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn slice(&mut self, v: &[u8]) {
        self.0 += v.len();
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn slice(&mut self, v: &[u8]) {
        self.put_slice(v);
    }
}

fn put_varint(buf: &mut BytesMut, v: u32) {
    Sink::varint(buf, v);
}

fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Publish(p) => publish_first_byte(&p.view()),
        // PUBREL, SUBSCRIBE and UNSUBSCRIBE carry flags 0010 [MQTT-2.2.2-1].
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
            packet.type_number() << 4 | 0x02
        }
        _ => packet.type_number() << 4,
    }
}

fn publish_first_byte(p: &PublishView<'_>) -> u8 {
    0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
}

fn body<S: Sink>(packet: &Packet, v5: bool, s: &mut S) {
    match packet {
        Packet::Connect(c) => connect(c, s),
        Packet::ConnAck(c) => {
            s.u8(u8::from(c.session_present));
            if v5 {
                s.u8(c.code);
                properties(&c.properties, s);
            } else {
                s.u8(reason::connack_v4(c.code));
            }
        }
        Packet::Publish(p) => publish_body(&p.view(), v5, s),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            s.u16(a.pkid);
            if v5 && (a.code != 0 || !is_empty(&a.properties)) {
                s.u8(a.code);
                if !is_empty(&a.properties) {
                    properties(&a.properties, s);
                }
            }
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.pkid);
            if v5 {
                properties(&sub.properties, s);
            }
            for (filter, o) in &sub.filters {
                s.binary(filter.as_bytes());
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 3) << 4;
                }
                s.u8(byte);
            }
        }
        Packet::SubAck(a) => {
            s.u16(a.pkid);
            if v5 {
                properties(&a.properties, s);
                s.slice(&a.codes);
            } else {
                // 3.1.1 knows only granted QoS and 0x80 [MQTT-3.9.3-2].
                for &c in &a.codes {
                    s.u8(if c < 0x80 { c } else { 0x80 });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.pkid);
            if v5 {
                properties(&u.properties, s);
            }
            for f in &u.filters {
                s.binary(f.as_bytes());
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.pkid);
            if v5 {
                properties(&a.properties, s);
                s.slice(&a.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 && (d.code != 0 || !is_empty(&d.properties)) {
                s.u8(d.code);
                if !is_empty(&d.properties) {
                    properties(&d.properties, s);
                }
            }
        }
    }
}

fn connect<S: Sink>(c: &Connect, s: &mut S) {
    let v5 = c.protocol == Protocol::V5;
    s.binary(b"MQTT");
    s.u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        properties(&c.properties, s);
    }
    s.binary(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            let delay = (w.delay_interval > 0).then_some(w.delay_interval);
            let mut count = Counter(0);
            will_delay(delay, &mut count);
            publish_properties(
                &w.properties,
                w.properties.message_expiry_interval,
                None,
                &[],
                &mut count,
            );
            s.varint(count.0 as u32);
            will_delay(delay, s);
            publish_properties(
                &w.properties,
                w.properties.message_expiry_interval,
                None,
                &[],
                s,
            );
        }
        s.binary(w.topic.as_bytes());
        s.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        s.binary(u.as_bytes());
    }
    if let Some(p) = &c.password {
        s.binary(p);
    }
}

fn will_delay<S: Sink>(delay: Option<u32>, s: &mut S) {
    if let Some(d) = delay {
        s.u8(0x18);
        s.u32(d);
    }
}

fn publish_body<S: Sink>(p: &PublishView<'_>, v5: bool, s: &mut S) {
    s.binary(p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.pkid);
    }
    if v5 {
        let mut count = Counter(0);
        publish_properties(
            p.properties,
            p.message_expiry_interval,
            p.topic_alias,
            p.subscription_identifiers,
            &mut count,
        );
        s.varint(count.0 as u32);
        publish_properties(
            p.properties,
            p.message_expiry_interval,
            p.topic_alias,
            p.subscription_identifiers,
            s,
        );
    }
    s.slice(p.payload);
}

fn publish_properties<S: Sink>(
    p: &PublishProperties,
    expiry: Option<u32>,
    alias: Option<u16>,
    sub_ids: &[u32],
    s: &mut S,
) {
    if let Some(v) = p.payload_format_indicator {
        s.u8(0x01);
        s.u8(v);
    }
    if let Some(v) = expiry {
        s.u8(0x02);
        s.u32(v);
    }
    if let Some(v) = &p.content_type {
        s.u8(0x03);
        s.binary(v.as_bytes());
    }
    if let Some(v) = &p.response_topic {
        s.u8(0x08);
        s.binary(v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        s.u8(0x09);
        s.binary(v);
    }
    for &id in sub_ids {
        s.u8(0x0B);
        s.varint(id);
    }
    if let Some(v) = alias {
        s.u8(0x23);
        s.u16(v);
    }
    user_properties(&p.user_properties, s);
}

fn user_properties<S: Sink>(props: &[(String, String)], s: &mut S) {
    for (k, v) in props {
        s.u8(0x26);
        s.binary(k.as_bytes());
        s.binary(v.as_bytes());
    }
}

fn is_empty(p: &Properties) -> bool {
    *p == Properties::default()
}

/// Writes a property section with its length prefix.
fn properties<S: Sink>(p: &Properties, s: &mut S) {
    let mut count = Counter(0);
    property_fields(p, &mut count);
    s.varint(count.0 as u32);
    property_fields(p, s);
}

fn property_fields<S: Sink>(p: &Properties, s: &mut S) {
    fn u8_prop<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            s.u8(id);
            s.u8(v);
        }
    }
    fn u16_prop<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            s.u8(id);
            s.u16(v);
        }
    }
    fn u32_prop<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            s.u8(id);
            s.u32(v);
        }
    }
    fn bin_prop<S: Sink>(s: &mut S, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            s.u8(id);
            s.binary(v);
        }
    }
    if let Some(v) = p.subscription_identifier {
        s.u8(0x0B);
        s.varint(v);
    }
    u32_prop(s, 0x11, p.session_expiry_interval);
    bin_prop(
        s,
        0x12,
        p.assigned_client_identifier.as_deref().map(str::as_bytes),
    );
    u16_prop(s, 0x13, p.server_keep_alive);
    bin_prop(
        s,
        0x15,
        p.authentication_method.as_deref().map(str::as_bytes),
    );
    bin_prop(s, 0x16, p.authentication_data.as_deref());
    u8_prop(s, 0x17, p.request_problem_information);
    u32_prop(s, 0x18, p.will_delay_interval);
    u8_prop(s, 0x19, p.request_response_information);
    bin_prop(
        s,
        0x1A,
        p.response_information.as_deref().map(str::as_bytes),
    );
    bin_prop(s, 0x1C, p.server_reference.as_deref().map(str::as_bytes));
    bin_prop(s, 0x1F, p.reason_string.as_deref().map(str::as_bytes));
    u16_prop(s, 0x21, p.receive_maximum);
    u16_prop(s, 0x22, p.topic_alias_maximum);
    u8_prop(s, 0x24, p.maximum_qos);
    u8_prop(s, 0x25, p.retain_available);
    user_properties(&p.user_properties, s);
    u32_prop(s, 0x27, p.maximum_packet_size);
    u8_prop(s, 0x28, p.wildcard_subscription_available);
    u8_prop(s, 0x29, p.subscription_identifier_available);
    u8_prop(s, 0x2A, p.shared_subscription_available);
}
