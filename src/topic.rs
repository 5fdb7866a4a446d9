//! Topic names and topic filters: validation and matching.
//!
//! Pure: no IO. Rules follow MQTT 3.1.1 §4.7 and MQTT 5.0 §4.7, which both
//! versions share:
//! - names and filters are non-empty UTF-8 without U+0000 [MQTT-4.7.3-1, MQTT-4.7.3-2];
//! - a name contains no wildcard [MQTT-4.7.0-1 / MQTT-3.3.2-2];
//! - `#` stands alone as the last level and `+` stands alone in its level [MQTT-4.7.1-2, MQTT-4.7.1-3];
//! - a filter whose first level is a wildcard does not match a name that starts with `$` [MQTT-4.7.2-1];
//! - `a/#` matches `a` itself (the parent level) as the standard says.
//!
//! AWS IoT's limits on length and depth are applied separately by [`Limits`],
//! because they are configuration, not grammar.

use std::fmt;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// U+0000 is not allowed in topics [MQTT-4.7.3-2].
    #[error("topic contains U+0000")]
    Null,
    /// Wildcards are only allowed in filters [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` must be the last level and alone in it; `+` must be alone in its level.
    #[error("wildcard is not alone in its level or `#` is not last")]
    BadWildcard,
    /// The topic is longer than the configured limit (AWS IoT: 256 bytes).
    #[error("topic is longer than {0} bytes")]
    TooLong(usize),
    /// The topic has more slashes than the configured limit (AWS IoT: 7).
    #[error("topic has more than {0} slashes")]
    TooDeep(usize),
    /// `$share/` filters need a non-empty group without wildcards and a filter [MQTT-4.8.2-1, MQTT-4.8.2-2].
    #[error("malformed shared subscription")]
    BadShare,
}

/// Length and depth limits that apply to names and filters.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest topic in bytes.
    pub max_len: usize,
    /// Most `/` separators allowed.
    pub max_slashes: usize,
}

impl Limits {
    /// Checks length and depth of a topic or the filter part of a subscription.
    /// The `$aws/rules/<ruleName>/` prefix of a Basic Ingest topic does not
    /// count, as on AWS.
    pub fn check(&self, topic: &str) -> Result<(), TopicError> {
        let topic = basic_ingest(topic).map_or(topic, |(_, inner)| inner);
        if topic.len() > self.max_len {
            return Err(TopicError::TooLong(self.max_len));
        }
        if topic.bytes().filter(|&b| b == b'/').count() > self.max_slashes {
            return Err(TopicError::TooDeep(self.max_slashes));
        }
        Ok(())
    }
}

/// Validates a topic name as found in a PUBLISH or will.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    for b in name.bytes() {
        match b {
            0 => return Err(TopicError::Null),
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    Ok(())
}

/// Validates a topic filter (without any `$share/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Null);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level.len() != 1 || !last) {
            return Err(TopicError::BadWildcard);
        }
        if level.contains('+') && level.len() != 1 {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// A subscription as sent by a client: either a plain filter or a shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription<'a> {
    /// The group name of a `$share/<group>/<filter>` subscription.
    pub share: Option<&'a str>,
    /// The filter that is matched against topic names.
    pub filter: &'a str,
}

impl<'a> Subscription<'a> {
    /// Splits and validates a filter as received in SUBSCRIBE or UNSUBSCRIBE.
    pub fn parse(raw: &'a str) -> Result<Self, TopicError> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            validate_filter(filter)?;
            return Ok(Self {
                share: Some(group),
                filter,
            });
        }
        validate_filter(raw)?;
        Ok(Self {
            share: None,
            filter: raw,
        })
    }
}

impl fmt::Display for Subscription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.share {
            Some(group) => write!(f, "$share/{group}/{}", self.filter),
            None => f.write_str(self.filter),
        }
    }
}

/// Whether `filter` matches topic `name`. Both must already be valid.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a topic is reserved for the gateway (`$` prefix); clients may not retain on it.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with('$')
}

/// Where Basic Ingest topics begin: `$aws/rules/<ruleName>/<topic>` goes to
/// that rule alone, never to subscribers.
pub const BASIC_INGEST: &str = "$aws/rules/";

/// For a Basic Ingest topic, the rule it names and the topic that rule sees
/// (what follows the rule's level; empty for a bare `$aws/rules/<ruleName>`).
pub fn basic_ingest(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(BASIC_INGEST)?;
    let (rule, inner) = rest.split_once('/').unwrap_or((rest, ""));
    (!rule.is_empty()).then_some((rule, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_ingest_names_its_rule_and_hides_its_prefix() {
        assert_eq!(
            basic_ingest("$aws/rules/BuildingManager/Buildings/Building5/Floor2"),
            Some(("BuildingManager", "Buildings/Building5/Floor2"))
        );
        assert_eq!(basic_ingest("$aws/rules/r"), Some(("r", "")));
        assert_eq!(basic_ingest("$aws/rules/"), None);
        assert_eq!(basic_ingest("$aws/rules//x"), None);
        assert_eq!(basic_ingest("aws/rules/r/x"), None);
        // The prefix's three levels do not count toward the limits.
        let limits = Limits {
            max_len: 8,
            max_slashes: 1,
        };
        assert_eq!(limits.check("$aws/rules/a_rule/b/c"), Ok(()));
        assert_eq!(
            limits.check("$aws/rules/a_rule/b/c/d"),
            Err(TopicError::TooDeep(1))
        );
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("/"), Ok(()));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Null));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/b", "$SYS/#", "a//b"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+", "+a/b", "a/b#", ""] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared() {
        let s = Subscription::parse("$share/g/a/+").expect("valid");
        assert_eq!(s.share, Some("g"));
        assert_eq!(s.filter, "a/+");
        assert_eq!(s.to_string(), "$share/g/a/+");
        for bad in ["$share/g", "$share//a", "$share/g+/a", "$share/g/"] {
            assert!(Subscription::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_per_mqtt_4_7() {
        let table = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/monitor", "$SYS/monitor", false),
            ("$SYS/#", "$SYS/monitor", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
        ];
        for (filter, name, want) in table {
            assert_eq!(matches(filter, name), want, "{filter} vs {name}");
        }
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_len: 8,
            max_slashes: 2,
        };
        assert_eq!(l.check("a/b/c"), Ok(()));
        assert_eq!(l.check("a/b/c/d"), Err(TopicError::TooDeep(2)));
        assert_eq!(l.check("aaaaaaaaa"), Err(TopicError::TooLong(8)));
    }
}
