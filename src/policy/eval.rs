//! Evaluation of a compiled policy set: IAM's logic, allocation-free.
//!
//! A request is an action and a resource (type and name); the decision is
//! `Allowed` if some statement allows it and none denies it, an explicit
//! deny if any matching statement denies it, and an implicit deny
//! otherwise (spec/aws-iot-auth.md §1.5). Patterns use IAM's `*` (any
//! characters, `/` included) and `?` (one character); MQTT's `+` and `#`
//! are ordinary characters (§1.6).
//!
//! Conditions and policy variables depend only on the connection, so they
//! are settled when the set is compiled (see `compile`); evaluating a
//! request only matches actions and resources. The resource is matched as
//! the virtual concatenation of its type and name, so no ARN is built.

use super::document::Effect;
use std::sync::Arc;

/// The actions the gateway checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `iot:Connect` on `client/<clientId>`.
    Connect,
    /// `iot:Publish` on `topic/<topic>`.
    Publish,
    /// `iot:RetainPublish` on `topic/<topic>` (in addition to Publish).
    RetainPublish,
    /// `iot:Subscribe` on `topicfilter/<filter as sent>`.
    Subscribe,
    /// `iot:Receive` on `topic/<topic>`, at every delivery.
    Receive,
    /// `iot:GetRetainedMessage` on `topic/<topic>`.
    GetRetainedMessage,
    /// `iot:ListRetainedMessages` on `*`.
    ListRetainedMessages,
    /// `iot:GetThingShadow` on `thing/<name>`.
    GetThingShadow,
    /// `iot:UpdateThingShadow` on `thing/<name>`.
    UpdateThingShadow,
    /// `iot:DeleteThingShadow` on `thing/<name>`.
    DeleteThingShadow,
    /// `iot:ListNamedShadowsForThing` on `thing/<name>`.
    ListNamedShadowsForThing,
    /// `iot:DescribeJobExecution` on `thing/<name>` (HTTPS).
    DescribeJobExecution,
    /// `iot:GetPendingJobExecutions` on `thing/<name>` (HTTPS).
    GetPendingJobExecutions,
    /// `iot:StartNextPendingJobExecution` on `thing/<name>` (HTTPS).
    StartNextPendingJobExecution,
    /// `iot:UpdateJobExecution` on `thing/<name>` (HTTPS).
    UpdateJobExecution,
}

/// The jobs data-plane actions, which AWS also names with the prefix
/// `iotjobsdata:`.
pub const JOBS_DATA_ACTIONS: [Action; 4] = [
    Action::DescribeJobExecution,
    Action::GetPendingJobExecutions,
    Action::StartNextPendingJobExecution,
    Action::UpdateJobExecution,
];

impl Action {
    /// The action name, lowercase (actions compare case-insensitively).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "iot:connect",
            Self::Publish => "iot:publish",
            Self::RetainPublish => "iot:retainpublish",
            Self::Subscribe => "iot:subscribe",
            Self::Receive => "iot:receive",
            Self::GetRetainedMessage => "iot:getretainedmessage",
            Self::ListRetainedMessages => "iot:listretainedmessages",
            Self::GetThingShadow => "iot:getthingshadow",
            Self::UpdateThingShadow => "iot:updatethingshadow",
            Self::DeleteThingShadow => "iot:deletethingshadow",
            Self::ListNamedShadowsForThing => "iot:listnamedshadowsforthing",
            Self::DescribeJobExecution => "iot:describejobexecution",
            Self::GetPendingJobExecutions => "iot:getpendingjobexecutions",
            Self::StartNextPendingJobExecution => "iot:startnextpendingjobexecution",
            Self::UpdateJobExecution => "iot:updatejobexecution",
        }
    }

    /// Parses `iot:Publish` and the like, in any case (and the jobs data
    /// actions with `iotjobsdata:` too).
    pub fn parse(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("iotjobsdata:") {
            return JOBS_DATA_ACTIONS
                .into_iter()
                .find(|a| a.name().strip_prefix("iot:") == Some(rest));
        }
        [
            Self::Connect,
            Self::Publish,
            Self::RetainPublish,
            Self::Subscribe,
            Self::Receive,
            Self::GetRetainedMessage,
            Self::ListRetainedMessages,
            Self::GetThingShadow,
            Self::UpdateThingShadow,
            Self::DeleteThingShadow,
            Self::ListNamedShadowsForThing,
            Self::DescribeJobExecution,
            Self::GetPendingJobExecutions,
            Self::StartNextPendingJobExecution,
            Self::UpdateJobExecution,
        ]
        .into_iter()
        .find(|a| a.name() == lower)
    }
}

/// The resource types a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// `client/`
    Client,
    /// `topic/`
    Topic,
    /// `topicfilter/`
    TopicFilter,
    /// `thing/`
    Thing,
}

impl ResourceType {
    /// The ARN path prefix, slash included.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Client => "client/",
            Self::Topic => "topic/",
            Self::TopicFilter => "topicfilter/",
            Self::Thing => "thing/",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(Box<str>),
    Star,
    One,
}

/// An IAM wildcard pattern: `*` is any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Glob(Vec<Token>);

impl Glob {
    /// A pattern from policy text where `*` and `?` are wildcards.
    pub fn new(pattern: &str) -> Self {
        let mut g = Self::default();
        g.push_pattern(pattern);
        g
    }

    /// Appends text in which `*` and `?` are wildcards.
    pub(super) fn push_pattern(&mut self, text: &str) {
        let mut lit = String::new();
        for c in text.chars() {
            match c {
                '*' | '?' => {
                    self.push_literal(&std::mem::take(&mut lit));
                    // Runs of stars are one star.
                    if !(c == '*' && self.0.last() == Some(&Token::Star)) {
                        self.0.push(if c == '*' { Token::Star } else { Token::One });
                    }
                }
                c => lit.push(c),
            }
        }
        self.push_literal(&lit);
    }

    /// Appends text matched literally (substituted variables, escapes).
    pub(super) fn push_literal(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Token::Lit(prev)) = self.0.last_mut() {
            let mut joined = prev.to_string();
            joined.push_str(text);
            *prev = joined.into();
        } else {
            self.0.push(Token::Lit(text.into()));
        }
    }

    /// Whether the pattern is a lone `*`.
    pub fn is_any(&self) -> bool {
        self.0 == [Token::Star]
    }

    /// Matches `a` followed by `b` (a virtual concatenation, nothing is built).
    pub fn matches2(&self, a: &str, b: &str) -> bool {
        let input = Input {
            a: a.as_bytes(),
            b: b.as_bytes(),
        };
        let tokens = &self.0;
        let (mut p, mut i) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        loop {
            if let Some(t) = tokens.get(p) {
                let step = match t {
                    Token::Star => {
                        star = Some((p + 1, i));
                        p += 1;
                        continue;
                    }
                    Token::One => input.char_len(i),
                    Token::Lit(s) => input.starts_with_at(i, s.as_bytes()).then_some(s.len()),
                };
                if let Some(n) = step {
                    i += n;
                    p += 1;
                    continue;
                }
            } else if i == input.len() {
                return true;
            }
            // Mismatch: let the last star swallow one more character.
            match star {
                Some((sp, si)) if si < input.len() => {
                    let next = si + input.char_len(si).unwrap_or(1);
                    star = Some((sp, next));
                    p = sp;
                    i = next;
                }
                _ => return false,
            }
        }
    }

    /// Matches one string.
    pub fn matches(&self, s: &str) -> bool {
        self.matches2(s, "")
    }
}

struct Input<'a> {
    a: &'a [u8],
    b: &'a [u8],
}

impl Input<'_> {
    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }

    fn byte(&self, i: usize) -> Option<u8> {
        match self.a.get(i) {
            Some(&b) => Some(b),
            None => self.b.get(i - self.a.len()).copied(),
        }
    }

    /// Length in bytes of the UTF-8 character at `i`.
    fn char_len(&self, i: usize) -> Option<usize> {
        let lead = self.byte(i)?;
        let n = match lead {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        (i + n <= self.len()).then_some(n)
    }

    fn starts_with_at(&self, i: usize, lit: &[u8]) -> bool {
        i + lit.len() <= self.len()
            && lit
                .iter()
                .enumerate()
                .all(|(k, &c)| self.byte(i + k) == Some(c))
    }
}

/// A resource pattern compiled for this gateway's partition, region and account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourcePattern {
    /// `*`
    Any,
    /// An ARN whose head matched this gateway; the glob matches `type/name`.
    Path(Glob),
    /// Never matches: another account or region, or an unresolved variable.
    Never,
}

impl ResourcePattern {
    fn matches(&self, prefix: &str, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Path(g) => g.matches2(prefix, name),
            Self::Never => false,
        }
    }
}

/// One statement, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledStatement {
    /// Policy it comes from.
    pub policy: Arc<str>,
    /// Its index in that policy.
    pub index: usize,
    /// Its Sid, if any.
    pub sid: Option<Arc<str>>,
    /// Allow or Deny.
    pub effect: Effect,
    /// Lowercase action patterns.
    pub actions: Vec<Glob>,
    /// `NotAction`.
    pub not_action: bool,
    /// Resource patterns.
    pub resources: Vec<ResourcePattern>,
    /// `NotResource`.
    pub not_resource: bool,
}

impl CompiledStatement {
    fn applies(&self, action: &str, prefix: &str, name: &str) -> bool {
        let action_hit = self.actions.iter().any(|g| g.matches(action));
        let resource_hit = self.resources.iter().any(|r| r.matches(prefix, name));
        action_hit != self.not_action && resource_hit != self.not_resource
    }
}

/// The outcome of an evaluation, as AWS TestAuthorization names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Some statement allows it and none denies it.
    Allowed,
    /// A statement denies it.
    ExplicitDeny,
    /// Nothing allows it.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(self) -> bool {
        self == Self::Allowed
    }

    /// AWS's name for the decision.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "ALLOWED",
            Self::ExplicitDeny => "EXPLICIT_DENY",
            Self::ImplicitDeny => "IMPLICIT_DENY",
        }
    }
}

/// Every statement that applies to one connection, compiled.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Statements whose conditions held when compiled.
    pub statements: Vec<CompiledStatement>,
}

impl PolicySet {
    /// Decides a request; allocation-free.
    pub fn decide(&self, action: Action, ty: ResourceType, name: &str) -> Decision {
        self.explain(action, ty, name).0
    }

    /// Decides a request and names the deciding statement (the deny, or the first allow).
    pub fn explain(
        &self,
        action: Action,
        ty: ResourceType,
        name: &str,
    ) -> (Decision, Option<&CompiledStatement>) {
        self.explain_named(action.name(), ty.prefix(), name)
    }

    /// Decides any action (lowercase, such as an operator's
    /// `iot:updatecertificate`) on the resource path `prefix` + `name`.
    pub fn explain_named(
        &self,
        action: &str,
        prefix: &str,
        name: &str,
    ) -> (Decision, Option<&CompiledStatement>) {
        let mut allow = None;
        for st in &self.statements {
            if !st.applies(action, prefix, name) {
                continue;
            }
            match st.effect {
                Effect::Deny => return (Decision::ExplicitDeny, Some(st)),
                Effect::Allow => {
                    allow.get_or_insert(st);
                }
            }
        }
        match allow {
            Some(st) => (Decision::Allowed, Some(st)),
            None => (Decision::ImplicitDeny, None),
        }
    }
}

/// Decisions of one connection for the per-message actions (Publish and
/// Receive on topics), remembered by topic. A hit costs one hash lookup and
/// allocates nothing; the owner clears it whenever the policy set changes.
/// Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct DecisionCache {
    publish: std::collections::HashMap<Box<str>, Decision>,
    receive: std::collections::HashMap<Box<str>, Decision>,
}

impl DecisionCache {
    /// Entries kept per action before the cache starts over.
    pub const CAPACITY: usize = 256;

    /// Decides through the cache.
    pub fn decide(
        &mut self,
        set: &PolicySet,
        action: Action,
        ty: ResourceType,
        name: &str,
    ) -> Decision {
        let map = match (action, ty) {
            (Action::Publish, ResourceType::Topic) => &mut self.publish,
            (Action::Receive, ResourceType::Topic) => &mut self.receive,
            _ => return set.decide(action, ty, name),
        };
        if let Some(&d) = map.get(name) {
            return d;
        }
        let d = set.decide(action, ty, name);
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(name.into(), d);
        d
    }

    /// Forgets every decision (the policies or the principal changed).
    pub fn clear(&mut self) {
        self.publish.clear();
        self.receive.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A naive recursive matcher on chars, the reference for [`Glob`].
    fn naive(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|k| naive(rest, &s[k..])),
            Some(('?', rest)) => !s.is_empty() && naive(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    #[test]
    fn spec_matching_table() {
        // spec/aws-iot-auth.md §1.6
        let table = [
            ("topic/sensor/*", "topic/sensor/a/b/c", true),
            ("topic/sensor/*", "topic/sensor", false),
            ("topic/sensor/?????/t", "topic/sensor/room1/t", true),
            ("topicfilter/some/+/topic", "topicfilter/some/+/topic", true),
            (
                "topicfilter/some/+/topic",
                "topicfilter/some/x/topic",
                false,
            ),
            ("topicfilter/some/*/topic", "topicfilter/some/+/topic", true),
            ("topicfilter/a/*", "topicfilter/a/#", true),
            ("topic/a/#", "topic/a/b", false),
            ("topic/Case", "topic/case", false),
            ("topic/é?x", "topic/éüx", true),
        ];
        for (pattern, input, want) in table {
            assert_eq!(
                Glob::new(pattern).matches(input),
                want,
                "{pattern} vs {input}"
            );
            let (a, b) = input.split_at(input.find('/').map_or(0, |i| i + 1));
            assert_eq!(
                Glob::new(pattern).matches2(a, b),
                want,
                "split {pattern} vs {input}"
            );
        }
    }

    #[test]
    fn the_cache_answers_as_the_set_does_and_stays_bounded() {
        let set = PolicySet {
            statements: vec![CompiledStatement {
                policy: "p".into(),
                index: 0,
                sid: None,
                effect: Effect::Allow,
                actions: vec![Glob::new("iot:*")],
                not_action: false,
                resources: vec![ResourcePattern::Path(Glob::new("topic/ok/*"))],
                not_resource: false,
            }],
        };
        let mut cache = DecisionCache::default();
        for i in 0..(DecisionCache::CAPACITY * 3) {
            let topic = if i % 2 == 0 {
                format!("ok/{i}")
            } else {
                format!("no/{i}")
            };
            for action in [Action::Publish, Action::Receive] {
                let want = set.decide(action, ResourceType::Topic, &topic);
                assert_eq!(
                    cache.decide(&set, action, ResourceType::Topic, &topic),
                    want
                );
                assert_eq!(
                    cache.decide(&set, action, ResourceType::Topic, &topic),
                    want,
                    "hit"
                );
            }
        }
        assert!(cache.publish.len() <= DecisionCache::CAPACITY);
        assert!(cache.receive.len() <= DecisionCache::CAPACITY);
        cache.clear();
        assert!(cache.publish.is_empty() && cache.receive.is_empty());
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_naive_matcher(
            pattern in "[ab/*?é+#]{0,8}",
            input in "[ab/é+#]{0,10}",
            split in 0usize..12,
        ) {
            let want = naive(&pattern.chars().collect::<Vec<_>>(), &input.chars().collect::<Vec<_>>());
            let g = Glob::new(&pattern);
            prop_assert_eq!(g.matches(&input), want);
            let mut at = split.min(input.len());
            while !input.is_char_boundary(at) {
                at -= 1;
            }
            let (a, b) = input.split_at(at);
            prop_assert_eq!(g.matches2(a, b), want);
        }
    }
}
