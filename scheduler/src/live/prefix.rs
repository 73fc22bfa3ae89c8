//! Prefix caching: the KV caches of finished requests kept on the device,
//! keyed by the tokens they were fed, so that a request whose prompt
//! begins with those tokens (the same system prompt, the same chat so far,
//! a repeated question) copies their keys and values and prefills only the
//! rest. The keys and values of a position depend only on the tokens up to
//! it, so the request computes what it would have without the copy (the
//! engine's tests check outputs against each request run alone).
//!
//! Memory: an entry holds its whole cache (its `max_len` positions); the
//! pool's positions and the running requests' reservations together never
//! exceed the device's KV budget, because the worker evicts the least
//! recently used entries whenever admissions leave less room
//! ([`PrefixPool::evict_to`]). The pool takes no memory a request could
//! use: admission counts only reservations, and eviction makes the room.

use hetero_models::KvCache;

/// Fewer matching tokens than this are not worth a copy.
const MIN_PREFIX: usize = 4;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    used: u64,
}

/// One device's cached prefixes.
#[derive(Default)]
pub(crate) struct PrefixPool {
    entries: Vec<Entry>,
    clock: u64,
}

impl std::fmt::Debug for PrefixPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixPool")
            .field("entries", &self.entries.len())
            .field("positions", &self.positions())
            .finish()
    }
}

/// Tokens `a` and `b` share at the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixPool {
    /// Positions the entries hold (allocated, not only filled).
    pub(crate) fn positions(&self) -> usize {
        self.entries.iter().map(|e| e.cache.max_len()).sum()
    }

    /// Keep `cache`, whose positions hold `tokens`. An entry that already
    /// covers `tokens` (they are a prefix of its own) makes it redundant;
    /// entries that `tokens` cover are dropped.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, cache: KvCache) {
        if tokens.len() < MIN_PREFIX || tokens.len() != cache.len() {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(&tokens))
        {
            e.used = clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry {
            tokens,
            cache,
            used: clock,
        });
    }

    /// The entry sharing the longest prefix with `prompt`, and how many
    /// positions to take from it: at most `prompt.len() - 1`, so that the
    /// last prompt token is fed and gives the logits.
    pub(crate) fn best(&mut self, prompt: &[u32]) -> Option<(&KvCache, usize)> {
        let limit = prompt.len().saturating_sub(1);
        let (i, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if n < MIN_PREFIX {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used = self.clock;
        Some((&e.cache, n))
    }

    /// Drop the least recently used entries until at most `positions` are
    /// held.
    pub(crate) fn evict_to(&mut self, positions: usize) {
        while self.positions() > positions && !self.entries.is_empty() {
            if let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) {
                self.entries.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes_are_counted_from_the_start() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[5], &[1]), 0);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
