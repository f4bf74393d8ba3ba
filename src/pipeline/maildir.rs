//! Reading messages from a maildir (`new/`, `cur/`), as fetchmail or mbsync
//! fill one: each file in `new/` is handed to a handler, and moved to
//! `cur/` (with the maildir "seen" flag) only once the handler has committed
//! what it means. A message whose handling failed stays in `new/` and is
//! read again on the next pass; so is every message after it in a pass
//! that stopped on a failure (the database is likely down).
//!
//! Two instances reading one maildir may both read a file before either
//! moves it; the handler must then record it once (bounces are keyed by the
//! SHA-256 of their bytes), and the second move finds the file gone, which
//! is not an error.

use std::future::Future;
use std::path::{Path, PathBuf};

/// What a pass over `new/` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Messages handled and moved to `cur/`.
    pub handled: usize,
    /// Messages another reader moved first.
    pub taken_by_another: usize,
}

/// A maildir problem an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error(
        "cannot read the maildir folder {path}: {source}; check bounces.maildir (it needs new/ and cur/) and the worker's permissions"
    )]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move {path} to cur/: {source}; it will be read again (and recorded once)")]
    Move {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Hands every file in `dir/new` (oldest name first) to `handle` and moves
/// it to `dir/cur` once `handle` succeeded. Stops at the first failure of
/// `handle`, returning it with what was done so far.
pub async fn pass<E, F, Fut>(dir: &Path, mut handle: F) -> Result<Pass, PassError<E>>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let new = dir.join("new");
    let cur = dir.join("cur");
    let folder = |path: &Path, source| {
        PassError::Maildir(MaildirError::Folder {
            path: path.to_owned(),
            source,
        })
    };
    if let Err(e) = std::fs::read_dir(&cur) {
        return Err(folder(&cur, e));
    }
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&new)
        .map_err(|e| folder(&new, e))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    let mut done = Pass::default();
    for name in names {
        let path = new.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                done.taken_by_another += 1;
                continue;
            }
            Err(e) => return Err(folder(&path, e)),
        };
        handle(bytes)
            .await
            .map_err(|e| PassError::Handler(e, done))?;
        let mut seen = name.clone();
        if !name.to_string_lossy().contains(":2,") {
            seen.push(":2,S");
        }
        match std::fs::rename(&path, cur.join(seen)) {
            Ok(()) => done.handled += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => done.taken_by_another += 1,
            Err(source) => return Err(PassError::Maildir(MaildirError::Move { path, source })),
        }
    }
    Ok(done)
}

/// Runs a [`pass`] over `dir` every `every` until `shutdown`; a failed pass
/// is logged (once per outage) and tried again at the next tick.
pub async fn poll<E, F, Fut>(
    dir: PathBuf,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut handle: F,
) where
    E: std::fmt::Display,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut failing = false;
    loop {
        match pass(&dir, &mut handle).await {
            Ok(p) => {
                if failing {
                    tracing::info!("bounce maildir readable again");
                }
                failing = false;
                if p.handled > 0 {
                    tracing::info!(
                        messages = p.handled,
                        "bounce messages read from the maildir"
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                match e {
                    PassError::Maildir(e) => tracing::warn!(error = %e, "bounce maildir"),
                    PassError::Handler(e, _) => tracing::warn!(error = %e,
                        "cannot store a bounce message: it stays in the maildir and is read again"),
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Why a pass stopped.
#[derive(Debug)]
pub enum PassError<E> {
    /// The folder could not be read or a file not moved.
    Maildir(MaildirError),
    /// The handler failed on a message (it stays in `new/`); what the pass
    /// had done before it.
    Handler(E, Pass),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("new")).unwrap();
        std::fs::create_dir_all(d.path().join("cur")).unwrap();
        for (name, body) in files {
            std::fs::write(d.path().join("new").join(name), body).unwrap();
        }
        d
    }

    fn names(dir: &Path, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn handled_messages_move_to_cur_in_name_order() {
        let d = maildir(&[("2.b", "second"), ("1.a", "first"), (".tmp", "hidden")]);
        let mut seen = Vec::new();
        let p = pass(d.path(), |b| {
            seen.push(String::from_utf8(b).unwrap());
            async { Ok::<(), ()>(()) }
        })
        .await
        .unwrap();
        assert_eq!(
            p,
            Pass {
                handled: 2,
                taken_by_another: 0
            }
        );
        assert_eq!(seen, ["first", "second"]);
        assert_eq!(names(d.path(), "new"), [".tmp"]);
        assert_eq!(names(d.path(), "cur"), ["1.a:2,S", "2.b:2,S"]);
    }

    #[tokio::test]
    async fn a_failed_message_and_those_after_it_stay_in_new() {
        let d = maildir(&[("1", "ok"), ("2", "fails"), ("3", "later")]);
        let r = pass(d.path(), |b| async move {
            if b == b"fails" {
                Err("database down")
            } else {
                Ok(())
            }
        })
        .await;
        match r {
            Err(PassError::Handler(e, p)) => {
                assert_eq!(e, "database down");
                assert_eq!(p.handled, 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(names(d.path(), "new"), ["2", "3"]);
        assert_eq!(names(d.path(), "cur"), ["1:2,S"]);
    }

    #[tokio::test]
    async fn a_missing_folder_is_an_error_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let r = pass(&d.path().join("nope"), |_| async { Ok::<(), ()>(()) }).await;
        let Err(PassError::Maildir(e)) = r else {
            panic!("{r:?}")
        };
        assert!(e.to_string().contains("bounces.maildir"), "{e}");
        assert!(
            !d.path().join("nope").exists(),
            "nothing created at a wrong path"
        );
    }
}
