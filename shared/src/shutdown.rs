//! The one shutdown signal of both binaries: SIGTERM (what an orchestrator
//! sends) or Ctrl-C. If the SIGTERM handler cannot be installed, Ctrl-C
//! still stops the process, and the log says why SIGTERM will not.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            }
        }
    }
    ctrl_c().await;
}

async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        // No signal can stop this process: keep running, as a process with
        // no handler at all would, rather than stop at once.
        tracing::error!(error = %e, "cannot listen for Ctrl-C either");
        std::future::pending::<()>().await;
    }
}
