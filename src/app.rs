//! Wiring: builds the store, templates, mailer and loops from [`Settings`] and
//! runs them together until shutdown (`notifier run`), or builds the parts a
//! short command needs.

use crate::broker::consumer::Consumer;
use crate::config::Settings;
use crate::domain::event::ValidationRules;
use crate::mail::Mailer;
use crate::mail::relay::{Breaker, RateLimiter};
use crate::ops::health::Health;
use crate::ops::http::{OpsState, router};
use crate::ops::metrics::Metrics;
use crate::pipeline::dispatch::{DispatchConfig, Dispatcher};
use crate::pipeline::ingest::Ingestor;
use crate::pipeline::wake::{self, DueSignal};
use crate::store::{RunLock, Store, deliveries, events};
use crate::templates::Templates;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A failure at start, sorted by the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Exit 2: fix the configuration or the templates.
    #[error("{0}")]
    Config(String),
    /// Exit 3: a dependency is not there.
    #[error("{0}")]
    Dependency(String),
}

/// Opens the store. With `migrate` (`run`, `migrate`, `demo`) a missing
/// SQLite file is created and migrations are applied; without it (every
/// short command) the database must exist and be current, so a command
/// pointed at the wrong place stops instead of creating an empty database.
pub async fn open_store(settings: &Settings, migrate: bool) -> Result<Store, StartError> {
    let url = &settings.database.url;
    if !migrate
        && let Some(path) = crate::store::sqlite_path(url)
        && !std::path::Path::new(&path).exists()
    {
        return Err(StartError::Config(format!(
            "the database file {path} does not exist: check database.url, or run `notifier migrate` to create it"
        )));
    }
    let url = if !migrate && url.starts_with("sqlite:") && !url.contains("mode=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rw")
    } else {
        url.clone()
    };
    let store = Store::connect(&url, settings.database.max_connections)
        .await
        .map_err(|e| {
            StartError::Dependency(format!(
                "cannot open the database at database.url ({}): {e}; check database.url (a new installation starts with `notifier migrate`)",
                crate::config::redact_url(&settings.database.url)
            ))
        })?;
    if migrate {
        store
            .migrate()
            .await
            .map_err(|e| StartError::Dependency(e.to_string()))?;
    } else {
        store
            .check_schema()
            .await
            .map_err(|e| StartError::Config(e.to_string()))?;
    }
    Ok(store)
}

/// Compiles the templates from `mail.templates_dir` or the built-in ones.
pub fn load_templates(settings: &Settings) -> Result<Templates, StartError> {
    let dir =
        (!settings.mail.templates_dir.is_empty()).then(|| Path::new(&settings.mail.templates_dir));
    Templates::load(dir).map_err(|e| StartError::Config(e.to_string()))
}

/// The validation rules from the settings.
pub fn validation_rules(settings: &Settings) -> ValidationRules {
    ValidationRules {
        allowed_link_hosts: settings.allowed_link_hosts(),
    }
}

/// An ingestor for `store`.
pub fn ingestor(settings: &Settings, store: &Store, metrics: &Metrics) -> Ingestor {
    Ingestor::new(
        store.clone(),
        validation_rules(settings),
        settings.retry.deadline.0,
        settings.recipients.late_directory_window.0,
        metrics.clone(),
    )
}

/// A dispatcher for `store`.
pub fn dispatcher(
    settings: &Settings,
    store: &Store,
    metrics: &Metrics,
) -> Result<Dispatcher, StartError> {
    let templates = Arc::new(load_templates(settings)?);
    let mailer = Mailer::new(
        settings.smtp.target(),
        &settings.smtp.outbox_dir,
        settings.smtp.pool_options(),
    );
    let cfg = DispatchConfig {
        from: settings.smtp.from.clone(),
        portal_url: settings.portal.url.clone(),
        rules: validation_rules(settings),
        retry: settings.retry_policy(),
        batch_size: settings.dispatch.batch_size,
        lease: settings.dispatch.lease.0,
        idle_poll: settings.dispatch.idle_poll.0,
        concurrency: settings.smtp.concurrency,
        breaker_open_for: settings.breaker.open_for.0,
        deadline: settings.retry.deadline.0,
    };
    Ok(Dispatcher::new(
        store.clone(),
        templates,
        Arc::new(mailer),
        cfg,
        metrics.clone(),
        Arc::new(Breaker::new(
            settings.breaker.failure_threshold,
            settings.breaker.open_for.0,
        )),
        Arc::new(RateLimiter::new(settings.smtp.max_rate)),
    ))
}

/// A running service's handles (for tests): where HTTP listens.
pub struct Running {
    pub http_addr: std::net::SocketAddr,
}

/// Runs consume, dispatch and HTTP until `shutdown` is cancelled.
/// `ready` receives the bound HTTP address once everything started.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    let _lock =
        RunLock::acquire(&settings.database.url).map_err(|e| StartError::Config(e.to_string()))?;
    let store = open_store(&settings, settings.database.migrate_on_start).await?;
    let metrics = Metrics::new();
    let health = Arc::new(Health::new());
    let dispatcher = dispatcher(&settings, &store, &metrics)?;
    let consumer = Consumer::new(
        settings.amqp.clone(),
        ingestor(&settings, &store, &metrics),
        metrics.clone(),
        health.clone(),
    )
    .with_due_signal(DueSignal::new(dispatcher.waker(), store.clone()));

    let listener = TcpListener::bind(settings.http.listen).await.map_err(|e| {
        StartError::Config(format!(
            "http.listen {}: cannot bind: {e}",
            settings.http.listen
        ))
    })?;
    let http_addr = listener.local_addr().context("reading the bound address")?;
    let ops = OpsState {
        store: store.clone(),
        health: health.clone(),
        breaker: dispatcher.breaker(),
        metrics: metrics.clone(),
    };
    let http = tokio::spawn(
        axum::serve(listener, router(ops))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let sampler = tokio::spawn(sample_gauges(
        store.clone(),
        metrics.clone(),
        dispatcher.breaker(),
        settings.dispatch.stuck_after.0,
        shutdown.clone(),
    ));
    info!(http = %http_addr, backend = ?store.backend(), "notifier running");
    if let Some(tx) = ready {
        let _ = tx.send(Running { http_addr });
    }

    let grace = settings.shutdown.grace.0;
    let consume = consumer.run(shutdown.clone());
    let dispatch = async {
        if settings.dispatch.enabled {
            let listen = wake::listen(store.clone(), dispatcher.waker(), shutdown.clone());
            tokio::join!(dispatcher.run(shutdown.clone(), grace), listen);
        } else {
            info!("dispatch.enabled = false: ingesting only, nothing is sent by this instance");
        }
    };
    tokio::join!(consume, dispatch);
    let _ = sampler.await;
    let _ = http.await;
    store.close().await;
    info!("notifier stopped cleanly");
    Ok(())
}

/// Refreshes the gauges that come from the database, including the
/// periodic reconciliation (`notifier_stuck_events`, the same query as
/// `notifier check` with `dispatch.stuck_after` as its threshold).
async fn sample_gauges(
    store: Store,
    metrics: Metrics,
    breaker: Arc<Breaker>,
    stuck_after: Duration,
    shutdown: CancellationToken,
) {
    loop {
        metrics.circuit_open.set(i64::from(
            breaker.state() == crate::mail::relay::CircuitState::Open,
        ));
        match store.pool().acquire().await {
            Ok(mut c) => {
                if let Ok((n, oldest)) = deliveries::pending_summary(&mut c).await {
                    metrics.deliveries_pending.set(n);
                    let age = oldest
                        .map(|o| (chrono::Utc::now().timestamp_millis() - o).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics.oldest_pending_age.set(age);
                }
                let now_ms = chrono::Utc::now().timestamp_millis();
                if let Ok(due) = deliveries::oldest_overdue(&mut c, now_ms).await {
                    let lag = due
                        .map(|d| (now_ms - d).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics.dispatch_lag.set(lag);
                }
                if let Ok(q) = events::open_quarantine_count(&mut c).await {
                    metrics.quarantined.set(q);
                }
                let now = chrono::Utc::now().timestamp_millis();
                match deliveries::stuck_events(&mut c, now, stuck_after.as_millis() as i64).await {
                    Ok(stuck) => {
                        metrics.stuck_events.set(stuck.len() as i64);
                    }
                    Err(e) => warn!(error = %e, "reconciliation query failed"),
                }
            }
            Err(e) => warn!(error = %e, "cannot sample database gauges"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = shutdown.cancelled() => break,
        }
    }
}
