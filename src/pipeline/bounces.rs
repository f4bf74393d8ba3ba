//! Reading bounces: one raw message (from an MTA's pipe, a file or a
//! maildir) is parsed with `mail-parser`, matched to a delivery by its
//! signed tag ([`crate::domain::dsn`] decides what it is), and recorded in
//! ONE transaction with what it changes: a hard bounce on a `sent` delivery
//! makes it `bounced`, adds an attempt-log entry and tells the contact
//! persons ([`super::escalation`]); a delay adds a log entry; anything else
//! is only recorded. The same raw bytes read twice are recorded once.

use super::escalation::{self, Undeliverable};
use crate::domain::bounce::{BounceAddress, BounceKey};
use crate::domain::delivery::LogOutcome;
use crate::domain::dsn::{self, BounceOutcome, Effect, Report, TagMatch, Tagged, Verdict};
use crate::ops::metrics::Metrics;
use crate::store::bounces::{self as bx, NewBounce, ReportEntry, TaggedDelivery};
use crate::store::{Store, StoreError, ms};
use chrono::{DateTime, Utc};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// Why a message could not be recorded (the MTA keeps it and tries again).
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
}

/// What reading one message did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    pub outcome: BounceOutcome,
    pub delivery_id: Option<String>,
    /// False when the same message was recorded before (nothing changed now).
    pub recorded: bool,
    /// The delivery became `bounced`.
    pub bounced: bool,
    /// `beheer.onbestelbaar` notices planned.
    pub notices: usize,
}

/// Reads bounces into the store.
#[derive(Clone)]
pub struct BounceReader {
    store: Store,
    address: BounceAddress,
    key: BounceKey,
    /// The notices' deadline (`retry.deadline`).
    deadline: Duration,
    metrics: Metrics,
}

impl BounceReader {
    /// A reader for mail sent with `address` and signed with `key`.
    pub fn new(
        store: Store,
        (address, key): (BounceAddress, BounceKey),
        deadline: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            address,
            key,
            deadline,
            metrics,
        }
    }

    /// Reads one raw message; `recipient` is the envelope recipient the MTA
    /// gave, if any (otherwise `Delivered-To`, `X-Original-To`, `To`).
    pub async fn ingest(
        &self,
        raw: &[u8],
        recipient: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Ingested, BounceError> {
        let sha256 = sha256_hex(raw);
        // mail-parser reads anything best-effort; without one header field
        // it is not a message.
        let parsed = MessageParser::default()
            .parse(raw)
            .filter(|m| m.headers_raw().any(|(n, _)| is_field_name(n)))
            .map(|m| self.read(&m, recipient));
        let tag = match &parsed {
            Some(p) => dsn::find_delivery(p.envelope_tag.as_deref(), &p.returned_tags, &self.key),
            None => TagMatch::None,
        };
        let mut tx = self.store.begin().await?;
        let delivery = match &tag {
            TagMatch::Delivery(id) => bx::tagged_delivery(&mut tx, id).await?,
            _ => None,
        };
        let verdict = dsn::judge(
            parsed.as_ref().map(|p| &p.report),
            &tag,
            delivery.as_ref().map(|d| Tagged {
                address: &d.address,
                status: d.status,
            }),
        );
        let new = NewBounce {
            received_at_ms: ms(now),
            sha256: &sha256,
            delivery_id: delivery.as_ref().map(|d| d.id.as_str()),
            outcome: verdict.outcome,
            status: verdict.status.as_deref(),
            diagnostic: verdict.diagnostic.as_deref(),
            detail: &verdict.detail,
            raw,
        };
        let mut done = Ingested {
            outcome: verdict.outcome,
            delivery_id: delivery.as_ref().map(|d| d.id.clone()),
            recorded: bx::insert(&mut tx, &new).await?,
            bounced: false,
            notices: 0,
        };
        if !done.recorded {
            tx.rollback().await.map_err(StoreError::from)?;
            info!(outcome = %verdict.outcome, "bounce read before: nothing changed");
            return Ok(done);
        }
        if let Some(d) = &delivery {
            (done.bounced, done.notices) = self.apply(&mut tx, d, &verdict, now).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        self.metrics.bounce(verdict.outcome.as_str());
        info!(outcome = %verdict.outcome, delivery_id = ?done.delivery_id,
            bounced = done.bounced, notices = done.notices, detail = %verdict.detail, "bounce read");
        Ok(done)
    }

    /// The effects of `verdict` on `d`, in `tx`: whether it bounced, and
    /// how many notices were planned.
    async fn apply(
        &self,
        tx: &mut sqlx::AnyConnection,
        d: &TaggedDelivery,
        verdict: &Verdict,
        now: DateTime<Utc>,
    ) -> Result<(bool, usize), StoreError> {
        let outcome = match verdict.effect {
            Effect::Bounce => LogOutcome::Bounced,
            Effect::Delay => LogOutcome::Delayed,
            Effect::Nothing => return Ok((false, 0)),
        };
        let text = log_text(verdict);
        bx::add_report_entry(
            tx,
            &ReportEntry {
                delivery_id: &d.id,
                at_ms: ms(now),
                outcome,
                enhanced_code: verdict.status.as_deref(),
                smtp_code: verdict.diagnostic.as_deref().and_then(smtp_code),
                detail: &text,
            },
        )
        .await?;
        if outcome != LogOutcome::Bounced || !bx::mark_bounced(tx, &d.id, &text).await? {
            return Ok((false, 0));
        }
        let module = d.kind.as_ref().is_ok_and(|k| k.is_module());
        if !module {
            return Ok((true, 0));
        }
        let failed = Undeliverable {
            delivery_id: &d.id,
            event_id: &d.event_id,
            event_type: &d.event_type,
            address: &d.address,
        };
        let n = escalation::escalate(
            tx,
            failed,
            escalation::REASON_BOUNCED,
            now,
            self.deadline,
            &self.metrics,
        )
        .await?;
        Ok((true, n))
    }

    /// The report, the envelope recipient's tag and the returned headers'
    /// tags of a parsed message.
    fn read(&self, m: &Message<'_>, recipient: Option<&str>) -> Parsed {
        let envelope_tag = match recipient {
            Some(r) => self.address.tag_in(r).map(str::to_owned),
            None => envelope_candidates(m)
                .iter()
                .find_map(|a| self.address.tag_in(a).map(str::to_owned)),
        };
        let mut recipients = Vec::new();
        let mut returned_tags = Vec::new();
        let mut first_text = None;
        for part in &m.parts {
            let (ctype, subtype) = part
                .content_type()
                .map(|c| {
                    (
                        c.ctype().to_ascii_lowercase(),
                        c.subtype().unwrap_or_default().to_ascii_lowercase(),
                    )
                })
                .unwrap_or_else(|| ("text".into(), "plain".into()));
            match (&part.body, ctype.as_str(), subtype.as_str()) {
                (PartType::Message(nested), _, _) => {
                    returned_tags.extend(tags_in_headers(nested.headers_raw()));
                }
                (_, "message", "delivery-status" | "global-delivery-status") => {
                    let text = String::from_utf8_lossy(part.contents());
                    recipients.extend(dsn::parse_delivery_status(&text));
                }
                (PartType::Text(text), _, _) => {
                    returned_tags.extend(tags_in_text(text));
                    if subtype == "plain" && first_text.is_none() {
                        first_text = Some(text.as_ref());
                    }
                }
                _ => {}
            }
        }
        let auto_reply = is_auto_reply(m);
        // An out-of-office text may well quote an address and a number
        // that looks like a status code: only a bounce's text is read so.
        if recipients.is_empty() && !auto_reply {
            recipients.extend(first_text.and_then(dsn::parse_plain_text));
        }
        Parsed {
            report: Report {
                recipients,
                auto_reply,
            },
            envelope_tag,
            returned_tags,
        }
    }

    /// Reads every message in `dir/new`, moving each to `dir/cur` once its
    /// transaction committed. A file another instance moved first is left
    /// to it (the same bytes are recorded once either way).
    pub async fn ingest_maildir(&self, dir: &Path) -> Result<Vec<Ingested>, BounceError> {
        let new = dir.join("new");
        let cur = dir.join("cur");
        let io = |what: &str, p: &Path, e: std::io::Error| {
            BounceError::Io(format!("cannot {what} {}: {e}", p.display()))
        };
        let mut names: Vec<_> = std::fs::read_dir(&new)
            .map_err(|e| io("read", &new, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let from = new.join(&name);
            let raw = match std::fs::read(&from) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &from, e)),
            };
            out.push(self.ingest(&raw, None, Utc::now()).await?);
            let to = cur.join(format!("{}:2,S", name.to_string_lossy()));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("move", &from, e)),
            }
        }
        Ok(out)
    }

    /// Reads `dir` every `interval` until `shutdown` (for `run`).
    pub async fn poll_maildir(
        &self,
        dir: &Path,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(e) = self.ingest_maildir(dir).await {
                warn!(error = %e, "cannot read the bounce maildir; trying again at the next poll");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// What [`BounceReader::read`] found.
struct Parsed {
    report: Report,
    envelope_tag: Option<String>,
    returned_tags: Vec<String>,
}

/// The addresses the message may have been delivered to, most reliable first.
fn envelope_candidates(m: &Message<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["Delivered-To", "X-Original-To", "To"] {
        for (n, v) in m.headers_raw() {
            if n.eq_ignore_ascii_case(name) {
                out.extend(v.split(',').map(|a| {
                    let a = a.trim();
                    match (a.find('<'), a.rfind('>')) {
                        (Some(s), Some(e)) if s < e => a[s + 1..e].to_owned(),
                        _ => a.to_owned(),
                    }
                }));
            }
        }
    }
    out
}

fn tags_in_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("X-Notifier-Tag"))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// A header field name as RFC 5322 allows it (printable, no space or colon).
fn is_field_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// `X-Notifier-Tag:` lines in a text (returned headers, or headers quoted
/// in a plain-text bounce, possibly with `>` or indentation).
fn tags_in_text(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['>', ' ', '\t']);
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("X-Notifier-Tag")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

/// RFC 3834 and the common signs of an automatic answer.
fn is_auto_reply(m: &Message<'_>) -> bool {
    const SUBJECTS: [&str; 8] = [
        "out of office",
        "automatic reply",
        "automatisch antwoord",
        "autoreply",
        "auto-reply",
        "afwezig",
        "abwesend",
        "absence",
    ];
    m.headers_raw().any(|(n, v)| {
        let v = v.trim().to_ascii_lowercase();
        match n.to_ascii_lowercase().as_str() {
            "auto-submitted" => v.starts_with("auto-replied"),
            "x-autoreply" | "x-autorespond" => true,
            "precedence" => v == "auto_reply",
            "subject" => SUBJECTS.iter().any(|s| v.contains(s)),
            _ => false,
        }
    })
}

/// The attempt-log text of a bounce or delay: status and diagnostic,
/// bounded when stored.
fn log_text(v: &Verdict) -> String {
    match (&v.status, &v.diagnostic) {
        (Some(s), Some(d)) => format!("{s} {d}"),
        (Some(s), None) => s.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => v.detail.clone(),
    }
}

/// The SMTP reply code a diagnostic starts with (`550 5.1.1 ...` → 550).
fn smtp_code(diagnostic: &str) -> Option<i64> {
    let word = diagnostic.split_whitespace().next()?;
    (word.len() == 3 && word.starts_with(['4', '5']))
        .then(|| word.parse().ok())
        .flatten()
}

fn sha256_hex(raw: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, raw)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
