//! The one telemetry seam of both binaries: readable logs on a terminal,
//! JSON lines otherwise, the level from `RUST_LOG` (default `info`).
//! Spans carry `execution.id`, `request.id` and `trace_id` (the W3C trace
//! id, see [`crate::trace`]).
//!
//! Whatever `RUST_LOG` says, `tokio_postgres` is capped at `info`: at
//! `debug` it logs every statement's parameters, which are raw inputs that
//! the masking function never saw. Raising it needs a code change here,
//! on purpose. [`ALWAYS_CAPPED`] lists such caps.
//!
//! OpenTelemetry plugs in here: build its `tracing-opentelemetry` layer
//! and pass it as `extra` to [`init_with`]; it sees the same spans, and
//! the `trace_id` the API and worker record is the id it would export.

use std::io::IsTerminal;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Targets (and their children) held at a level whatever `RUST_LOG`
/// asks, and why.
pub const ALWAYS_CAPPED: &[(&str, Level)] = &[
    // Statement parameters (unmasked inputs) are logged at debug.
    ("tokio_postgres", Level::INFO),
];

/// Installs the global subscriber once; later calls are no-ops (tests).
pub fn init(service: &str) {
    init_with(service, None::<Box<dyn Layer<_> + Send + Sync>>);
}

/// [`init`], with one more layer (the OpenTelemetry slot).
pub fn init_with<L>(service: &str, extra: Option<L>)
where
    L: Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>>
        + Send
        + Sync,
{
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(extra)
        .with(caps());
    let result = if std::io::stderr().is_terminal() {
        registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init()
    } else {
        registry.with(json_layer()).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

fn json_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(std::io::stderr)
}

/// The filter for a `RUST_LOG` value (default `info`).
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// [`ALWAYS_CAPPED`] as a global filter: it vetoes what `RUST_LOG` lets
/// through, so no directive (however specific) can lift a cap.
pub fn caps() -> FilterFn<impl Fn(&Metadata<'_>) -> bool + Clone> {
    filter_fn(|meta: &Metadata<'_>| {
        ALWAYS_CAPPED.iter().all(|(target, level)| {
            let t = meta.target();
            let under = t == *target
                || t.strip_prefix(target)
                    .is_some_and(|rest| rest.starts_with("::"));
            !under || meta.level() <= level
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged_under(rust_log: &str) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter(Some(rust_log)))
            .with(caps())
            .with(fmt::layer().with_writer(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "executing statement with parameters: [\"secret input\"]");
            tracing::debug!(target: "llmq_api", "a debug line of ours");
            tracing::info!(target: "tokio_postgres::connection", "an info line of tokio_postgres");
        });
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn debug_logging_never_shows_statement_parameters() {
        for rust_log in [
            "debug",
            "trace",
            "tokio_postgres=trace",
            "debug,tokio_postgres=debug",
        ] {
            let logged = logged_under(rust_log);
            assert!(!logged.contains("secret input"), "{rust_log}: {logged}");
            assert!(
                logged.contains("an info line of tokio_postgres"),
                "{rust_log}: {logged}"
            );
        }
        assert!(logged_under("debug").contains("a debug line of ours"));
    }
}
