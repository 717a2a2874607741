//! The one shutdown signal of both binaries: SIGTERM (what an orchestrator
//! sends) or Ctrl-C. If the SIGTERM handler cannot be installed, Ctrl-C
//! still stops the process, and the log says why SIGTERM will not.
//!
//! [`install`] registers the handlers at once, before the process starts
//! anything, so a SIGTERM that arrives while it is still starting (its
//! listener already bound, its broker connecting) is kept and stops it
//! gracefully once it runs, instead of killing it by the default action.

use std::future::Future;

/// Installs the handlers now; the future resolves on the first SIGTERM or
/// SIGINT (Ctrl-C) received from now on.
pub fn install() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            })
            .ok();
        let interrupt = signal(SignalKind::interrupt())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGINT"))
            .ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut term), None) => drop(term.recv().await),
                (None, Some(mut interrupt)) => drop(interrupt.recv().await),
                (None, None) => ctrl_c().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c()
    }
}

async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        // No signal can stop this process: keep running, as a process with
        // no handler at all would, rather than stop at once.
        tracing::error!(error = %e, "cannot listen for Ctrl-C either");
        std::future::pending::<()>().await;
    }
}
