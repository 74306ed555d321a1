//! Remembers nonces for a while, to refuse a request seen before (a replay).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::Nonce;

/// Nonces seen in the last `window`, at most `max` of them (the oldest forgotten first when a
/// flood fills it).
pub(crate) struct ReplayCache {
    seen: Mutex<HashMap<Nonce, Instant>>,
    window: Duration,
    max: usize,
}

impl ReplayCache {
    /// An empty cache.
    pub fn new(window: Duration, max: usize) -> Self {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            window,
            max,
        }
    }

    /// Records `nonce`; false if it was seen within the window (a replay).
    pub fn fresh(&self, nonce: Nonce) -> bool {
        let mut seen = self.seen.lock().expect("replay lock");
        let now = Instant::now();
        if let Some(at) = seen.get(&nonce)
            && now.duration_since(*at) < self.window
        {
            return false;
        }
        if seen.len() >= self.max {
            let window = self.window;
            seen.retain(|_, t| now.duration_since(*t) < window);
        }
        if seen.len() >= self.max {
            // Still full of fresh nonces: forget the oldest.
            if let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                seen.remove(&oldest);
            }
        }
        seen.insert(nonce, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_nonce_is_fresh_once_per_window_and_a_flood_forgets_the_oldest() {
        let cache = ReplayCache::new(Duration::from_secs(10), 2);
        let (a, b, c) = (
            Nonce::from_bytes([1; 16]),
            Nonce::from_bytes([2; 16]),
            Nonce::from_bytes([3; 16]),
        );
        assert!(cache.fresh(a));
        assert!(!cache.fresh(a), "a replay");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.fresh(b));
        assert!(cache.fresh(c), "full: the oldest (a) goes");
        assert!(cache.fresh(a));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.fresh(b), "outside the window");
    }
}
