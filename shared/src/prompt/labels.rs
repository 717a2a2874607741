//! Labels: where a label points (`LabelRule`: weighted targets and
//! per-segment targets), how one request is assigned a version through it
//! (`LabelRule::assign`, sticky per user), and the cache of rules an API
//! process keeps (`LabelCache`).
//!
//! The cache is what keeps label resolution off the database on submit.
//! A move clears the entry on every replica at once (a broker event, see
//! `crate::events::LabelMoved`); the TTL (`api.label_cache_ms`) is the
//! fallback when that event is lost. A read that started before an
//! invalidation never writes its (possibly stale) answer back: every
//! invalidation bumps a generation, and `put` is refused under a newer one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One weighted version of a label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub version: i32,
    /// Relative weight, > 0.
    pub weight: u32,
}

/// Where a label points: one or more weighted versions, and per-segment
/// targets that win over them for a request of that segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabelRule {
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, Vec<Target>>,
    /// A metadata key whose (string) value names the request's segment
    /// when the request carries no `segment` of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_key: Option<String>,
}

/// The version a request runs, and the arm of the rule it came through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub version: i32,
    /// `split:<i>`, `segment:<name>`, or `None` for a label with one
    /// version and no matching segment.
    pub arm: Option<String>,
}

impl LabelRule {
    /// A label pointing at one version.
    pub fn single(version: i32) -> Self {
        Self {
            targets: vec![Target { version, weight: 1 }],
            segments: BTreeMap::new(),
            segment_key: None,
        }
    }

    /// What is wrong with the rule, naming the field; `None` if nothing.
    pub fn problem(&self) -> Option<String> {
        fn check(field: &str, targets: &[Target]) -> Option<String> {
            if targets.is_empty() {
                return Some(format!("{field}: at least one target is needed"));
            }
            for (i, t) in targets.iter().enumerate() {
                if t.weight == 0 {
                    return Some(format!("{field}[{i}].weight must be greater than 0"));
                }
                if t.version <= 0 {
                    return Some(format!("{field}[{i}].version must be greater than 0"));
                }
            }
            let mut seen: Vec<i32> = targets.iter().map(|t| t.version).collect();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Some(format!("{field}: a version is listed twice"));
            }
            if targets.iter().map(|t| u64::from(t.weight)).sum::<u64>() > u64::from(u32::MAX) {
                return Some(format!("{field}: the weights add up to more than 2^32-1"));
            }
            None
        }
        check("targets", &self.targets).or_else(|| {
            self.segments.iter().find_map(|(name, targets)| {
                super::validate_name(name)
                    .err()
                    .map(|e| format!("segments: {e}"))
                    .or_else(|| check(&format!("segments.{name}"), targets))
            })
        })
    }

    /// The primary version: the heaviest target (the first of equals).
    pub fn primary(&self) -> i32 {
        let mut best: Option<&Target> = None;
        for t in &self.targets {
            if best.is_none_or(|b| t.weight > b.weight) {
                best = Some(t);
            }
        }
        best.map(|t| t.version).unwrap_or_default()
    }

    /// Every version the rule can assign.
    pub fn versions(&self) -> impl Iterator<Item = i32> + '_ {
        self.targets
            .iter()
            .chain(self.segments.values().flatten())
            .map(|t| t.version)
    }

    /// Assigns a request a version. A segment with targets wins over the
    /// split. Among weighted targets the choice is sticky per `user` (a
    /// stable hash of user, prompt and label, the same in every process
    /// and release) and random without one.
    pub fn assign(
        &self,
        prompt: &str,
        label: &str,
        user: Option<&str>,
        segment: Option<&str>,
    ) -> Assignment {
        if let Some((name, targets)) = segment.and_then(|s| {
            self.segments
                .get_key_value(s)
                .filter(|(_, t)| !t.is_empty())
        }) {
            let (version, _) = pick(targets, prompt, label, user);
            return Assignment {
                version,
                arm: Some(format!("segment:{name}")),
            };
        }
        let (version, index) = pick(&self.targets, prompt, label, user);
        Assignment {
            version,
            arm: (self.targets.len() > 1).then(|| format!("split:{index}")),
        }
    }
}

/// A weighted choice: by the hash of (user, prompt, label) when there is a
/// user, else at random. Answers the version and its index.
fn pick(targets: &[Target], prompt: &str, label: &str, user: Option<&str>) -> (i32, usize) {
    if targets.len() == 1 {
        return (targets[0].version, 0);
    }
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return (targets.first().map(|t| t.version).unwrap_or_default(), 0);
    }
    let point = match user {
        Some(user) => sticky_point(user, prompt, label) % total,
        None => rand::random_range(0..total),
    };
    let mut acc = 0u64;
    for (i, t) in targets.iter().enumerate() {
        acc += u64::from(t.weight);
        if point < acc {
            return (t.version, i);
        }
    }
    (targets[targets.len() - 1].version, targets.len() - 1)
}

/// sha256 of user, prompt and label (NUL-separated), first 8 bytes.
fn sticky_point(user: &str, prompt: &str, label: &str) -> u64 {
    let mut h = Sha256::new();
    for part in [user, prompt, label] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

type Entry = (Instant, Arc<LabelRule>);

/// Where labels pointed when last read, trusted for `ttl` or until a move
/// invalidates them.
pub struct LabelCache {
    ttl: Duration,
    generation: AtomicU64,
    rules: RwLock<HashMap<(String, String), Entry>>,
}

impl LabelCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            rules: RwLock::default(),
        }
    }

    /// The rule of `label` of `name`, if read within the TTL and not
    /// invalidated since.
    pub fn get(&self, name: &str, label: &str) -> Option<Arc<LabelRule>> {
        let map = self.rules.read().ok()?;
        let (at, rule) = map.get(&(name.to_string(), label.to_string()))?;
        (at.elapsed() < self.ttl).then(|| rule.clone())
    }

    /// Take before reading a rule from the registry; hand to `put`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a rule read under `generation`, unless an invalidation
    /// came since (its answer may predate the move).
    pub fn put(&self, name: &str, label: &str, rule: Arc<LabelRule>, generation: u64) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.rules.write() {
            // Checked under the lock `invalidate` takes too.
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            map.insert(
                (name.to_string(), label.to_string()),
                (Instant::now(), rule),
            );
        }
    }

    /// Forgets where `label` of `name` pointed: the next resolve reads the
    /// registry.
    pub fn invalidate(&self, name: &str, label: &str) {
        if let Ok(mut map) = self.rules.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            map.remove(&(name.to_string(), label.to_string()));
        }
    }
}

impl LabelCache {
    /// Forgets every label (after missed invalidations).
    pub fn invalidate_all(&self) {
        if let Ok(mut map) = self.rules.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(a: u32, b: u32) -> LabelRule {
        LabelRule {
            targets: vec![
                Target {
                    version: 1,
                    weight: a,
                },
                Target {
                    version: 2,
                    weight: b,
                },
            ],
            segments: BTreeMap::from([(
                "beta".into(),
                vec![Target {
                    version: 3,
                    weight: 1,
                }],
            )]),
            segment_key: None,
        }
    }

    #[test]
    fn assignment_is_sticky_per_user_and_segments_win() {
        let rule = split(50, 50);
        for user in ["u1", "u2", "u3", "someone else"] {
            let first = rule.assign("p", "production", Some(user), None);
            for _ in 0..20 {
                assert_eq!(rule.assign("p", "production", Some(user), None), first);
            }
        }
        let beta = rule.assign("p", "production", Some("u1"), Some("beta"));
        assert_eq!(beta.version, 3);
        assert_eq!(beta.arm.as_deref(), Some("segment:beta"));
        // An unknown segment falls back to the split.
        assert!(rule
            .assign("p", "production", None, Some("gamma"))
            .arm
            .unwrap()
            .starts_with("split:"));
    }

    #[test]
    fn the_sticky_hash_is_pinned() {
        // Pinned: a change would move every user to another arm on deploy.
        assert_eq!(sticky_point("u1", "p", "production") % 100, {
            let d = Sha256::digest(b"u1\0p\0production\0");
            u64::from_be_bytes(d[..8].try_into().unwrap()) % 100
        });
    }

    #[test]
    fn weights_are_honoured_and_single_labels_have_no_arm() {
        let rule = split(90, 10);
        let ones = (0..1000)
            .filter(|i| {
                rule.assign("p", "l", Some(&format!("user-{i}")), None)
                    .version
                    == 1
            })
            .count();
        assert!((820..=970).contains(&ones), "{ones}");
        assert_eq!(rule.primary(), 1);
        assert_eq!(
            LabelRule::single(4).assign("p", "l", None, None),
            Assignment {
                version: 4,
                arm: None
            }
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let mut rule = split(1, 0);
        assert!(rule.problem().unwrap().contains("targets[1].weight"));
        rule.targets[1].weight = 1;
        assert_eq!(rule.problem(), None);
        rule.segments.insert("x".into(), vec![]);
        assert!(rule.problem().unwrap().contains("segments.x"));
    }

    #[test]
    fn an_invalidation_wins_over_a_read_that_started_before_it() {
        let cache = LabelCache::new(Duration::from_secs(60));
        let before = cache.generation();
        cache.invalidate("p", "l");
        cache.put("p", "l", Arc::new(LabelRule::single(1)), before);
        assert!(cache.get("p", "l").is_none());
        let now = cache.generation();
        cache.put("p", "l", Arc::new(LabelRule::single(2)), now);
        assert_eq!(cache.get("p", "l").unwrap().primary(), 2);
        cache.invalidate("p", "l");
        assert!(cache.get("p", "l").is_none());
    }
}
