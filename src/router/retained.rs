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
