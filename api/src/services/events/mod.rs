//! Event streams served as Server-Sent Events: one execution's log
//! (`execution`: a snapshot, the stored events after the client's cursor,
//! then live ones, in order, without gaps or repeats) and every execution
//! of a tenant, live only (`tenant`). Frames are built here (`sse`); the
//! handlers only hand the stream to actix.
//!
//! Live events come from the process's one `Subscriber` (one broker
//! consumer for every stream of the process); Postgres is the record, read
//! on connect and whenever the live events leave a gap.

pub mod execution;
pub mod sse;
pub mod tenant;

use crate::services::error::ServiceError;

/// The cursor of a resuming client: `Last-Event-ID` or `starting_after`
/// (the header wins). A delta's id, `N.k`, resumes after event `N`.
pub fn parse_cursor(
    last_event_id: Option<&str>,
    starting_after: Option<&str>,
) -> Result<i32, ServiceError> {
    let (name, raw) = match (last_event_id, starting_after) {
        (Some(h), _) => ("Last-Event-ID", h),
        (None, Some(q)) => ("starting_after", q),
        (None, None) => return Ok(0),
    };
    let raw = raw.trim();
    let whole = raw.split_once('.').map_or(raw, |(n, k)| {
        if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            "x"
        }
    });
    whole
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 0 && whole.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ServiceError::InvalidRequest(format!(
                "{name} must be an event id: a whole number from 0 (or a delta's N.k)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_event_ids() {
        assert_eq!(parse_cursor(None, None).ok(), Some(0));
        assert_eq!(parse_cursor(Some("7"), Some("3")).ok(), Some(7));
        assert_eq!(parse_cursor(None, Some("3")).ok(), Some(3));
        assert_eq!(parse_cursor(Some("5.2"), None).ok(), Some(5));
        for bad in ["-1", "x", "1.5x", "5.", "", "+3", "99999999999"] {
            assert!(parse_cursor(Some(bad), None).is_err(), "{bad}");
        }
    }
}
