//! Tokens and the one lookup from a token to what it names.
//!
//! A poller keeps its connections (and its user timers) in slabs. Each entry is named by a
//! token `generation << 32 | slot` with a 31-bit generation that changes every time the slot
//! is reused, so an event already fetched for a freed connection, a timer entry of a cancelled
//! timer or a command about a closed connection can never reach a newer entry in the same
//! slot. Tokens stay below the special tokens (waker, listeners) at the top of the range.

use slab::Slab;

const SLOT_BITS: u32 = 32;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const GEN_MASK: u32 = (1 << 31) - 1;

/// What a slot holds: it keeps its own generation, so that a connection's entry can pack the
/// generation beside its other small fields instead of the slab pairing every entry with a
/// whole token word (8 bytes per connection).
pub(crate) trait Generational {
    fn generation(&self) -> u32;
    fn set_generation(&mut self, generation: u32);
}

/// Entries named by generation-checked tokens.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    slab: Slab<T>,
    next_gen: u32,
}

/// The token for `slot` holding an entry of `generation`.
pub(super) fn token(generation: u32, slot: usize) -> usize {
    ((generation as usize) << SLOT_BITS) | slot
}

/// A token's (generation, slot): the inverse of [`token`].
pub(super) fn split(token: usize) -> (u32, usize) {
    ((token >> SLOT_BITS) as u32, token & SLOT_MASK)
}

impl<T: Generational> Slots<T> {
    pub(crate) fn new() -> Self {
        Slots {
            slab: Slab::new(),
            next_gen: 0,
        }
    }

    /// Inserts the value `make(token)` builds and returns its token, or `None` when the slot
    /// index would not fit in a token (over 4 billion entries).
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(usize) -> T) -> Option<usize> {
        let entry = self.slab.vacant_entry();
        let slot = entry.key();
        if slot > SLOT_MASK {
            return None;
        }
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let token = token(self.next_gen, slot);
        let mut value = make(token);
        value.set_generation(self.next_gen);
        entry.insert(value);
        Some(token)
    }

    /// The live entry `token` names, if any.
    pub(crate) fn get(&self, token: usize) -> Option<&T> {
        let (generation, slot) = split(token);
        self.slab.get(slot).filter(|v| v.generation() == generation)
    }

    pub(crate) fn get_mut(&mut self, token: usize) -> Option<&mut T> {
        let (generation, slot) = split(token);
        self.slab
            .get_mut(slot)
            .filter(|v| v.generation() == generation)
    }

    pub(crate) fn contains(&self, token: usize) -> bool {
        self.get(token).is_some()
    }

    /// Removes the entry `token` names.
    pub(crate) fn remove(&mut self, token: usize) -> Option<T> {
        self.contains(token)
            .then(|| self.slab.remove(token & SLOT_MASK))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The tokens of every entry (a snapshot, for passes that may remove entries).
    pub(crate) fn tokens(&self) -> Vec<usize> {
        self.slab
            .iter()
            .map(|(slot, v)| token(v.generation(), slot))
            .collect()
    }

    /// Removes and yields every entry.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.slab.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test entry: a value and the generation the slots gave it.
    #[derive(Debug, PartialEq)]
    struct E<V>(V, u32);

    impl<V> Generational for E<V> {
        fn generation(&self) -> u32 {
            self.1
        }
        fn set_generation(&mut self, generation: u32) {
            self.1 = generation;
        }
    }

    #[test]
    fn a_stale_token_never_reaches_a_newer_entry_in_the_same_slot() {
        let mut s = Slots::new();
        let a = s.insert_with(|_| E("a", 0)).unwrap();
        assert_eq!(s.get(a).map(|e| e.0), Some("a"));
        assert_eq!(s.remove(a).map(|e| e.0), Some("a"));
        let b = s.insert_with(|_| E("b", 0)).unwrap();
        assert_eq!(a & SLOT_MASK, b & SLOT_MASK, "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert!(s.remove(a).is_none());
        assert_eq!(s.get(b).map(|e| e.0), Some("b"));
        assert!(b < usize::MAX - 1024, "below the special tokens");
    }

    #[test]
    fn the_maker_sees_its_own_token() {
        let mut s = Slots::new();
        let t = s.insert_with(|token| E(token, 0)).unwrap();
        assert_eq!(s.get(t).map(|e| e.0), Some(t));
        assert_eq!(s.tokens(), vec![t]);
        assert_eq!(s.drain().map(|e| e.0).collect::<Vec<_>>(), vec![t]);
        assert!(s.is_empty());
    }
}
