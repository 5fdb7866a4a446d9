//! The subscription trie: topic filters by level, with `+` and `#` kept
//! apart from literal levels so a lookup walks only the branches that can
//! match. Pure and generic over what a subscription carries.
//!
//! A lookup allocates nothing: it walks the topic string level by level and
//! calls back for every matching entry. Shared subscriptions sit beside the
//! plain ones in the node of their filter, one group per share name.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

/// Something stored per subscription, identified by its owner.
pub trait Entry {
    /// The owner (session) of the entry; one entry per owner per filter.
    fn owner(&self) -> u64;
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    subs: Vec<T>,
    shared: Vec<Group<T>>,
}

/// A shared subscription group: one member gets each message, in turn.
#[derive(Debug)]
pub struct Group<T> {
    name: Box<str>,
    /// Members of the group.
    pub members: Vec<T>,
    /// Round-robin position, advanced under the read lock.
    pub next: AtomicUsize,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            subs: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subs.is_empty()
            && self.shared.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> &mut Node<T> {
        match level {
            "+" => self.plus.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            _ => self.children.entry(level.into()).or_default(),
        }
    }
}

/// One match found by a lookup.
#[derive(Debug)]
pub enum Match<'a, T> {
    /// A plain subscription.
    Plain(&'a T),
    /// A shared subscription group; the caller picks one member.
    Group(&'a Group<T>),
}

/// Subscriptions indexed by filter.
#[derive(Debug)]
pub struct Trie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Entry> Trie<T> {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the owner's entry for `filter` (in `share` if set).
    /// Returns true if the owner had no entry there before.
    pub fn insert(&mut self, filter: &str, share: Option<&str>, entry: T) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_mut(level);
        }
        let list = match share {
            None => &mut node.subs,
            Some(name) => {
                let idx = match node.shared.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        node.shared.push(Group {
                            name: name.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        match list.iter_mut().find(|e| e.owner() == entry.owner()) {
            Some(existing) => {
                *existing = entry;
                false
            }
            None => {
                list.push(entry);
                self.len += 1;
                true
            }
        }
    }

    /// Removes the owner's entry for `filter`; returns whether there was one.
    pub fn remove(&mut self, filter: &str, share: Option<&str>, owner: u64) -> bool {
        let removed = remove(&mut self.root, Some(filter), share, owner);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` for every plain entry and every shared group whose filter
    /// matches `topic` (a valid topic name).
    pub fn for_each_match<'a>(&'a self, topic: &str, f: &mut dyn FnMut(Match<'a, T>)) {
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), true, dollar, f);
    }
}

fn split(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

fn visit<'a, T>(node: &'a Node<T>, f: &mut dyn FnMut(Match<'a, T>)) {
    node.subs.iter().for_each(|e| f(Match::Plain(e)));
    node.shared.iter().for_each(|g| f(Match::Group(g)));
}

/// `rest` is the part of the topic not yet matched; `None` once every level is consumed.
fn walk<'a, T>(
    node: &'a Node<T>,
    rest: Option<&str>,
    first: bool,
    dollar: bool,
    f: &mut dyn FnMut(Match<'a, T>),
) {
    // Wildcards at the first level never match `$` topics [MQTT-4.7.2-1].
    let wild = !(first && dollar);
    if wild && let Some(h) = node.hash.as_deref() {
        visit(h, f);
    }
    let Some(rest) = rest else {
        visit(node, f);
        return;
    };
    let (level, tail) = split(rest);
    if let Some(child) = node.children.get(level) {
        walk(child, tail, false, dollar, f);
    }
    if wild && let Some(p) = node.plus.as_deref() {
        walk(p, tail, false, dollar, f);
    }
}

fn remove<T: Entry>(
    node: &mut Node<T>,
    rest: Option<&str>,
    share: Option<&str>,
    owner: u64,
) -> bool {
    let Some(rest) = rest else {
        return match share {
            None => take(&mut node.subs, owner),
            Some(name) => {
                let Some(i) = node.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = take(&mut node.shared[i].members, owner);
                if node.shared[i].members.is_empty() {
                    node.shared.swap_remove(i);
                }
                removed
            }
        };
    };
    let (level, tail) = split(rest);
    let (removed, empty) = match level {
        "+" | "#" => {
            let slot = if level == "+" {
                &mut node.plus
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_deref_mut() else {
                return false;
            };
            let removed = remove(child, tail, share, owner);
            let empty = child.is_empty();
            if empty {
                *slot = None;
            }
            (removed, false)
        }
        _ => {
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            let removed = remove(child, tail, share, owner);
            (removed, child.is_empty())
        }
    };
    if empty {
        node.children.remove(level);
    }
    removed
}

fn take<T: Entry>(list: &mut Vec<T>, owner: u64) -> bool {
    match list.iter().position(|e| e.owner() == owner) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct E(u64);
    impl Entry for E {
        fn owner(&self) -> u64 {
            self.0
        }
    }

    fn matching(t: &Trie<E>, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        t.for_each_match(topic, &mut |m| match m {
            Match::Plain(e) => out.push(e.0),
            Match::Group(g) => out.extend(g.members.iter().map(|e| e.0 + 1000)),
        });
        out.sort_unstable();
        out
    }

    #[test]
    fn insert_match_remove() {
        let mut t = Trie::default();
        assert!(t.insert("a/+", None, E(1)));
        assert!(!t.insert("a/+", None, E(1)));
        assert!(t.insert("a/#", None, E(2)));
        assert!(t.insert("#", None, E(3)));
        assert!(t.insert("a/b", Some("g"), E(4)));
        assert_eq!(t.len(), 4);
        assert_eq!(matching(&t, "a/b"), vec![1, 2, 3, 1004]);
        assert_eq!(matching(&t, "a"), vec![2, 3]);
        assert_eq!(matching(&t, "$SYS/a"), Vec::<u64>::new());
        assert!(t.remove("a/+", None, 1));
        assert!(!t.remove("a/+", None, 1));
        assert!(t.remove("a/b", Some("g"), 4));
        assert_eq!(matching(&t, "a/b"), vec![2, 3]);
        assert!(t.remove("a/#", None, 2));
        assert!(t.remove("#", None, 3));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    proptest! {
        #[test]
        fn agrees_with_naive_matching(
            filters in proptest::collection::vec("(a|b|\\+|\\$x)(/(a|b|\\+|#)){0,3}", 1..20),
            topics in proptest::collection::vec("(a|b|\\$x|)(/(a|b|)){0,3}", 1..20),
        ) {
            let filters: Vec<String> = filters.into_iter().filter(|f| topic::validate_filter(f).is_ok()).collect();
            let mut t = Trie::default();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, None, E(i as u64));
            }
            for name in topics.iter().filter(|n| topic::validate_name(n).is_ok()) {
                let want: Vec<u64> = filters.iter().enumerate()
                    .filter(|(_, f)| topic::matches(f, name))
                    .map(|(i, _)| i as u64)
                    .collect();
                // Not deduplicated: a subscription matched twice would
                // deliver its message twice.
                prop_assert_eq!(matching(&t, name), want, "topic {}", name);
            }
        }
    }
}
