//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>)
//! without an OpenTelemetry exporter: parsed, generated and carried from an
//! HTTP request through the AMQP message to the worker, so that the
//! worker's span of an execution continues the trace of the request that
//! submitted it. Spans record it as `trace_id`; an OpenTelemetry layer
//! plugged into [`crate::telemetry`] will later export the same ids.
//!
//! The current request's context is a task-local ([`TraceParent::current`]),
//! set by the API's request middleware around the handler, the way
//! OpenTelemetry's `Context::current` works.

use std::fmt;
use std::future::Future;

use rand::Rng;

/// One `traceparent`: version 00, a trace id, the id of the span that is
/// the parent of whatever continues it, and the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceParent;
}

impl TraceParent {
    /// A new trace (sampled), for a request that brought none.
    pub fn new_trace() -> Self {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            rng.fill(&mut trace_id);
        }
        Self {
            trace_id,
            parent_id: new_span_id(),
            flags: 0x01,
        }
    }

    /// Parses a `traceparent` header. Anything malformed, an unknown
    /// version with the wrong shape, or the all-zero ids the spec forbids
    /// is `None`: the caller starts a new trace instead.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; later versions may add more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        hex::<1>(version)?;
        let trace_id = hex::<16>(trace)?;
        let parent_id = hex::<8>(parent)?;
        let [flags] = hex::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace, with a new span of this process as the parent.
    pub fn child(&self) -> Self {
        Self {
            parent_id: new_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits (what spans record).
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The context of the request this task serves, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|t| *t).ok()
    }

    /// Runs `fut` with `self` as the current context.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.parent_id),
            self.flags
        )
    }
}

fn new_span_id() -> [u8; 8] {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    while id == [0; 8] {
        rng.fill(&mut id);
    }
    id
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes of lowercase hex (the spec forbids uppercase).
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let t = TraceParent::parse(SAMPLE).expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), SAMPLE);
    }

    #[test]
    fn malformed_or_forbidden_traceparents_are_rejected() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_parent() {
        let t = TraceParent::parse(SAMPLE).expect("valid");
        let child = t.child();
        assert_eq!(child.trace_id, t.trace_id);
        assert_ne!(child.parent_id, t.parent_id);
        let fresh = TraceParent::new_trace();
        assert_eq!(TraceParent::parse(&fresh.to_string()), Some(fresh));
    }

    #[tokio::test]
    async fn the_current_context_is_visible_inside_its_scope_only() {
        let t = TraceParent::new_trace();
        assert_eq!(TraceParent::current(), None);
        assert_eq!(t.scope(async { TraceParent::current() }).await, Some(t));
    }
}
