//! Each generate call in flight holds a connection to its provider, so
//! the process's open-files limit caps how many can run at once. At start
//! the worker raises its soft limit as far as the hard limit allows and,
//! when `worker.concurrency` still would not fit, runs with less and says
//! so. Otherwise, past the limit every new socket fails — the database's
//! included — and executions that were accepted fail instead of waiting.

/// Descriptors kept for everything but provider calls: the database
/// pools, the broker, the listeners, the runtime and webhook deliveries.
pub const RESERVED: u64 = 1024;

/// The concurrency this process can hold, at most `configured`.
pub fn fit_concurrency(configured: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; worker.concurrency is not checked against it");
            None
        }
    };
    let fitted = fit(configured, limit);
    if fitted < configured {
        tracing::warn!(
            configured,
            running_with = fitted,
            open_files_limit = limit,
            "worker.concurrency does not fit the open-files limit (one descriptor per call in flight, {RESERVED} kept for the rest); raise the hard limit (ulimit -Hn, LimitNOFILE) to run more"
        );
    }
    fitted
}

fn fit(configured: usize, limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
            configured.min(room.max(1))
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_concurrency_fits_the_limit_with_room_for_the_rest() {
        assert_eq!(fit(1024, Some(65_536)), 1024, "fits: unchanged");
        assert_eq!(fit(32_768, Some(20_000)), 20_000 - RESERVED as usize);
        assert_eq!(fit(512, Some(100)), 1, "never zero");
        assert_eq!(fit(512, None), 512, "unknown limit: unchanged");
    }

    #[test]
    fn the_soft_limit_is_raised_and_the_answer_is_within_it() {
        let fitted = fit_concurrency(usize::MAX);
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert!(fitted as u64 <= soft.saturating_sub(RESERVED).max(1));
        assert!(fitted >= 1);
    }
}
