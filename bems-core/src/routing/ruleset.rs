//! Many named patterns, matched together.
//!
//! Trying every rule costs time in proportion to the number of rules. A
//! [`RuleSet`] instead indexes each rule by one of its fields (an
//! "anchor"): a field whose matchers are all exact values, prefixes,
//! suffixes or `equals-ignore-case`, choosing the one whose values the fewest
//! other rules share. An event looks up its own values at each anchor path
//! (a hash probe per value, and per distinct prefix or suffix length) and
//! only the rules found there, plus the rules with no such field (only
//! numeric ranges, wildcards, `anything-but`, `exists` or `cidr`), are
//! evaluated in full. Those unanchored rules are the part that still costs
//! time per rule. With a cell's rules (one per stage and partition, anchored on
//! the partition) an event evaluates about four rules whether the cell has
//! 4 or 396. This is the same effect event-ruler gets from its state
//! machine, bought with a hash map per anchor path.
//!
//! [`RuleSet::matching_json`] reads raw JSON and materializes only the
//! fields some rule names, skipping the rest of the event unparsed.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::event_pattern::EventPattern;
use super::tree::{self, Field, Matcher, Node};

/// Why a rule set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleSetError {
    /// Two rules share a name.
    #[error("two rules are named '{0}'")]
    DuplicateName(String),
}

/// Named event patterns compiled for matching together.
#[derive(Debug, Clone)]
pub struct RuleSet {
    names: Vec<String>,
    patterns: Vec<EventPattern>,
    anchors: Vec<Anchor>,
    unanchored: Vec<u32>,
    fields: Trie,
}

/// The rules anchored on one path, by the value they require there.
#[derive(Debug, Clone, Default)]
struct Anchor {
    path: Vec<String>,
    strings: HashMap<String, Vec<u32>>,
    numbers: HashMap<i64, Vec<u32>>,
    bools: [Vec<u32>; 2],
    nulls: Vec<u32>,
    prefixes: HashMap<String, Vec<u32>>,
    suffixes: HashMap<String, Vec<u32>>,
    /// Byte lengths of the prefixes and suffixes above: an event string is
    /// probed once per distinct length, not once per rule.
    prefix_lengths: Vec<usize>,
    suffix_lengths: Vec<usize>,
    /// `equals-ignore-case` values, case-folded.
    folded: HashMap<String, Vec<u32>>,
}

/// A value a rule requires at a path, one of which must be present.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Str(String),
    Num(i64),
    Bool(bool),
    Null,
    Prefix(String),
    Suffix(String),
    Folded(String),
}

impl RuleSet {
    /// Compiles `rules`. Names must be unique.
    pub fn new<S: Into<String>>(rules: impl IntoIterator<Item = (S, EventPattern)>) -> Result<RuleSet, RuleSetError> {
        let mut names: Vec<String> = Vec::new();
        let mut patterns = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, pattern) in rules {
            let name = name.into();
            if !seen.insert(name.clone()) {
                return Err(RuleSetError::DuplicateName(name));
            }
            names.push(name);
            patterns.push(pattern);
        }

        // Candidate anchors per rule, and how many rules require each value.
        let candidates: Vec<Vec<(Vec<String>, Vec<Key>)>> = patterns
            .iter()
            .map(|p| {
                let mut out = Vec::new();
                exact_leaves(p.root(), &mut Vec::new(), &mut out);
                out
            })
            .collect();
        let mut frequency: HashMap<(&[String], &Key), usize> = HashMap::new();
        for rule in &candidates {
            for (path, keys) in rule {
                for key in keys {
                    *frequency.entry((path.as_slice(), key)).or_default() += 1;
                }
            }
        }

        let mut by_path: BTreeMap<Vec<String>, Anchor> = BTreeMap::new();
        let mut unanchored = Vec::new();
        for (i, rule) in candidates.iter().enumerate() {
            let rule_id = u32::try_from(i).unwrap_or(u32::MAX);
            // The most selective anchor: the one whose most shared value is
            // shared by the fewest rules.
            let best = rule.iter().min_by_key(|(path, keys)| {
                let worst = keys.iter().map(|k| frequency[&(path.as_slice(), k)]).max().unwrap_or(usize::MAX);
                (worst, keys.len())
            });
            let Some((path, keys)) = best else {
                unanchored.push(rule_id);
                continue;
            };
            let anchor =
                by_path.entry(path.clone()).or_insert_with(|| Anchor { path: path.clone(), ..Anchor::default() });
            for key in keys {
                let slot = match key {
                    Key::Str(s) => anchor.strings.entry(s.clone()).or_default(),
                    Key::Num(n) => anchor.numbers.entry(*n).or_default(),
                    Key::Bool(b) => &mut anchor.bools[usize::from(*b)],
                    Key::Null => &mut anchor.nulls,
                    Key::Prefix(p) => {
                        if !anchor.prefix_lengths.contains(&p.len()) {
                            anchor.prefix_lengths.push(p.len());
                        }
                        anchor.prefixes.entry(p.clone()).or_default()
                    }
                    Key::Suffix(p) => {
                        if !anchor.suffix_lengths.contains(&p.len()) {
                            anchor.suffix_lengths.push(p.len());
                        }
                        anchor.suffixes.entry(p.clone()).or_default()
                    }
                    Key::Folded(f) => anchor.folded.entry(f.clone()).or_default(),
                };
                if slot.last() != Some(&rule_id) {
                    slot.push(rule_id);
                }
            }
        }

        let mut fields = Trie::default();
        for p in &patterns {
            fields.add(p.root());
        }
        Ok(RuleSet { names, patterns, anchors: by_path.into_values().collect(), unanchored, fields })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names of the rules `event` matches, in the order they were given.
    pub fn matching(&self, event: &Value) -> Vec<&str> {
        let mut candidates: Vec<u32> = self.unanchored.clone();
        let mut values = Vec::new();
        for anchor in &self.anchors {
            values.clear();
            values_at(event, &anchor.path, &mut values);
            for v in &values {
                match v {
                    Value::String(s) => anchor.string_hits(s, &mut candidates),
                    Value::Number(n) => candidates.extend(
                        n.as_f64()
                            .and_then(tree::fixed_eventbridge)
                            .and_then(|k| anchor.numbers.get(&k))
                            .into_iter()
                            .flatten(),
                    ),
                    Value::Bool(b) => candidates.extend(&anchor.bools[usize::from(*b)]),
                    Value::Null => candidates.extend(&anchor.nulls),
                    _ => {}
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .map(|i| i as usize)
            .filter(|&i| self.patterns[i].matches(event))
            .map(|i| self.names[i].as_str())
            .collect()
    }

    /// Like [`matching`](RuleSet::matching), from JSON text: only the
    /// fields the rules name are decoded; the rest is skipped.
    pub fn matching_json(&self, json: &[u8]) -> Result<Vec<&str>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let pruned = Pruned(&self.fields).deserialize(&mut de)?;
        de.end()?;
        Ok(self.matching(&pruned))
    }
}

impl Anchor {
    /// The rules a string value selects: equal, starting or ending with a
    /// rule's value, or equal to it ignoring case.
    fn string_hits(&self, s: &str, out: &mut Vec<u32>) {
        out.extend(self.strings.get(s).into_iter().flatten());
        for &len in &self.prefix_lengths {
            if let Some(head) = s.get(..len) {
                out.extend(self.prefixes.get(head).into_iter().flatten());
            }
        }
        for &len in &self.suffix_lengths {
            if let Some(tail) = s.len().checked_sub(len).and_then(|at| s.get(at..)) {
                out.extend(self.suffixes.get(tail).into_iter().flatten());
            }
        }
        if !self.folded.is_empty() {
            out.extend(self.folded.get(&tree::fold(s)).into_iter().flatten());
        }
    }
}

/// The indexable leaves of a pattern outside any `$or`: every event the
/// pattern matches has, at that path, a value one of the keys selects.
fn exact_leaves(node: &Node, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Vec<Key>)>) {
    for (key, field) in &node.fields {
        path.push(key.clone());
        match field {
            Field::Nested(n) => exact_leaves(n, path, out),
            Field::Leaf(matchers) => {
                let keys: Option<Vec<Key>> = matchers
                    .iter()
                    .map(|m| match m {
                        Matcher::String(s) => Some(Key::Str(s.clone())),
                        Matcher::Number(n) => tree::fixed_eventbridge(n.value).map(Key::Num),
                        Matcher::Bool(b) => Some(Key::Bool(*b)),
                        Matcher::Null => Some(Key::Null),
                        Matcher::Prefix { value, ignore_case: false } => Some(Key::Prefix(value.clone())),
                        Matcher::Suffix { value, ignore_case: false } => Some(Key::Suffix(value.clone())),
                        Matcher::EqualsIgnoreCase(value) => Some(Key::Folded(tree::fold(value))),
                        _ => None,
                    })
                    .collect();
                if let Some(mut keys) = keys {
                    keys.sort();
                    keys.dedup();
                    out.push((path.clone(), keys));
                }
            }
        }
        path.pop();
    }
}

/// The leaf values at `path`, walking through arrays of objects.
fn values_at<'v>(value: &'v Value, path: &[String], out: &mut Vec<&'v Value>) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().for_each(|i| values_at(i, path, out)),
        (v, None) => out.push(v),
        (Value::Object(map), Some((first, rest))) => {
            if let Some(child) = map.get(first.as_str()) {
                values_at(child, rest, out);
            }
        }
        _ => {}
    }
}

/// The field paths rules look at. `whole` keeps a value entire (a leaf);
/// otherwise only the named children are kept.
///
/// Children are a short list searched linearly: events have a few dozen
/// keys, rules name a handful, and comparing a few short strings beats
/// hashing every key of the event.
#[derive(Debug, Clone, Default)]
struct Trie {
    whole: bool,
    children: Vec<(String, Trie)>,
}

impl Trie {
    fn child(&self, key: &str) -> Option<&Trie> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    fn add(&mut self, node: &Node) {
        for (key, field) in &node.fields {
            let at = match self.children.iter().position(|(k, _)| k == key) {
                Some(i) => i,
                None => {
                    self.children.push((key.clone(), Trie::default()));
                    self.children.len() - 1
                }
            };
            let child = &mut self.children[at].1;
            match field {
                Field::Nested(n) => child.add(n),
                Field::Leaf(_) => child.whole = true,
            }
        }
        for alt in &node.or {
            self.add(alt);
        }
    }
}

/// Deserializes only what a [`Trie`] names.
struct Pruned<'t>(&'t Trie);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Pruned(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<crate::validate::Key<'de>>()? {
            let key: Cow<'de, str> = key.0;
            match self.0.child(key.as_ref()) {
                Some(child) if child.whole => {
                    out.insert(key.into_owned(), map.next_value::<Value>()?);
                }
                Some(child) => {
                    out.insert(key.into_owned(), map.next_value_seed(Pruned(child))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(json: &str) -> EventPattern {
        EventPattern::from_json(json).unwrap()
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = RuleSet::new([("a", rule(r#"{"x": ["1"]}"#)), ("a", rule(r#"{"x": ["2"]}"#))]).unwrap_err();
        assert_eq!(err, RuleSetError::DuplicateName("a".into()));
    }

    #[test]
    fn anchors_pick_the_most_selective_field() {
        let rules: Vec<(String, EventPattern)> = (1..=50)
            .map(|p| (format!("r{p}"), rule(&format!(r#"{{"source": ["s"], "detail": {{"partition": [{p}]}}}}"#))))
            .collect();
        let set = RuleSet::new(rules).unwrap();
        assert_eq!(set.anchors.len(), 1);
        assert_eq!(set.anchors[0].path, vec!["detail".to_owned(), "partition".to_owned()]);
        assert!(set.unanchored.is_empty());
        assert_eq!(set.matching(&json!({"source": "s", "detail": {"partition": 7}})), vec!["r7"]);
    }

    #[test]
    fn prefix_suffix_and_ignore_case_rules_are_indexed() {
        let rules = (0..100).map(|i| (format!("p{i}"), rule(&format!(r#"{{"id": [{{"prefix": "INV-{i:03}-"}}]}}"#))));
        let rules =
            rules.chain((0..100).map(|i| (format!("s{i}"), rule(&format!(r#"{{"id": [{{"suffix": "-{i:03}"}}]}}"#)))));
        let rules = rules.chain([("c".to_owned(), rule(r#"{"id": [{"equals-ignore-case": "inv-007-x"}]}"#))]);
        let set = RuleSet::new(rules).unwrap();
        assert!(set.unanchored.is_empty());
        assert_eq!(set.anchors[0].prefix_lengths, vec![8]);
        assert_eq!(set.matching(&json!({"id": "INV-007-X"})), vec!["p7", "c"]);
        assert_eq!(set.matching(&json!({"id": "INV-007-042"})), vec!["p7", "s42"]);
    }

    #[test]
    fn pruned_parsing_keeps_named_fields_only() {
        let set = RuleSet::new([("r", rule(r#"{"detail": {"a": ["1"], "$or": [{"b": [1]}, {"c": {"d": [true]}}]}}"#))])
            .unwrap();
        let mut de = serde_json::Deserializer::from_str(
            r#"{"id": "x", "detail": {"a": "1", "z": [1, {"q": 2}], "c": {"d": true, "e": "drop"}, "b": [{"k": 1}]}}"#,
        );
        let pruned = Pruned(&set.fields).deserialize(&mut de).unwrap();
        assert_eq!(pruned, json!({"detail": {"a": "1", "c": {"d": true}, "b": [{"k": 1}]}}));
    }
}
