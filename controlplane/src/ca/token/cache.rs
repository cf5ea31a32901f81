//! Bootstrap tokens that verified, remembered so that an agent calling the CA again with the
//! same token (retries, several certificates, the benchmark's clients) costs a hash and a map
//! look-up instead of an ES256 verification.
//!
//! Why a hit decides exactly as a fresh verification would: everything [`super::TokenVerifier`]
//! checks is a function of the token's bytes and the verifier's settings, except the time
//! checks (`exp`, `nbf`, `iat`) and which key a `kid` names. So an entry is keyed on SHA-256
//! of the whole token text (a re-signed or tampered token, even with the same claims, is another
//! entry), it keeps the token's times and the exact key that verified it, and on every hit the
//! verifier checks the times against the current clock (the same function, so the same error)
//! and that its `kid` still names that same key; if not, the entry is dropped and the token
//! verified afresh. Any change to the verifier's settings or keys empties the cache. Only
//! successes are kept: a refused token is checked in full each time, as before.
//!
//! The cache is bounded: at most [`DEFAULT_CAPACITY`] entries (or what the verifier was given),
//! the least recently used evicted first. An entry is never used once its token has expired (the
//! time check refuses it and removes it); entries that simply go unused are evicted by newer ones.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::BootstrapClaims;

/// Entries kept unless the verifier is given another bound.
pub const DEFAULT_CAPACITY: usize = 4096;

/// SHA-256 of a token's text.
pub(super) type Digest = [u8; 32];

/// What a verified token established, and what a hit must re-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verified {
    pub(super) claims: BootstrapClaims,
    pub(super) times: super::Times,
    /// The `kid` of the key that verified the signature, and that key.
    pub(super) kid: String,
    pub(super) key: Vec<u8>,
}

/// The cache: a map and a recency order, under one lock held only for map operations (never
/// while verifying).
pub(super) struct VerifiedTokens {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Digest, (Arc<Verified>, u64)>,
    /// Last use → digest; the first entry is the least recently used.
    order: BTreeMap<u64, Digest>,
    clock: u64,
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        VerifiedTokens {
            capacity,
            inner: Mutex::new(Lru::default()),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The entry for `digest`, now the most recently used.
    pub(super) fn get(&self, digest: &Digest) -> Option<Arc<Verified>> {
        let mut lru = self.lock();
        let Lru {
            entries,
            order,
            clock,
        } = &mut *lru;
        let (verified, used) = entries.get_mut(digest)?;
        order.remove(used);
        *clock += 1;
        *used = *clock;
        order.insert(*clock, *digest);
        Some(verified.clone())
    }

    /// Remembers a verified token, evicting the least recently used entries beyond the bound.
    pub(super) fn insert(&self, digest: Digest, verified: Verified) {
        if self.capacity == 0 {
            return;
        }
        let mut lru = self.lock();
        lru.remove(&digest);
        while lru.entries.len() >= self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.entries.remove(&oldest);
        }
        lru.clock += 1;
        let used = lru.clock;
        lru.order.insert(used, digest);
        lru.entries.insert(digest, (Arc::new(verified), used));
    }

    pub(super) fn remove(&self, digest: &Digest) {
        self.lock().remove(digest);
    }

    /// A poisoned lock only means another thread panicked between two map operations, each of
    /// which leaves the maps consistent; the cache stays usable.
    fn lock(&self) -> MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lru {
    fn remove(&mut self, digest: &Digest) {
        if let Some((_, used)) = self.entries.remove(digest) {
            self.order.remove(&used);
        }
    }
}

/// A clone starts empty: the clone may be given other keys or settings.
impl Clone for VerifiedTokens {
    fn clone(&self) -> Self {
        VerifiedTokens::new(self.capacity)
    }
}

/// What is cached never changes what a verifier decides, so it plays no part in equality.
impl PartialEq for VerifiedTokens {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for VerifiedTokens {}

impl fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::UNIX_EPOCH;

    use super::*;

    fn verified(n: u32) -> Verified {
        Verified {
            claims: BootstrapClaims {
                identity: "spiffe://cluster.local/ns/vm/sa/reviews".parse().unwrap(),
                group: None,
                expires: UNIX_EPOCH,
                jti: n.to_string(),
            },
            times: super::super::Times {
                iat: 0,
                nbf: 0,
                exp: 1,
            },
            kid: "kid".into(),
            key: vec![4; 65],
        }
    }

    fn digest(n: u32) -> Digest {
        let mut d = [0; 32];
        d[..4].copy_from_slice(&n.to_be_bytes());
        d
    }

    #[test]
    fn the_default_bound_holds_and_the_least_recently_used_goes_first() {
        let cache = VerifiedTokens::new(DEFAULT_CAPACITY);
        let n = u32::try_from(DEFAULT_CAPACITY).unwrap();
        for i in 0..n {
            cache.insert(digest(i), verified(i));
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        // Using the oldest makes the second oldest the one to go.
        assert!(cache.get(&digest(0)).is_some());
        cache.insert(digest(n), verified(n));
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        assert!(cache.get(&digest(0)).is_some());
        assert!(cache.get(&digest(1)).is_none());
        assert_eq!(cache.get(&digest(n)).unwrap().claims.jti, n.to_string());
        for i in n + 1..n + 1000 {
            cache.insert(digest(i), verified(i));
            assert!(cache.len() <= DEFAULT_CAPACITY);
        }
        let lru = cache.lock();
        assert_eq!(lru.entries.len(), lru.order.len());
    }

    #[test]
    fn reinserting_replaces_and_removing_forgets() {
        let cache = VerifiedTokens::new(2);
        cache.insert(digest(1), verified(1));
        cache.insert(digest(1), verified(2));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&digest(1)).unwrap().claims.jti, "2");
        cache.remove(&digest(1));
        assert!(cache.get(&digest(1)).is_none());
        assert_eq!(cache.lock().order.len(), 0);

        let none = VerifiedTokens::new(0);
        none.insert(digest(1), verified(1));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn a_clone_starts_empty() {
        let cache = VerifiedTokens::new(3);
        cache.insert(digest(1), verified(1));
        let clone = cache.clone();
        assert_eq!((clone.len(), clone.capacity()), (0, 3));
    }
}
