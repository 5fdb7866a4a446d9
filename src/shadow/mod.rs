//! Device shadows (spec/aws-iot-shadow-rules.md §1): `document` is the pure
//! core (merge, delta, metadata, versions, limits, every response), and
//! `service` answers the reserved MQTT topics and the REST calls as an
//! internal client of the router. This file names shadows and their topics.

pub mod document;
pub mod service;

/// The name of the classic (unnamed) shadow.
pub const CLASSIC: &str = "";

/// What a request asks of a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `.../get`
    Get,
    /// `.../update`
    Update,
    /// `.../delete`
    Delete,
}

impl From<Op> for crate::metrics::ShadowOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Get => Self::Get,
            Op::Update => Self::Update,
            Op::Delete => Self::Delete,
        }
    }
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "get" => Some(Self::Get),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// The request topics, for the router to offer to the service.
pub const REQUEST_FILTERS: [&str; 6] = [
    "$aws/things/+/shadow/get",
    "$aws/things/+/shadow/update",
    "$aws/things/+/shadow/delete",
    "$aws/things/+/shadow/name/+/get",
    "$aws/things/+/shadow/name/+/update",
    "$aws/things/+/shadow/name/+/delete",
];

/// A shadow, by thing and name (`CLASSIC` for the unnamed one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowId {
    /// The thing's name.
    pub thing: String,
    /// The shadow's name; empty for the classic shadow.
    pub name: String,
}

impl ShadowId {
    /// The shadow named `name` (empty: classic) of `thing`, if both names
    /// are valid: things `[a-zA-Z0-9:_-]{1,128}`, shadows `[$a-zA-Z0-9:_-]{1,64}`.
    pub fn new(thing: &str, name: &str) -> Option<Self> {
        let valid = |s: &str, max: usize, dollar: bool| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b':' | b'_' | b'-')
                        || (dollar && b == b'$')
                })
        };
        (valid(thing, 128, false) && (name.is_empty() || valid(name, 64, true))).then(|| Self {
            thing: thing.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Whether it is the classic shadow.
    pub fn is_classic(&self) -> bool {
        self.name.is_empty()
    }

    /// The topic prefix of its requests and responses (spec §1.2).
    pub fn prefix(&self) -> String {
        if self.is_classic() {
            format!("$aws/things/{}/shadow", self.thing)
        } else {
            format!("$aws/things/{}/shadow/name/{}", self.thing, self.name)
        }
    }

    /// How AWS names it in a 404: the shadow's name, or the thing's for the
    /// classic shadow.
    pub fn display_name(&self) -> &str {
        if self.is_classic() {
            &self.thing
        } else {
            &self.name
        }
    }

    /// Its key in the store: thing, a NUL, name (neither may contain NUL).
    pub fn key(&self) -> String {
        format!("{}\0{}", self.thing, self.name)
    }

    /// Reads a store key back.
    pub fn from_key(key: &str) -> Option<Self> {
        let (thing, name) = key.split_once('\0')?;
        Self::new(thing, name)
    }
}

/// The shadow and operation a request topic names; `None` for any other
/// topic, responses included.
pub fn parse_request(topic: &str) -> Option<(ShadowId, Op)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let mut parts = rest.split('/');
    let thing = parts.next()?;
    if parts.next()? != "shadow" {
        return None;
    }
    let (name, op) = match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        (op, None, None, None) => (CLASSIC, op),
        ("name", Some(name), Some(op), None) if !name.is_empty() => (name, op),
        _ => return None,
    };
    Some((ShadowId::new(thing, name)?, Op::parse(op)?))
}

/// Whether only the gateway may publish on `topic`: lifecycle events and
/// shadow responses, which clients (and their wills) could otherwise forge.
pub fn is_gateway_only(topic: &str) -> bool {
    topic.starts_with("$aws/events/") || is_response_topic(topic)
}

/// Whether `topic` is one the shadow service publishes (`.../accepted`,
/// `.../rejected`, `.../update/delta`, `.../update/documents`): clients may
/// subscribe to these but not publish to them, as on AWS IoT.
pub fn is_response_topic(topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix("$aws/things/") else {
        return false;
    };
    let mut parts = rest.split('/').skip(1);
    if parts.next() != Some("shadow") {
        return false;
    }
    let mut op = parts.next();
    if op == Some("name") {
        parts.next();
        op = parts.next();
    }
    matches!(
        (op, parts.next(), parts.next()),
        (
            Some("get" | "update" | "delete"),
            Some("accepted" | "rejected"),
            None
        ) | (Some("update"), Some("delta" | "documents"), None)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics() {
        let classic = ShadowId::new("t1", "").unwrap();
        let named = ShadowId::new("t1", "cfg").unwrap();
        assert_eq!(
            parse_request("$aws/things/t1/shadow/update"),
            Some((classic.clone(), Op::Update))
        );
        assert_eq!(
            parse_request("$aws/things/t1/shadow/name/cfg/get"),
            Some((named.clone(), Op::Get))
        );
        assert_eq!(
            parse_request("$aws/things/t1/shadow/name/$package/delete").map(|r| r.1),
            Some(Op::Delete)
        );
        for not in [
            "$aws/things/t1/shadow/update/accepted",
            "$aws/things/t1/shadow/name/cfg/update/delta",
            "$aws/things/t1/shadow",
            "$aws/things/t1/shadow/name/cfg",
            "$aws/things/t1/shadow/patch",
            "$aws/things/t 1/shadow/get",
            "$aws/things//shadow/get",
            "$aws/things/t1/shadow/name//get",
            "things/t1/shadow/get",
        ] {
            assert_eq!(parse_request(not), None, "{not}");
        }
        assert_eq!(classic.prefix(), "$aws/things/t1/shadow");
        assert_eq!(named.prefix(), "$aws/things/t1/shadow/name/cfg");
        assert_eq!(classic.display_name(), "t1");
        assert_eq!(named.display_name(), "cfg");
        assert_eq!(ShadowId::from_key(&named.key()), Some(named));
    }

    #[test]
    fn names_follow_aws_patterns() {
        assert!(ShadowId::new(&"a".repeat(128), "").is_some());
        assert!(ShadowId::new(&"a".repeat(129), "").is_none());
        assert!(ShadowId::new("t", &"n".repeat(64)).is_some());
        assert!(ShadowId::new("t", &"n".repeat(65)).is_none());
        assert!(ShadowId::new("t$", "").is_none());
        assert!(ShadowId::new("t", "a/b").is_none());
        assert!(ShadowId::new("t", "a+").is_none());
    }

    #[test]
    fn response_topics_are_the_services() {
        for t in [
            "$aws/things/t/shadow/update/accepted",
            "$aws/things/t/shadow/get/rejected",
            "$aws/things/t/shadow/delete/accepted",
            "$aws/things/t/shadow/update/delta",
            "$aws/things/t/shadow/update/documents",
            "$aws/things/t/shadow/name/n/update/documents",
            "$aws/things/t/shadow/name/n/get/accepted",
        ] {
            assert!(is_response_topic(t), "{t}");
        }
        for t in [
            "$aws/things/t/shadow/update",
            "$aws/things/t/shadow/name/n/get",
            "$aws/things/t/shadow/get/other",
            "$aws/things/t/jobs/get/accepted",
            "things/t/shadow/update/accepted",
        ] {
            assert!(!is_response_topic(t), "{t}");
        }
    }
}
