//! Retained messages: one per topic, in a tree by level so that a
//! subscription with wildcards finds its retained messages without scanning
//! every topic. Pure and generic over the stored value.

use std::collections::HashMap;

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            value: None,
        }
    }
}

/// Bounds on what retained messages hold, overall and per owner (the
/// certificate that published them); 0 is no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Retained messages in all.
    pub messages: usize,
    /// Topic and payload bytes in all.
    pub bytes: usize,
    /// Retained messages one owner may set.
    pub messages_per_owner: usize,
    /// Topic and payload bytes one owner may set.
    pub bytes_per_owner: usize,
}

/// Which bound a retained message would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// A count of messages.
    Messages,
    /// A count of bytes.
    Bytes,
}

/// What retained messages hold, overall and by owner.
#[derive(Debug, Default)]
pub struct Usage {
    messages: usize,
    bytes: usize,
    owners: HashMap<std::sync::Arc<str>, (usize, usize)>,
}

/// One retained message as the quota sees it: who set it, and its size.
pub type Held<'a> = (Option<&'a str>, usize);

impl Usage {
    /// Whether `new` may take the place of `old` (`None`: the topic holds
    /// nothing yet) under `quota`.
    pub fn admits(
        &self,
        quota: &Quota,
        new: Held<'_>,
        old: Option<Held<'_>>,
    ) -> Result<(), Exceeded> {
        let over = |limit: usize, value: usize| limit > 0 && value > limit;
        let (old_owner, old_bytes) = old.map_or((None, 0), |(o, b)| (o, b));
        let messages = self.messages + usize::from(old.is_none());
        if over(quota.messages, messages) {
            return Err(Exceeded::Messages);
        }
        if over(quota.bytes, self.bytes - old_bytes.min(self.bytes) + new.1) {
            return Err(Exceeded::Bytes);
        }
        let Some(owner) = new.0 else {
            return Ok(());
        };
        let (count, bytes) = self.owners.get(owner).copied().unwrap_or_default();
        let same = old.is_some() && old_owner == Some(owner);
        let count = count + usize::from(!same);
        let bytes = bytes - if same { old_bytes.min(bytes) } else { 0 } + new.1;
        if over(quota.messages_per_owner, count) {
            return Err(Exceeded::Messages);
        }
        if over(quota.bytes_per_owner, bytes) {
            return Err(Exceeded::Bytes);
        }
        Ok(())
    }

    /// A message of `owner` of `bytes` was retained.
    pub fn add(&mut self, owner: Option<&std::sync::Arc<str>>, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
        if let Some(owner) = owner {
            let entry = self.owners.entry(owner.clone()).or_default();
            entry.0 += 1;
            entry.1 += bytes;
        }
    }

    /// A message of `owner` of `bytes` is no longer retained.
    pub fn remove(&mut self, owner: Option<&str>, bytes: usize) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(owner) = owner
            && let Some(entry) = self.owners.get_mut(owner)
        {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(bytes);
            if entry.0 == 0 {
                self.owners.remove(owner);
            }
        }
    }

    /// Bytes retained in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Retained values by topic name.
#[derive(Debug)]
pub struct Retained<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Retained<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Retained<T> {
    /// Number of retained values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` for `topic`, returning the value it replaced.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the value of `topic`, pruning empty branches.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let old = remove(&mut self.root, topic);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value of `topic`.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Calls `f` for every value, `$` topics included, in no particular order.
    pub fn for_each(&self, f: &mut dyn FnMut(&T)) {
        all(&self.root, f);
    }

    /// Calls `f` for every value whose topic matches `filter` (a valid filter).
    pub fn for_each_match(&self, filter: &str, f: &mut dyn FnMut(&T)) {
        walk(&self.root, filter, true, f);
    }
}

fn remove<T>(node: &mut Node<T>, topic: &str) -> Option<T> {
    let (level, tail) = match topic.split_once('/') {
        Some((l, t)) => (l, Some(t)),
        None => (topic, None),
    };
    let child = node.children.get_mut(level)?;
    let old = match tail {
        Some(t) => remove(child, t),
        None => child.value.take(),
    };
    if child.value.is_none() && child.children.is_empty() {
        node.children.remove(level);
    }
    old
}

fn all<T>(node: &Node<T>, f: &mut dyn FnMut(&T)) {
    if let Some(v) = &node.value {
        f(v);
    }
    for child in node.children.values() {
        all(child, f);
    }
}

fn walk<T>(node: &Node<T>, filter: &str, first: bool, f: &mut dyn FnMut(&T)) {
    let (level, tail) = match filter.split_once('/') {
        Some((l, t)) => (l, Some(t)),
        None => (filter, None),
    };
    // Wildcards at the first level never match `$` topics [MQTT-4.7.2-1].
    let visible = |name: &str| !(first && name.starts_with('$'));
    match level {
        "#" => {
            // `a/#` matches `a` itself as well as everything below it.
            if !first && let Some(v) = &node.value {
                f(v);
            }
            for (name, child) in &node.children {
                if visible(name) {
                    all(child, f);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    step(child, tail, f);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                step(child, tail, f);
            }
        }
    }
}

fn step<T>(child: &Node<T>, tail: Option<&str>, f: &mut dyn FnMut(&T)) {
    match tail {
        Some(t) => walk(child, t, false, f),
        None => {
            if let Some(v) = &child.value {
                f(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quota_overall_and_per_owner() {
        let quota = Quota {
            messages: 3,
            bytes: 100,
            messages_per_owner: 2,
            bytes_per_owner: 60,
        };
        let (a, b): (std::sync::Arc<str>, std::sync::Arc<str>) = ("a".into(), "b".into());
        let mut u = Usage::default();
        assert_eq!(u.admits(&quota, (Some("a"), 30), None), Ok(()));
        u.add(Some(&a), 30);
        u.add(Some(&a), 30);
        assert_eq!(
            u.admits(&quota, (Some("a"), 1), None),
            Err(Exceeded::Messages),
            "a third message of one owner"
        );
        assert_eq!(
            u.admits(&quota, (Some("a"), 31), Some((Some("a"), 30))),
            Err(Exceeded::Bytes),
            "replacing its own message with a larger one past its bytes"
        );
        assert_eq!(
            u.admits(&quota, (Some("a"), 20), Some((Some("a"), 30))),
            Ok(())
        );
        assert_eq!(u.admits(&quota, (Some("b"), 30), None), Ok(()));
        u.add(Some(&b), 30);
        assert_eq!(
            u.admits(&quota, (None, 1), None),
            Err(Exceeded::Messages),
            "three in all"
        );
        u.remove(Some("a"), 30);
        assert_eq!(
            u.admits(&quota, (Some("b"), 41), None),
            Err(Exceeded::Bytes),
            "100 bytes in all"
        );
        assert_eq!(
            u.admits(&Quota::default(), (Some("b"), 1 << 30), None),
            Ok(()),
            "0 is no bound"
        );
    }

    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    fn matching(r: &Retained<String>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.for_each_match(filter, &mut |v| out.push(v.clone()));
        out.sort();
        out
    }

    #[test]
    fn wildcard_lookup_and_removal() {
        let mut r = Retained::default();
        for t in ["a", "a/b", "a/b/c", "a/c", "$SYS/x", "/a"] {
            r.insert(t, t.to_owned());
        }
        assert_eq!(matching(&r, "a/#"), vec!["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(matching(&r, "a/+"), vec!["a/b", "a/c"]);
        assert_eq!(matching(&r, "#"), vec!["/a", "a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(matching(&r, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(matching(&r, "+/a"), vec!["/a"]);
        assert_eq!(r.remove("a/b/c"), Some("a/b/c".to_owned()));
        assert_eq!(r.remove("a/b/c"), None);
        assert_eq!(r.len(), 5);
    }

    proptest! {
        #[test]
        fn agrees_with_naive_matching(
            topics in proptest::collection::vec("(a|b|\\$x|)(/(a|b|)){0,3}", 1..20),
            filters in proptest::collection::vec("(a|b|\\+|#|\\$x)(/(a|b|\\+|#)){0,3}", 1..20),
        ) {
            let mut r = Retained::default();
            let mut names: Vec<String> = topics.into_iter().filter(|t| topic::validate_name(t).is_ok()).collect();
            names.sort();
            names.dedup();
            for n in &names {
                r.insert(n, n.clone());
            }
            for f in filters.iter().filter(|f| topic::validate_filter(f).is_ok()) {
                let want: Vec<String> = names.iter().filter(|n| topic::matches(f, n)).cloned().collect();
                prop_assert_eq!(matching(&r, f), want, "filter {}", f);
            }
        }
    }
}
