//! Graceful stop on SIGTERM or Ctrl-C, shared by every long-running subcommand.

use tracing::info;

/// Resolves every `signalled()` future once SIGTERM or Ctrl-C arrives, or `trigger` is called.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Shutdown {
    pub fn on_signals() -> Shutdown {
        let (tx, _) = tokio::sync::watch::channel(false);
        let shutdown = Shutdown(tx);
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            info!("shutting down");
            s.trigger();
        });
        shutdown
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn signalled(
        &self,
    ) -> impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static {
        let rx = self.0.subscribe();
        let wait = async move {
            let mut rx = rx;
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        futures::FutureExt::shared(Box::pin(wait))
    }
}
