//! The real `notifier` binary as a test runs it: one command
//! ([`cli`]), a `notifier run` process ([`RunProcess`]), and what their
//! output says.

use super::{WAIT, http_get};
use notifier::config::Settings;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Runs the `notifier` binary with the test's settings in the environment.
pub fn cli(settings: &Settings, args: &[&str]) -> Output {
    cli_env(settings, args, &[])
}

/// [`cli`] with extra environment variables on top of the test's settings.
pub fn cli_env(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(args)
        .env(
            "NOTIFIER_DATABASE__URL",
            settings.database.url.expose_secret(),
        )
        .env("NOTIFIER_SMTP__URL", settings.smtp.url.url())
        .env("NOTIFIER_SMTP__OUTBOX_DIR", &settings.smtp.outbox_dir)
        .env("NOTIFIER_SMTP__MAX_RATE", "0")
        .envs(env.iter().copied())
        .output()
        .expect("run notifier")
}

/// A command's standard output.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's standard output as JSON (`--format json`).
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(o), stderr(o)))
}

/// Asserts that the command exited 0, showing what it printed if not.
#[track_caller]
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\n{}{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `notifier run` subprocess (the real binary) with its own HTTP port and a
/// log file. Dropping it kills the process, so a failed test leaves none behind.
pub struct RunProcess {
    pub child: std::process::Child,
    pub http: std::net::SocketAddr,
    pub log: std::path::PathBuf,
}

impl RunProcess {
    /// Starts `notifier --config CONFIG run` with `env` on top.
    pub fn spawn(config: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_bin(Path::new(env!("CARGO_BIN_EXE_notifier")), config, name, env)
    }

    /// [`RunProcess::spawn`] with another build of the binary (e.g. release).
    pub fn spawn_bin(bin: &Path, config: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = config.with_file_name(format!("{name}.log"));
        let child = std::process::Command::new(bin)
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("NOTIFIER_HTTP__LISTEN", http.to_string())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Self { child, http, log }
    }

    /// Waits until `/readyz` says it consumes from the queue.
    pub async fn wait_consuming(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = http_get(&format!("http://{}/readyz", self.http))
                .await
                .unwrap_or_default();
            if body.contains("\"consuming\"") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("notifier run exited with {status}: {}", self.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifier run never consumed: {body}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.http))
            .await
            .unwrap_or_default()
    }

    /// SIGKILL: no shutdown, leases and unacked messages left behind.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        ok && self.child.wait().unwrap().success()
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
