//! Where labels pointed when last read from the registry. A label can
//! move at any time, so an entry is trusted only for a TTL
//! (`api.label_cache_ms`).

use std::collections::HashMap;
use std::sync::RwLock;

/// Where labels pointed when last read, trusted for `ttl`: label moves
/// reach the replica within that, and a submit needs no registry read.
pub struct LabelCache {
    ttl: std::time::Duration,
    versions: RwLock<HashMap<(String, String), (std::time::Instant, i32)>>,
}

impl LabelCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            versions: RwLock::default(),
        }
    }

    /// The version `label` of `name` pointed at, if read within the TTL.
    pub fn get(&self, name: &str, label: &str) -> Option<i32> {
        let map = self.versions.read().ok()?;
        let (at, version) = map.get(&(name.to_string(), label.to_string()))?;
        (at.elapsed() < self.ttl).then_some(*version)
    }

    pub fn put(&self, name: &str, label: &str, version: i32) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.versions.write() {
            map.insert(
                (name.to_string(), label.to_string()),
                (std::time::Instant::now(), version),
            );
        }
    }
}
