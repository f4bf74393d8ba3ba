//! Wiring: [`App`] builds the store, templates, mailer, loops and the HTTP
//! listener from [`Settings`] and runs them together until a
//! [`CancellationToken`] is cancelled (`notifier run`, and the tests); the
//! free functions build the parts a short command needs.

use crate::broker::consumer::Consumer;
use crate::config::Settings;
use crate::domain::event::ValidationRules;
use crate::mail::Mailer;
use crate::mail::relay::{Breaker, RateLimiter};
use crate::ops::health::Health;
use crate::ops::http::{OpsState, Relay, router};
use crate::ops::metrics::Metrics;
use crate::pipeline::bounces::BounceReader;
use crate::pipeline::dispatch::{DispatchConfig, Dispatcher};
use crate::pipeline::ingest::Ingestor;
use crate::pipeline::wake::{self, DueSignal};
use crate::store::{RunLock, Store, deliveries, events};
use crate::templates::Templates;
use std::net::SocketAddr;
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
    let url = settings.database.url.expose_secret();
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
        url.to_owned()
    };
    let store = Store::connect(&url, settings.database.max_connections)
        .await
        .map_err(|e| {
            StartError::Dependency(format!(
                "cannot open the database at database.url ({}): {e}; check database.url (a new installation starts with `notifier migrate`)",
                settings.database.url
            ))
        })?;
    if migrate {
        store.migrate().await.map_err(|e| match e {
            // A configuration mistake (the runtime role's URL), not an outage.
            e @ crate::store::StoreError::MayNotMigrate(_) => StartError::Config(e.to_string()),
            e => StartError::Dependency(e.to_string()),
        })?;
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

/// The relay (or the outbox) of `smtp.*`. Refuses (exit 2) credentials
/// that would travel without verified TLS and an unusable `smtp.ca_file`:
/// every command that sends builds its mailer here.
pub fn mailer(settings: &Settings) -> Result<Mailer, StartError> {
    let options = settings
        .smtp
        .pool_options()
        .map_err(|e| StartError::Config(e.to_string()))?;
    if options.accept_invalid_certs && settings.smtp.target().is_some() {
        warn!(
            "smtp.danger_accept_invalid_certs = true: the relay's certificate is not checked, so anyone on the path can read the mail; trust the relay's CA with smtp.ca_file instead"
        );
    }
    Ok(Mailer::new(
        settings.smtp.target(),
        &settings.smtp.outbox_dir,
        options,
    ))
}

/// A dispatcher for `store`.
pub fn dispatcher(
    settings: &Settings,
    store: &Store,
    metrics: &Metrics,
) -> Result<Dispatcher, StartError> {
    let templates = Arc::new(load_templates(settings)?);
    let mailer = mailer(settings)?;
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
        bounce_tagging: settings.smtp.bounce_tagging(),
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

/// The service, built and bound but not yet running: `notifier run` and the
/// tests build it with [`App::build`], read [`App::http_addr`], then hand it
/// a [`CancellationToken`] in [`App::run`].
pub struct App {
    /// Held until [`App::run`] returns: one `run` per SQLite file.
    _lock: RunLock,
    store: Store,
    metrics: Metrics,
    health: Arc<Health>,
    dispatcher: Dispatcher,
    consumer: Consumer,
    listener: TcpListener,
    http_addr: SocketAddr,
    dispatch_enabled: bool,
    grace: Duration,
    stuck_after: Duration,
    /// Reads `bounces.maildir` every `bounces.poll_interval`, when set.
    bounce_poll: Option<BouncePoll>,
    /// `smtp.outbox_dir` when there is no relay (`smtp.url` empty).
    outbox: Option<String>,
    /// `retention.keep` and `retention.interval` (zero: no periodic purge).
    retention: crate::config::RetentionSettings,
}

/// The maildir `run` reads bounces from.
struct BouncePoll {
    reader: BounceReader,
    dir: std::path::PathBuf,
    interval: Duration,
}

/// The maildir poll of `settings`, when `bounces.maildir` is set.
fn bounce_poll(
    settings: &Settings,
    store: &Store,
    metrics: &Metrics,
) -> Result<Option<BouncePoll>, StartError> {
    if settings.bounces.maildir.is_empty() {
        return Ok(None);
    }
    let tagging = settings.smtp.bounce_tagging().ok_or_else(|| {
        StartError::Config(
            "bounces.maildir is set but smtp.bounce_address and smtp.bounce_key are not: bounces cannot be matched to deliveries".into(),
        )
    })?;
    Ok(Some(BouncePoll {
        reader: BounceReader::new(
            store.clone(),
            tagging,
            settings.retry.deadline.0,
            metrics.clone(),
        ),
        dir: settings.bounces.maildir.clone().into(),
        interval: settings.bounces.poll_interval.0,
    }))
}

/// A failure while running, after a successful [`App::build`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP server (`/healthz`, `/readyz`, `/metrics`) stopped with an error.
    #[error("the HTTP server on http.listen stopped: {0}")]
    Http(#[source] std::io::Error),
    /// A task of the service panicked or was aborted.
    #[error("the {task} task ended abnormally: {source}")]
    Task {
        /// Which task: `gauge sampler` or `HTTP server`.
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl App {
    /// Takes the run lock, opens (and with `database.migrate_on_start`
    /// migrates) the store, builds the dispatcher and the consumer and binds
    /// `http.listen`. Nothing runs yet: the broker is first contacted in
    /// [`App::run`].
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        // Transport security first: a refused setting touches nothing.
        let config = |e: crate::config::ConfigError| StartError::Config(e.to_string());
        settings.smtp.check_transport_security().map_err(config)?;
        let amqp_tls = crate::broker::tls_config(&settings.amqp).map_err(config)?;
        let lock = RunLock::acquire(settings.database.url.expose_secret())
            .map_err(|e| StartError::Config(e.to_string()))?;
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
        .with_tls(amqp_tls)
        .with_due_signal(DueSignal::new(dispatcher.waker(), store.clone()));
        let listen = settings.http.listen;
        let cannot_bind = |e| StartError::Config(format!("http.listen {listen}: cannot bind: {e}"));
        let listener = TcpListener::bind(listen).await.map_err(cannot_bind)?;
        let http_addr = listener.local_addr().map_err(cannot_bind)?;
        let bounce_poll = bounce_poll(&settings, &store, &metrics)?;
        Ok(App {
            _lock: lock,
            store,
            metrics,
            health,
            dispatcher,
            consumer,
            listener,
            http_addr,
            dispatch_enabled: settings.dispatch.enabled,
            grace: settings.shutdown.grace.0,
            stuck_after: settings.dispatch.stuck_after.0,
            bounce_poll,
            outbox: settings
                .smtp
                .target()
                .is_none()
                .then(|| settings.smtp.outbox_dir.clone()),
            retention: settings.retention.clone(),
        })
    }

    /// Where HTTP listens (the bound address: `http.listen` may say port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Runs consume, dispatch and HTTP until `shutdown` is cancelled, then
    /// lets in-flight sends finish within `shutdown.grace`, releases the
    /// leases and closes the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        // The run lock stays in `self`, held until `run` returns.
        let store = self.store;
        let dispatcher = self.dispatcher;
        let ops = OpsState {
            store: store.clone(),
            health: self.health,
            breaker: dispatcher.breaker(),
            metrics: self.metrics.clone(),
            relay: if self.outbox.is_some() {
                Relay::Outbox
            } else {
                Relay::Smtp
            },
        };
        let http = tokio::spawn(
            axum::serve(self.listener, router(ops))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        let sampler = tokio::spawn(sample_gauges(
            store.clone(),
            self.metrics,
            dispatcher.breaker(),
            self.stuck_after,
            shutdown.clone(),
        ));
        info!(http = %self.http_addr, backend = ?store.backend(), "notifier running");
        if let Some(dir) = &self.outbox
            && self.dispatch_enabled
        {
            // The default setting; fine for a demo, a silent disaster in production.
            warn!(
                outbox_dir = %dir,
                "no smtp.url: mails are written to {dir} as .eml files and recorded as sent; nothing reaches a mailbox"
            );
        }

        let consume = self.consumer.run(shutdown.clone());
        let dispatch = async {
            if self.dispatch_enabled {
                let listen = wake::listen(store.clone(), dispatcher.waker(), shutdown.clone());
                tokio::join!(dispatcher.run(shutdown.clone(), self.grace), listen);
            } else {
                info!("dispatch.enabled = false: ingesting only, nothing is sent by this instance");
            }
        };
        let bounces = async {
            if let Some(b) = &self.bounce_poll {
                b.reader
                    .poll_maildir(&b.dir, b.interval, shutdown.clone())
                    .await;
            }
        };
        let retention = async {
            let r = &self.retention;
            if !r.interval.0.is_zero() {
                crate::pipeline::retention::run_periodic(
                    store.clone(),
                    r.keep.0,
                    r.keep.to_string(),
                    r.interval.0,
                    shutdown.clone(),
                )
                .await;
            }
        };
        tokio::join!(consume, dispatch, bounces, retention);
        let sampled = sampler.await.map_err(|source| RunError::Task {
            task: "gauge sampler",
            source,
        });
        let served = match http.await {
            Ok(served) => served.map_err(RunError::Http),
            Err(source) => Err(RunError::Task {
                task: "HTTP server",
                source,
            }),
        };
        store.close().await;
        sampled.and(served)?;
        info!("notifier stopped cleanly");
        Ok(())
    }
}

/// Refreshes the gauges that come from the database, including the
/// periodic reconciliation (`notifier_stuck_events`, the same query as
/// `notifier check` with `dispatch.stuck_after` as its threshold).
/// `r`'s value, or `None` with a warning naming the gauge: a query that
/// fails (a permission missing for the runtime role, say) must show.
fn logged<T>(gauge: &str, r: Result<T, crate::store::StoreError>) -> Option<T> {
    r.map_err(
        |e| warn!(error = %e, gauge, "cannot sample a database gauge; it keeps its last value"),
    )
    .ok()
}

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
                if let Some((n, oldest)) =
                    logged("pending", deliveries::pending_summary(&mut c).await)
                {
                    metrics.deliveries_pending.set(n);
                    let age = oldest
                        .map(|o| (chrono::Utc::now().timestamp_millis() - o).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics.oldest_pending_age.set(age);
                }
                let now_ms = chrono::Utc::now().timestamp_millis();
                if let Some(due) = logged(
                    "dispatch lag",
                    deliveries::oldest_overdue(&mut c, now_ms).await,
                ) {
                    let lag = due
                        .map(|d| (now_ms - d).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics.dispatch_lag.set(lag);
                }
                if let Some(q) = logged("quarantine", events::open_quarantine_count(&mut c).await) {
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
