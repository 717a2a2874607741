//! Fairness across organisations on a shared worker pool: each
//! organisation runs at most `worker.tenant_concurrency` executions at
//! once in this process. A delivery over that share is not claimed: it is
//! put back in Postgres (`executions::defer_queued`) and its message is
//! acknowledged, so the messages of other organisations queued behind a
//! burst are reached at once.
//!
//! How long it waits: each organisation has a virtual queue here. Every
//! deferral adds one execution's share of a slot (the mean run time here
//! divided by the cap) to the end of that organisation's queue, and the
//! deferred execution comes back when its turn is due. So a burst of
//! 5,000 is spread over the time its share needs to run it (few messages
//! go round the queue more than once), while a small organisation's few
//! deferred executions come back within a run time or two.
//!
//! Without a cap nothing here takes a lock or keeps any state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmq_shared::config::WorkerSettings;

/// A tenant with nothing running and a queue in the past is forgotten.
#[derive(Debug)]
struct Tenant {
    running: usize,
    /// When the last execution deferred so far is due back.
    tail: Instant,
}

pub struct Fairness {
    cap: usize,
    min_delay: Duration,
    max_delay: Duration,
    tenants: Mutex<HashMap<String, Tenant>>,
    /// Exponential mean of run times here, in microseconds.
    mean_run_us: AtomicU64,
}

/// Whether a delivery may run here now.
pub enum Admission<'a> {
    /// No cap configured, or the message names no organisation.
    Uncapped,
    /// One of the organisation's slots, given back on drop.
    Admitted(Slot<'a>),
    /// The organisation has its share: put it back for this long.
    Over(Duration),
}

pub struct Slot<'a> {
    fairness: &'a Fairness,
    tenant: String,
    started: Instant,
}

impl Fairness {
    pub fn new(settings: &WorkerSettings) -> Self {
        Self {
            cap: settings.tenant_concurrency,
            min_delay: Duration::from_millis(settings.tenant_defer_ms),
            max_delay: Duration::from_millis(
                settings.tenant_defer_max_ms.max(settings.tenant_defer_ms),
            ),
            tenants: Mutex::new(HashMap::new()),
            mean_run_us: AtomicU64::new(100_000),
        }
    }

    /// Takes a slot of `tenant`, or says how long to put the delivery back.
    pub fn admit(&self, tenant: Option<&str>) -> Admission<'_> {
        let (Some(tenant), true) = (tenant, self.cap > 0) else {
            return Admission::Uncapped;
        };
        let Ok(mut tenants) = self.tenants.lock() else {
            return Admission::Uncapped;
        };
        let now = Instant::now();
        let t = tenants.entry(tenant.to_string()).or_insert(Tenant {
            running: 0,
            tail: now,
        });
        if t.running < self.cap {
            t.running += 1;
            return Admission::Admitted(Slot {
                fairness: self,
                tenant: tenant.to_string(),
                started: now,
            });
        }
        let share = Duration::from_micros(self.mean_run_us.load(Ordering::Relaxed))
            / self.cap.max(1) as u32;
        t.tail = t.tail.max(now) + share;
        Admission::Over(
            t.tail
                .saturating_duration_since(now)
                .clamp(self.min_delay, self.max_delay),
        )
    }

    fn release(&self, tenant: &str, ran: Duration) {
        // A mean over roughly the last 32 runs.
        let us = ran.as_micros().min(u64::MAX as u128) as u64;
        let old = self.mean_run_us.load(Ordering::Relaxed);
        self.mean_run_us
            .store(old - old / 32 + us / 32, Ordering::Relaxed);
        if let Ok(mut tenants) = self.tenants.lock() {
            let now = Instant::now();
            if let Some(t) = tenants.get_mut(tenant) {
                t.running = t.running.saturating_sub(1);
                if t.running == 0 && t.tail <= now {
                    tenants.remove(tenant);
                }
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.fairness.release(&self.tenant, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fairness(cap: usize) -> Fairness {
        let settings = WorkerSettings {
            tenant_concurrency: cap,
            tenant_defer_ms: 10,
            tenant_defer_max_ms: 600_000,
            ..WorkerSettings::default()
        };
        Fairness::new(&settings)
    }

    #[test]
    fn without_a_cap_everything_runs() {
        let f = fairness(0);
        assert!(matches!(f.admit(Some("a")), Admission::Uncapped));
    }

    #[test]
    fn a_burst_is_spread_over_its_share_and_others_are_not_held_up() {
        let f = fairness(2);
        let a1 = f.admit(Some("a"));
        let a2 = f.admit(Some("a"));
        assert!(matches!(a1, Admission::Admitted(_)));
        assert!(matches!(a2, Admission::Admitted(_)));
        // Mean run 100 ms, cap 2: each deferral is 50 ms further back.
        let delays: Vec<Duration> = (0..100)
            .map(|_| match f.admit(Some("a")) {
                Admission::Over(d) => d,
                _ => panic!("over its share"),
            })
            .collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays[99] >= Duration::from_millis(4_900), "{delays:?}");
        // Another organisation runs at once, and its first deferral is short.
        let b1 = f.admit(Some("b"));
        let b2 = f.admit(Some("b"));
        assert!(matches!(b1, Admission::Admitted(_)) && matches!(b2, Admission::Admitted(_)));
        match f.admit(Some("b")) {
            Admission::Over(d) => assert!(d <= Duration::from_millis(60), "{d:?}"),
            _ => panic!("b is over its share too"),
        }
        drop(a1);
        assert!(matches!(f.admit(Some("a")), Admission::Admitted(_)));
    }
}
