//! `run`, `migrate` and `dispatch --until-idle`.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// `notifier run`: until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing in-flight work");
        stop.cancel();
    });
    // Signals are watched from before the build, so a SIGTERM during a slow
    // start-up (a database that takes its time) ends in a clean stop rather
    // than the default kill.
    let app = app::App::build(settings).await?;
    app.run(shutdown)
        .await
        .map_err(|e| CliError::Dependency(e.to_string()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `notifier migrate`.
pub async fn migrate(settings: Settings) -> Result<(), CliError> {
    let store = app::open_store(&settings, true).await?;
    store.close().await;
    println!("database is up to date");
    Ok(())
}

/// `notifier dispatch --until-idle`.
pub async fn dispatch_until_idle(settings: Settings) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let d = app::dispatcher(&settings, &store, &Metrics::new())?;
    let s = d.run_until_idle().await?;
    store.close().await;
    println!(
        "sent {}, retry scheduled {}, failed {}, cancelled {}",
        s.sent, s.retried, s.failed, s.cancelled
    );
    if d.breaker().state() == crate::mail::relay::CircuitState::Open {
        return Err(CliError::Dependency(format!(
            "the relay is unusable: {}",
            d.breaker().last_reason().unwrap_or_default()
        )));
    }
    Ok(())
}
