//! MQTT 5 topic aliases, both ways (§3.3.2.3.4): the aliases a client set
//! up for its publishes, and those the gateway sets up for its deliveries
//! within the client's Topic Alias Maximum.

use crate::codec::{ByteStr, reason};
use std::collections::HashMap;

/// The aliases a client set up on this connection.
#[derive(Debug, Default)]
pub struct Inbound {
    topics: HashMap<u16, ByteStr>,
}

impl Inbound {
    /// Resolves a publish's `topic` and `alias` against the aliases so far
    /// (the gateway allows aliases 1 to `max`): an alias with a topic sets
    /// it up, an alias with an empty topic stands for it. On a protocol
    /// error, the DISCONNECT reason and why.
    pub fn resolve(
        &mut self,
        topic: &mut ByteStr,
        alias: Option<u16>,
        max: u16,
    ) -> Result<(), (u8, &'static str)> {
        let Some(alias) = alias else {
            return Ok(());
        };
        if alias == 0 || alias > max {
            return Err((reason::TOPIC_ALIAS_INVALID, "topic alias out of range"));
        }
        if topic.is_empty() {
            match self.topics.get(&alias) {
                Some(t) => *topic = t.clone(),
                None => return Err((reason::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else {
            self.topics.insert(alias, topic.clone());
        }
        Ok(())
    }
}

/// What a delivery carries: its topic, an alias with it, or the alias alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// The topic only: no alias (left).
    Topic,
    /// The topic and a new alias for it.
    Set(u16),
    /// The alias alone; the client knows its topic.
    Alias(u16),
}

/// The aliases the gateway set up for its deliveries.
#[derive(Debug)]
pub struct Outbound {
    aliases: HashMap<ByteStr, u16>,
    max: u16,
}

impl Outbound {
    /// At most `max` aliases: the client's Topic Alias Maximum.
    pub fn new(max: u16) -> Self {
        Self {
            aliases: HashMap::new(),
            max,
        }
    }

    /// The first topics sent get an alias each, as far as the client
    /// allows; later messages on them carry only the alias.
    pub fn assign(&mut self, topic: &ByteStr) -> Outgoing {
        if self.max == 0 {
            return Outgoing::Topic;
        }
        if let Some(&alias) = self.aliases.get(topic) {
            return Outgoing::Alias(alias);
        }
        if self.aliases.len() >= usize::from(self.max) {
            return Outgoing::Topic;
        }
        let alias = self.aliases.len() as u16 + 1;
        // A copy, so the alias table does not pin the publisher's read buffer.
        self.aliases.insert(ByteStr::from(topic.as_str()), alias);
        Outgoing::Set(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases() {
        let mut a = Inbound::default();
        let mut t = ByteStr::from("a/b");
        // §3.3.2.3.4: an alias with a topic sets it up.
        assert_eq!(a.resolve(&mut t, Some(1), 8), Ok(()));
        let mut empty = ByteStr::from("");
        // ... and an empty topic with the alias stands for it.
        assert_eq!(a.resolve(&mut empty, Some(1), 8), Ok(()));
        assert_eq!(empty.as_str(), "a/b");
        // A topic given again with the alias replaces it.
        let mut c = ByteStr::from("c");
        assert_eq!(a.resolve(&mut c, Some(1), 8), Ok(()));
        let mut empty = ByteStr::from("");
        a.resolve(&mut empty, Some(1), 8).expect("known");
        assert_eq!(empty.as_str(), "c");
        // MQTT-3.3.2-8: alias 0 is not permitted; MQTT-3.3.2-9: nor above the maximum.
        for bad in [0, 9] {
            assert_eq!(
                a.resolve(&mut ByteStr::from("x"), Some(bad), 8),
                Err((reason::TOPIC_ALIAS_INVALID, "topic alias out of range")),
                "alias {bad}"
            );
        }
        // An empty topic with an alias nobody set up is a protocol error.
        assert_eq!(
            a.resolve(&mut ByteStr::from(""), Some(2), 8),
            Err((reason::PROTOCOL_ERROR, "unknown topic alias"))
        );
        // No alias: nothing to do.
        assert_eq!(a.resolve(&mut ByteStr::from("y"), None, 8), Ok(()));
    }

    #[test]
    fn outbound_aliases_stay_within_the_clients_maximum() {
        let mut o = Outbound::new(2);
        let (a, b, c) = (ByteStr::from("a"), ByteStr::from("b"), ByteStr::from("c"));
        assert_eq!(o.assign(&a), Outgoing::Set(1));
        assert_eq!(o.assign(&a), Outgoing::Alias(1));
        assert_eq!(o.assign(&b), Outgoing::Set(2));
        // MQTT-3.3.2-11 (5.0): never more aliases than the client's Topic Alias Maximum.
        assert_eq!(o.assign(&c), Outgoing::Topic);
        assert_eq!(o.assign(&b), Outgoing::Alias(2));
        // A client that allows none gets topics only.
        assert_eq!(Outbound::new(0).assign(&a), Outgoing::Topic);
    }
}
