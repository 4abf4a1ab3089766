//! The network's state as one ordered map of byte strings, with what a replicated state machine
//! needs around it: an undo journal (a refused transaction leaves nothing behind, an aborted block
//! nothing at all), the set of keys a block changed (what a driver persists), and a hash of the
//! whole map that any two replicas holding the same entries compute alike.
//!
//! Each entry keeps the hash of its key and value, so the state hash costs one pass over 32-byte
//! leaves, not over every record.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Domain of the state hash, so it never equals a hash of anything else.
const STATE_HASH_DOMAIN: &[u8] = b"gpubridge/v1/state-hash";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    leaf: [u8; 32],
}

impl Entry {
    fn new(key: &str, value: Vec<u8>) -> Entry {
        let mut hasher = Sha256::new();
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(&value);
        Entry {
            value,
            leaf: hasher.finalize().into(),
        }
    }
}

/// A key's value before a change, to undo it.
type Undo = (String, Option<Entry>);

/// A change a block made, as a driver persists it: the key and its new value, or `None` when
/// the key was removed.
pub type Change = (String, Option<Vec<u8>>);

#[derive(Clone, Debug, Default)]
pub struct Kv {
    entries: BTreeMap<String, Entry>,
    /// Every change since the block began, oldest first.
    journal: Vec<Undo>,
}

/// A point in the journal to roll back to.
#[derive(Clone, Copy, Debug)]
pub struct Savepoint(usize);

impl Savepoint {
    /// The start of the block.
    pub const START: Savepoint = Savepoint(0);
}

impl Kv {
    /// The map holding `entries`, as a driver loads them from disk.
    pub fn restore(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Kv {
        Kv {
            entries: entries
                .into_iter()
                .map(|(key, value)| {
                    let entry = Entry::new(&key, value);
                    (key, entry)
                })
                .collect(),
            journal: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|e| e.value.as_slice())
    }

    pub fn put(&mut self, key: &str, value: Vec<u8>) {
        let entry = Entry::new(key, value);
        let old = self.entries.insert(key.to_string(), entry);
        self.journal.push((key.to_string(), old));
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.journal.push((key.to_string(), Some(old)));
                true
            }
            None => false,
        }
    }

    /// Entries whose key starts with `prefix`, in key order, with the prefix cut off.
    pub fn scan<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map_while(move |(k, e)| Some((k.strip_prefix(prefix)?, e.value.as_slice())))
    }

    pub fn savepoint(&self) -> Savepoint {
        Savepoint(self.journal.len())
    }

    /// Undoes every change made since `savepoint`.
    pub fn rollback(&mut self, savepoint: Savepoint) {
        while self.journal.len() > savepoint.0 {
            let (key, old) = self
                .journal
                .pop()
                .expect("journal is longer than the savepoint");
            match old {
                Some(entry) => self.entries.insert(key, entry),
                None => self.entries.remove(&key),
            };
        }
    }

    /// Whether anything changed since the block began.
    pub fn changed(&self) -> bool {
        !self.journal.is_empty()
    }

    /// Ends the block: what it changed, once per key in key order, with its final value. The
    /// journal is kept until [`Kv::settle`], so a driver that fails to persist can still
    /// [`Kv::rollback`] to the block's start.
    pub fn changes(&self) -> Vec<Change> {
        let keys: std::collections::BTreeSet<&str> =
            self.journal.iter().map(|(k, _)| k.as_str()).collect();
        keys.into_iter()
            .map(|k| (k.to_string(), self.entries.get(k).map(|e| e.value.clone())))
            .collect()
    }

    /// Every entry, as changes from nothing.
    pub fn snapshot(&self) -> Vec<Change> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), Some(e.value.clone())))
            .collect()
    }

    /// Forgets the journal: the block's changes are final.
    pub fn settle(&mut self) {
        self.journal.clear();
    }

    /// The hash of every entry, in key order.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(STATE_HASH_DOMAIN);
        hasher.update((self.entries.len() as u64).to_be_bytes());
        for entry in self.entries.values() {
            hasher.update(entry.leaf);
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Kv {
        Kv::restore(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        )
    }

    #[test]
    fn the_hash_is_the_content_whatever_the_history() {
        let mut a = kv(&[("a", "1")]);
        a.put("b", b"2".to_vec());
        a.put("c", b"x".to_vec());
        a.remove("c");
        let b = kv(&[("b", "2"), ("a", "1")]);
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), kv(&[("a", "1"), ("b", "3")]).hash());
        // Key and value boundaries are part of the leaf: "ab"="c" is not "a"="bc".
        assert_ne!(kv(&[("ab", "c")]).hash(), kv(&[("a", "bc")]).hash());
        assert_ne!(kv(&[]).hash(), kv(&[("", "")]).hash());
    }

    #[test]
    fn rollback_restores_exactly_what_was_there() {
        let mut state = kv(&[("a", "1"), ("b", "2")]);
        let before = state.hash();
        let save = state.savepoint();
        state.put("a", b"changed".to_vec());
        state.remove("b");
        state.put("c", b"new".to_vec());
        state.put("c", b"newer".to_vec());
        state.rollback(save);
        assert_eq!(state.hash(), before);
        assert_eq!(state.get("a"), Some(&b"1"[..]));
        assert_eq!(state.get("c"), None);
    }

    #[test]
    fn changes_name_each_key_once_with_its_final_value() {
        let mut state = kv(&[("a", "1"), ("b", "2")]);
        state.put("c", b"3".to_vec());
        state.put("a", b"4".to_vec());
        state.put("a", b"5".to_vec());
        state.remove("b");
        assert!(!state.remove("missing"));
        assert_eq!(
            state.changes(),
            vec![
                ("a".to_string(), Some(b"5".to_vec())),
                ("b".to_string(), None),
                ("c".to_string(), Some(b"3".to_vec())),
            ]
        );
        state.settle();
        assert!(!state.changed());
        assert!(state.changes().is_empty());
    }

    #[test]
    fn scan_yields_one_prefix_in_order() {
        let state = kv(&[("o/2", "b"), ("o/1", "a"), ("p/1", "c"), ("o", "x")]);
        let found: Vec<_> = state.scan("o/").collect();
        assert_eq!(found, vec![("1", &b"a"[..]), ("2", &b"b"[..])]);
        assert_eq!(state.scan("q/").count(), 0);
    }
}
