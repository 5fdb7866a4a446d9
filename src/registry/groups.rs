//! Static thing groups: a hierarchy of named groups (a parent each, at most
//! seven levels deep, as on AWS) whose members are things. A thing keeps
//! the names of the groups it is in (at most ten, as on AWS), so that a
//! thing's record says where it belongs and a group of many things is not
//! one large record. Jobs target groups through [`Registry::things_in_group`].

use super::{
    Change, Operation, Registry, RegistryError, State, check_attributes, identity, no_thing,
    now_ms, record, valid_thing_name,
};
use crate::store::Op;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Groups a thing may be in at once (AWS's quota).
pub const MAX_GROUPS_PER_THING: usize = 10;

/// Levels of a hierarchy, the root included (AWS's quota).
pub const MAX_DEPTH: usize = 7;

/// A static thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingGroup {
    /// Its name.
    pub name: String,
    /// AWS's `thingGroupId`, a UUID.
    pub id: String,
    /// `thingGroupDescription`.
    pub description: String,
    /// `attributePayload.attributes`.
    pub attributes: BTreeMap<String, String>,
    /// The group it is in, fixed at creation.
    pub parent: Option<String>,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// Starts at 1; every update adds one.
    pub version: u64,
}

/// A group as events and DescribeThingGroup show it: with the names and
/// ids of its ancestors, the root first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group.
    pub group: ThingGroup,
    /// Its ancestors, the root first: (name, id).
    pub ancestors: Vec<(String, String)>,
}

/// What UpdateThingGroup changes.
#[derive(Debug, Clone, Default)]
pub struct GroupUpdate {
    /// A new description.
    pub description: Option<String>,
    /// New attributes, and whether they merge (an empty value removes one)
    /// or replace the map.
    pub attributes: Option<(BTreeMap<String, String>, bool)>,
    /// The version the caller last saw.
    pub expected_version: Option<u64>,
}

fn no_group(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("ThingGroup {name} does not exist"))
}

fn check_group_version(name: &str, have: u64, expected: Option<u64>) -> Result<(), RegistryError> {
    match expected {
        Some(e) if e != have => Err(RegistryError::VersionConflict(format!(
            "The version for thing group {name} does not match the expected version."
        ))),
        _ => Ok(()),
    }
}

fn check_description(d: &str) -> Result<(), RegistryError> {
    if d.chars().count() > 2028 || d.chars().any(char::is_control) {
        return Err(RegistryError::Invalid(
            "thingGroupDescription is up to 2028 printable characters".into(),
        ));
    }
    Ok(())
}

/// `name`'s ancestors, the root first.
fn ancestors(state: &State, name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = state.groups.get(name).and_then(|g| g.parent.clone());
    // A parent is fixed at creation and must exist then, so the chain ends;
    // the bound keeps a damaged store from looping.
    while let Some(p) = at.filter(|_| out.len() < MAX_DEPTH) {
        let g = state.groups.get(&p);
        out.push((p, g.map(|g| g.id.clone()).unwrap_or_default()));
        at = g.and_then(|g| g.parent.clone());
    }
    out.reverse();
    out
}

fn view(state: &State, g: &ThingGroup) -> GroupView {
    GroupView {
        group: g.clone(),
        ancestors: ancestors(state, &g.name),
    }
}

/// `name` and every group below it.
fn subtree(state: &State, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([name.to_owned()]);
    // Children are found level by level; at most MAX_DEPTH levels exist.
    for _ in 0..MAX_DEPTH {
        let more: Vec<String> = state
            .groups
            .values()
            .filter(|g| g.parent.as_ref().is_some_and(|p| out.contains(p)))
            .map(|g| g.name.clone())
            .filter(|n| !out.contains(n))
            .collect();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    out
}

impl Registry {
    /// One group.
    pub fn thing_group(&self, name: &str) -> Result<GroupView, RegistryError> {
        let state = self.state.read();
        let g = state.groups.get(name).ok_or_else(|| no_group(name))?;
        Ok(view(&state, g))
    }

    /// Every group, by name.
    pub fn thing_groups(&self) -> Vec<ThingGroup> {
        self.state.read().groups.values().cloned().collect()
    }

    /// The groups below `name`: its children, or with `recursive` every
    /// descendant.
    pub fn child_groups(
        &self,
        name: &str,
        recursive: bool,
    ) -> Result<Vec<ThingGroup>, RegistryError> {
        let state = self.state.read();
        if !state.groups.contains_key(name) {
            return Err(no_group(name));
        }
        let below = subtree(&state, name);
        Ok(state
            .groups
            .values()
            .filter(|g| g.name != name)
            .filter(|g| {
                if recursive {
                    below.contains(&g.name)
                } else {
                    g.parent.as_deref() == Some(name)
                }
            })
            .cloned()
            .collect())
    }

    /// CreateThingGroup; creating it again as it is answers the existing one.
    pub fn create_thing_group(
        &self,
        name: &str,
        parent: Option<String>,
        description: String,
        attributes: BTreeMap<String, String>,
    ) -> Result<ThingGroup, RegistryError> {
        if !valid_thing_name(name) {
            return Err(RegistryError::Invalid(format!(
                "`{name}` is not a valid thing group name ([a-zA-Z0-9:_-], 1 to 128)"
            )));
        }
        check_description(&description)?;
        check_attributes(&attributes, true)?;
        let (group, changes) = self.write(|state| {
            if let Some(g) = state.groups.get(name) {
                let same = g.parent == parent
                    && g.description == description
                    && g.attributes == attributes;
                return if same {
                    Ok(((g.clone(), Vec::new()), Vec::new()))
                } else {
                    Err(RegistryError::AlreadyExists {
                        message: format!("Thing Group {name} already exists with different tags"),
                        id: g.id.clone(),
                    })
                };
            }
            if let Some(p) = &parent {
                if !state.groups.contains_key(p) {
                    return Err(no_group(p));
                }
                if ancestors(state, p).len() + 2 > MAX_DEPTH {
                    return Err(RegistryError::LimitExceeded(format!(
                        "A thing group hierarchy has at most {MAX_DEPTH} levels"
                    )));
                }
            }
            let g = ThingGroup {
                name: name.to_owned(),
                id: identity::uuid_v4(),
                description,
                attributes,
                parent,
                created_ms: now_ms(),
                version: 1,
            };
            let op = record("thinggroup/", name, &g);
            state.groups.insert(name.to_owned(), g.clone());
            let mut changes = vec![Change::ThingGroup(Operation::Created, view(state, &g))];
            if let Some(p) = g.parent.as_ref().and_then(|p| state.groups.get(p)) {
                changes.push(Change::GroupHierarchy(true, p.clone(), g.clone()));
            }
            Ok(((g, changes), vec![op]))
        })?;
        self.announce(changes);
        Ok(group)
    }

    /// UpdateThingGroup: the new version.
    pub fn update_thing_group(&self, name: &str, u: GroupUpdate) -> Result<u64, RegistryError> {
        if let Some(d) = &u.description {
            check_description(d)?;
        }
        let (version, change) = self.write(|state| {
            let g = state.groups.get(name).ok_or_else(|| no_group(name))?;
            check_group_version(name, g.version, u.expected_version)?;
            let mut next = g.clone();
            if let Some(d) = u.description {
                next.description = d;
            }
            if let Some((attributes, merge)) = u.attributes {
                if merge {
                    for (k, v) in attributes {
                        if v.is_empty() {
                            next.attributes.remove(&k);
                        } else {
                            next.attributes.insert(k, v);
                        }
                    }
                } else {
                    next.attributes = attributes;
                }
            }
            check_attributes(&next.attributes, true)?;
            next.version += 1;
            let op = record("thinggroup/", name, &next);
            let change = Change::ThingGroup(Operation::Updated, view(state, &next));
            let version = next.version;
            state.groups.insert(name.to_owned(), next);
            Ok(((version, change), vec![op]))
        })?;
        self.announce(Some(change));
        Ok(version)
    }

    /// DeleteThingGroup: its things leave it; a group with child groups
    /// cannot go, and a missing group is no error (as AWS answers).
    pub fn delete_thing_group(
        &self,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(), RegistryError> {
        let changes = self.write(|state| {
            let Some(g) = state.groups.get(name) else {
                return Ok((Vec::new(), Vec::new()));
            };
            check_group_version(name, g.version, expected)?;
            if state
                .groups
                .values()
                .any(|c| c.parent.as_deref() == Some(name))
            {
                return Err(RegistryError::Invalid(format!(
                    "Cannot delete thing group : {name} which has children"
                )));
            }
            let mut changes = Vec::new();
            let mut ops = Vec::new();
            for t in state.things.values_mut() {
                if t.groups.iter().any(|n| n == name) {
                    t.groups.retain(|n| n != name);
                    ops.push(record("thing/", &t.name, &*t));
                    changes.push(Change::GroupMembership(false, g.clone(), t.clone()));
                }
            }
            if let Some(p) = g.parent.as_ref().and_then(|p| state.groups.get(p)) {
                changes.push(Change::GroupHierarchy(false, p.clone(), g.clone()));
            }
            changes.push(Change::ThingGroup(Operation::Deleted, view(state, g)));
            state.groups.remove(name);
            ops.push(Op::DelRegistry(format!("thinggroup/{name}")));
            Ok((changes, ops))
        })?;
        self.announce(changes);
        Ok(())
    }

    /// Adds a thing to a group (again is no change).
    pub fn add_thing_to_group(&self, group: &str, thing: &str) -> Result<(), RegistryError> {
        self.membership(group, thing, true)
    }

    /// Removes a thing from a group (not in it is no change).
    pub fn remove_thing_from_group(&self, group: &str, thing: &str) -> Result<(), RegistryError> {
        self.membership(group, thing, false)
    }

    fn membership(&self, group: &str, thing: &str, add: bool) -> Result<(), RegistryError> {
        let change = self.write(|state| {
            let g = state
                .groups
                .get(group)
                .ok_or_else(|| no_group(group))?
                .clone();
            let t = state.things.get_mut(thing).ok_or_else(|| no_thing(thing))?;
            let member = t.groups.iter().any(|n| n == group);
            if member == add {
                return Ok((None, Vec::new()));
            }
            if add {
                if t.groups.len() >= MAX_GROUPS_PER_THING {
                    return Err(RegistryError::LimitExceeded(format!(
                        "Thing {thing} is already in {MAX_GROUPS_PER_THING} thing groups"
                    )));
                }
                t.groups.push(group.to_owned());
            } else {
                t.groups.retain(|n| n != group);
            }
            let op = record("thing/", thing, &*t);
            Ok((Some(Change::GroupMembership(add, g, t.clone())), vec![op]))
        })?;
        self.announce(change);
        Ok(())
    }

    /// The things in `group` or, with `recursive`, in it and every group
    /// below it, by name.
    pub fn things_in_group(
        &self,
        group: &str,
        recursive: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let state = self.state.read();
        if !state.groups.contains_key(group) {
            return Err(no_group(group));
        }
        let groups = if recursive {
            subtree(&state, group)
        } else {
            BTreeSet::from([group.to_owned()])
        };
        Ok(state
            .things
            .values()
            .filter(|t| t.groups.iter().any(|g| groups.contains(g)))
            .map(|t| t.name.clone())
            .collect())
    }

    /// The groups a thing is in, by name.
    pub fn groups_of_thing(&self, thing: &str) -> Result<Vec<ThingGroup>, RegistryError> {
        let state = self.state.read();
        let t = state.things.get(thing).ok_or_else(|| no_thing(thing))?;
        let mut out: Vec<ThingGroup> = t
            .groups
            .iter()
            .filter_map(|g| state.groups.get(g).cloned())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::Store;
    use std::sync::Arc;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(&dir.path().join("s.redb"), false, Arc::new(Metrics::new()))
            .expect("store");
        (dir, Registry::new(store, Vec::new(), Vec::new(), false))
    }

    #[tokio::test]
    async fn a_hierarchy_is_bounded_and_lists_its_things_recursively() {
        let (_dir, r) = registry();
        let mut parent = None;
        for level in 0..MAX_DEPTH {
            let name = format!("level{level}");
            r.create_thing_group(&name, parent.clone(), String::new(), BTreeMap::new())
                .expect("within the depth");
            parent = Some(name);
        }
        assert!(matches!(
            r.create_thing_group("too-deep", parent, String::new(), BTreeMap::new()),
            Err(RegistryError::LimitExceeded(_))
        ));
        let view = r.thing_group("level2").expect("group");
        assert_eq!(
            view.ancestors
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["level0", "level1"]
        );
        r.create_thing("lamp", None, BTreeMap::new())
            .expect("thing");
        r.create_thing("fan", None, BTreeMap::new()).expect("thing");
        r.add_thing_to_group("level3", "lamp").expect("add");
        r.add_thing_to_group("level0", "fan").expect("add");
        assert_eq!(r.things_in_group("level1", true).expect("list"), ["lamp"]);
        assert_eq!(r.things_in_group("level0", false).expect("list"), ["fan"]);
        assert_eq!(
            r.things_in_group("level0", true).expect("list"),
            ["fan", "lamp"]
        );
        assert!(matches!(
            r.delete_thing_group("level5", None),
            Err(RegistryError::Invalid(_))
        ));
        r.delete_thing_group("level6", None).expect("a leaf goes");
        r.delete_thing_group("level3", None)
            .expect_err("level4 is below it");
    }

    #[tokio::test]
    async fn a_thing_is_in_at_most_ten_groups_and_leaves_a_deleted_one() {
        let (_dir, r) = registry();
        r.create_thing("lamp", None, BTreeMap::new())
            .expect("thing");
        for i in 0..=MAX_GROUPS_PER_THING {
            let name = format!("g{i:02}");
            r.create_thing_group(&name, None, String::new(), BTreeMap::new())
                .expect("group");
            let added = r.add_thing_to_group(&name, "lamp");
            assert_eq!(added.is_ok(), i < MAX_GROUPS_PER_THING, "{name}");
        }
        r.delete_thing_group("g00", None).expect("delete");
        assert_eq!(r.groups_of_thing("lamp").expect("groups").len(), 9);
        assert!(
            r.thing("lamp")
                .expect("thing")
                .groups
                .iter()
                .all(|g| g != "g00")
        );
        r.remove_thing_from_group("g01", "lamp").expect("remove");
        r.remove_thing_from_group("g01", "lamp")
            .expect("again is no change");
        assert_eq!(r.groups_of_thing("lamp").expect("groups").len(), 8);
        assert!(matches!(
            r.add_thing_to_group("nope", "lamp"),
            Err(RegistryError::NotFound(_))
        ));
    }
}
