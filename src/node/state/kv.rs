//! The network's state as one ordered map of byte strings, with what a replicated state machine
//! needs around it: an undo journal (a refused transaction leaves nothing behind, an aborted block
//! nothing at all), the set of keys a block changed (what a driver persists), and a hash of the
//! whole map that any two replicas holding the same entries compute alike.
//!
//! The hash costs what a block changed, not the size of the state. Each entry keeps the hash of
//! its key and value (its leaf). The entries, in key order, fall into chunks that end at each
//! *boundary* key (one key in 64, chosen by the hash of the key alone, so the chunks depend on
//! which keys are there and on nothing else) and a last chunk after the last boundary. The state
//! hash is the hash of the chunks' hashes in order; a change marks its chunk (two, where a
//! boundary key comes or goes) to be hashed again, and only those are.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included, Unbounded};

use sha2::{Digest, Sha256};

/// Domain of the state hash, so it never equals a hash of anything else.
const STATE_HASH_DOMAIN: &[u8] = b"gpubridge/v2/state-hash";
/// Domain of a chunk's hash.
const CHUNK_DOMAIN: &[u8] = b"gpubridge/v2/state-chunk";
/// Domain of the hash that says whether a key ends a chunk.
const BOUNDARY_DOMAIN: &[u8] = b"gpubridge/v2/chunk-boundary";

/// Whether `key` ends a chunk: one key in 64, by the first byte of its hash.
fn is_boundary(key: &str) -> bool {
    let mut hasher = Sha256::new();
    hasher.update(BOUNDARY_DOMAIN);
    hasher.update(key.as_bytes());
    hasher.finalize()[0] < 4
}

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

/// Where a chunk ends: at a boundary key (inclusive), or at the end of the map. Ordered as the
/// chunks are: every key before the end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChunkEnd {
    Key(String),
    Tail,
}

/// The chunks' hashes as last computed, and the chunks changed since.
#[derive(Clone, Debug, Default)]
struct Chunks {
    hashes: BTreeMap<ChunkEnd, [u8; 32]>,
    stale: BTreeSet<ChunkEnd>,
}

/// A key's value before a change, to undo it.
type Undo = (String, Option<Entry>);

/// A change a block made, as a driver persists it: the key and its new value, or `None` when
/// the key was removed.
pub type Change = (String, Option<Vec<u8>>);

#[derive(Clone, Debug, Default)]
pub struct Kv {
    entries: BTreeMap<String, Entry>,
    /// The keys of `entries` that end a chunk.
    boundaries: BTreeSet<String>,
    /// Filled in by [`Kv::hash`], which reads the state; hence a cell.
    chunks: RefCell<Chunks>,
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
        let entries: BTreeMap<String, Entry> = entries
            .into_iter()
            .map(|(key, value)| {
                let entry = Entry::new(&key, value);
                (key, entry)
            })
            .collect();
        let boundaries: BTreeSet<String> =
            entries.keys().filter(|k| is_boundary(k)).cloned().collect();
        let stale = boundaries
            .iter()
            .cloned()
            .map(ChunkEnd::Key)
            .chain([ChunkEnd::Tail])
            .collect();
        Kv {
            entries,
            boundaries,
            chunks: RefCell::new(Chunks {
                hashes: BTreeMap::new(),
                stale,
            }),
            journal: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|e| e.value.as_slice())
    }

    pub fn put(&mut self, key: &str, value: Vec<u8>) {
        let old = self.set(key, Some(Entry::new(key, value)));
        self.journal.push((key.to_string(), old));
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.set(key, None) {
            Some(old) => {
                self.journal.push((key.to_string(), Some(old)));
                true
            }
            None => false,
        }
    }

    /// Sets or removes `key`, marking the chunks that changed; what was there.
    fn set(&mut self, key: &str, entry: Option<Entry>) -> Option<Entry> {
        let now = entry.is_some();
        let old = match entry {
            Some(entry) => self.entries.insert(key.to_string(), entry),
            None => self.entries.remove(key),
        };
        let (gone, stale) = match (old.is_some(), now) {
            // Nothing was there and nothing is.
            (false, false) => return old,
            // A boundary key came: its chunk splits in two.
            (false, true) if is_boundary(key) => {
                self.boundaries.insert(key.to_string());
                (
                    None,
                    [
                        Some(ChunkEnd::Key(key.to_string())),
                        Some(self.end_after(key)),
                    ],
                )
            }
            // A boundary key went: its chunk joins the next.
            (true, false) if self.boundaries.remove(key) => (
                Some(ChunkEnd::Key(key.to_string())),
                [Some(self.end_after(key)), None],
            ),
            _ => (None, [Some(self.end_of(key)), None]),
        };
        let chunks = self.chunks.get_mut();
        if let Some(gone) = gone {
            chunks.hashes.remove(&gone);
            chunks.stale.remove(&gone);
        }
        chunks.stale.extend(stale.into_iter().flatten());
        old
    }

    /// The end of the chunk holding `key`.
    fn end_of(&self, key: &str) -> ChunkEnd {
        self.boundaries
            .range::<str, _>((Included(key), Unbounded))
            .next()
            .map_or(ChunkEnd::Tail, |k| ChunkEnd::Key(k.clone()))
    }

    /// The end of the first chunk after `key`.
    fn end_after(&self, key: &str) -> ChunkEnd {
        self.boundaries
            .range::<str, _>((Excluded(key), Unbounded))
            .next()
            .map_or(ChunkEnd::Tail, |k| ChunkEnd::Key(k.clone()))
    }

    /// The hash of the chunk that ends at `end`: its leaves in key order.
    fn chunk_hash(&self, end: &ChunkEnd) -> [u8; 32] {
        let (start, upper) = match end {
            ChunkEnd::Key(key) => (
                self.boundaries
                    .range::<str, _>((Unbounded, Excluded(key.as_str())))
                    .next_back(),
                Included(key.as_str()),
            ),
            ChunkEnd::Tail => (self.boundaries.last(), Unbounded),
        };
        let lower = start.map_or(Unbounded, |k| Excluded(k.as_str()));
        let mut hasher = Sha256::new();
        hasher.update(CHUNK_DOMAIN);
        for entry in self.entries.range::<str, _>((lower, upper)).map(|(_, e)| e) {
            hasher.update(entry.leaf);
        }
        hasher.finalize().into()
    }

    /// Entries whose key starts with `prefix`, in key order, with the prefix cut off.
    pub fn scan<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.entries
            .range::<str, _>((Included(prefix), Unbounded))
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
            self.set(&key, old);
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

    /// The hash of every entry, in key order: the chunks changed since the last call are
    /// hashed again, then the hashes of all chunks in order.
    pub fn hash(&self) -> [u8; 32] {
        let mut chunks = self.chunks.borrow_mut();
        // The last chunk is there even when empty, however the map was built.
        if !chunks.hashes.contains_key(&ChunkEnd::Tail) {
            chunks.stale.insert(ChunkEnd::Tail);
        }
        for end in std::mem::take(&mut chunks.stale) {
            let hash = self.chunk_hash(&end);
            chunks.hashes.insert(end, hash);
        }
        let mut hasher = Sha256::new();
        hasher.update(STATE_HASH_DOMAIN);
        hasher.update((self.entries.len() as u64).to_be_bytes());
        for hash in chunks.hashes.values() {
            hasher.update(hash);
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

    /// The same entries hashed from scratch.
    fn from_scratch(state: &Kv) -> [u8; 32] {
        Kv::restore(
            state
                .snapshot()
                .into_iter()
                .map(|(key, value)| (key, value.expect("a snapshot holds values"))),
        )
        .hash()
    }

    #[test]
    fn chunks_split_and_join_where_a_boundary_key_comes_and_goes() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k/{i}")).collect();
        let boundary = keys.iter().find(|k| is_boundary(k)).unwrap();
        let mut state = Kv::restore(
            keys.iter()
                .filter(|k| *k != boundary)
                .map(|k| (k.clone(), k.as_bytes().to_vec())),
        );
        assert!(state.boundaries.len() > 5, "1000 keys make several chunks");
        let without = state.hash();
        state.put(boundary, b"v".to_vec());
        assert!(state.boundaries.contains(boundary));
        assert_ne!(state.hash(), without);
        assert_eq!(state.hash(), from_scratch(&state));
        state.remove(boundary);
        assert_eq!(state.hash(), without);
        // The last chunk is hashed even when empty: a map built empty and one emptied agree.
        let mut emptied = kv(&[("a", "1")]);
        emptied.hash();
        emptied.remove("a");
        assert_eq!(emptied.hash(), Kv::default().hash());
    }

    proptest::proptest! {
        /// Whatever the history of puts, removes and rollbacks, and whenever the hash was taken
        /// on the way, it is the hash of the same entries from scratch.
        #[test]
        fn the_hash_kept_by_chunks_is_the_hash_from_scratch(
            ops in proptest::collection::vec((0u8..5, 0usize..32, 0u8..3), 1..200)
        ) {
            // A quarter of the keys end chunks, so that chunks split and join often.
            let (boundaries, others): (Vec<String>, Vec<String>) =
                (0..2000).map(|i| format!("k/{i}")).partition(|k| is_boundary(k));
            let keys: Vec<&String> = boundaries[..8].iter().chain(&others[..24]).collect();
            let mut state = Kv::default();
            let mut save = state.savepoint();
            for (op, key, value) in ops {
                let key = keys[key];
                match op {
                    0 | 1 => state.put(key, vec![value]),
                    2 => {
                        state.remove(key);
                    }
                    3 => {
                        state.hash();
                    }
                    _ if value == 0 => state.rollback(save),
                    _ => save = state.savepoint(),
                }
            }
            proptest::prop_assert_eq!(state.hash(), from_scratch(&state));
        }
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
