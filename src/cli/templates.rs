//! `templates check | preview | render | send-test`: the template set in use
//! (built in, or `mail.templates_dir`) against the sample data of
//! [`crate::templates::samples`], or one event an operator hands in.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::MailKind;
use crate::domain::event::{EventBody, parse_event};
use crate::domain::recipients::{Addressee, Rules};
use crate::mail::context::{self, Common};
use crate::mail::message;
use crate::templates::samples::{self, SampleMail, Variant};
use crate::templates::{RenderedMail, Templates, lint};
use chrono::NaiveDate;
use serde_json::Value;
use std::path::Path;

/// Which part `templates render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Eml,
    Html,
    Text,
}

/// The address sample mails are built for (preview and render).
const SAMPLE_TO: &str = "p.jansen@fysio-noord.example";

fn kind_arg(kind: &str) -> Result<MailKind, CliError> {
    MailKind::parse(kind).ok_or_else(|| {
        let all: Vec<&str> = MailKind::all().iter().map(|k| k.as_str()).collect();
        CliError::Usage(format!(
            "unknown mail kind {kind:?}; one of: {}",
            all.join(", ")
        ))
    })
}

fn today_arg(today: Option<NaiveDate>) -> NaiveDate {
    today.unwrap_or_else(|| crate::domain::calendar::amsterdam_date(chrono::Utc::now()))
}

fn samples_of(
    settings: &Settings,
    today: NaiveDate,
    v: Variant,
) -> Result<Vec<SampleMail>, CliError> {
    samples::sample_mails(
        &app::validation_rules(settings),
        &settings.portal.url,
        today,
        v,
    )
    .map_err(CliError::Config)
}

/// Renders and lints every kind in every variant; (kind, variant, problem) per failure.
pub fn check_all(
    templates: &Templates,
    settings: &Settings,
    today: NaiveDate,
) -> Result<Vec<(MailKind, Variant, String)>, CliError> {
    let mut failures = Vec::new();
    for v in Variant::ALL {
        for s in samples_of(settings, today, v)? {
            let url = s.context["url"].as_str().unwrap_or_default().to_owned();
            match templates.render(s.kind, &s.context) {
                Err(e) => failures.push((s.kind, v, e.to_string())),
                Ok(mail) => failures.extend(lint(&mail, &url).into_iter().map(|p| (s.kind, v, p))),
            }
        }
    }
    Ok(failures)
}

/// `notifier templates check`.
pub fn check(settings: &Settings) -> Result<(), CliError> {
    let templates = app::load_templates(settings)?;
    let failures = check_all(&templates, settings, samples::sample_today())?;
    let first = MailKind::all()[0];
    println!("templates: {}", templates.provenance(first).source);
    for kind in MailKind::all() {
        let mine: Vec<_> = failures.iter().filter(|(k, _, _)| *k == kind).collect();
        let version = &templates.provenance(kind).version;
        if mine.is_empty() {
            println!("ok    {:<42} {version}", kind.as_str());
        }
        for (_, v, e) in mine {
            println!(
                "FAIL  {:<42} {version}  [{}] {e}",
                kind.as_str(),
                v.as_str()
            );
        }
    }
    if failures.is_empty() {
        println!(
            "all {} templates render in strict mode with the sample, minimal and hostile data",
            MailKind::all().len()
        );
        Ok(())
    } else {
        Err(CliError::Problem(format!(
            "{} template checks failed",
            failures.len()
        )))
    }
}

fn eml(settings: &Settings, mail: &RenderedMail, kind: MailKind) -> Result<Vec<u8>, CliError> {
    message::build(
        &settings.smtp.from,
        SAMPLE_TO,
        mail,
        &format!("preview.{}@notifier", kind.as_str()),
    )
    .map_err(|e| CliError::Problem(e.to_string()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
}

/// `notifier templates preview --output DIR [--today DATE]`.
pub fn preview(
    settings: &Settings,
    output: &Path,
    today: Option<NaiveDate>,
) -> Result<(), CliError> {
    let templates = app::load_templates(settings)?;
    std::fs::create_dir_all(output)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", output.display())))?;
    let today = today.unwrap_or_else(samples::sample_today);
    let mut written = 0;
    for v in [Variant::Sample, Variant::Hostile] {
        for s in samples_of(settings, today, v)? {
            let mail = templates.render(s.kind, &s.context)?;
            let base = format!("{}{}", s.kind.as_str(), v.suffix());
            write(&output.join(format!("{base}.html")), mail.html.as_bytes())?;
            write(&output.join(format!("{base}.txt")), mail.text.as_bytes())?;
            write(
                &output.join(format!("{base}.eml")),
                &eml(settings, &mail, s.kind)?,
            )?;
            written += 1;
        }
    }
    println!(
        "{written} mails ({} kinds, sample and hostile data, as on {today}) written to {}",
        MailKind::all().len(),
        output.display()
    );
    Ok(())
}

/// Options of `templates render`.
#[derive(Debug)]
pub struct RenderArgs {
    pub kind: String,
    pub event: std::path::PathBuf,
    pub part: Part,
    pub today: Option<NaiveDate>,
    pub praktijk: Option<String>,
}

/// `notifier templates render KIND --event FILE [--part eml|html|text]`.
pub fn render(settings: &Settings, args: RenderArgs) -> Result<(), CliError> {
    let kind = kind_arg(&args.kind)?;
    let templates = app::load_templates(settings)?;
    let raw = super::input::read_input(&args.event)?;
    let v: Value = serde_json::from_str(raw.trim()).map_err(|e| {
        CliError::Usage(format!(
            "{}: not one JSON object ({e}); give a CloudEvent, or one `events` or `deliveries` line of `notifier export`",
            args.event.display()
        ))
    })?;
    let today = today_arg(args.today);
    let ctx = render_context(settings, kind, &v, today, args.praktijk.as_deref())?;
    let mail = templates.render(kind, &ctx)?;
    let out = match args.part {
        Part::Html => mail.html.into_bytes(),
        Part::Text => mail.text.into_bytes(),
        Part::Eml => eml(settings, &mail, kind)?,
    };
    std::io::Write::write_all(&mut std::io::stdout(), &out)
        .map_err(|e| CliError::Problem(format!("cannot write to standard output: {e}")))
}

/// The context of `kind` from a CloudEvent, an exported event (its
/// `payload`) or an exported delivery (its `notice` and `rule`).
fn render_context(
    settings: &Settings,
    kind: MailKind,
    v: &Value,
    today: NaiveDate,
    praktijk: Option<&str>,
) -> Result<Value, CliError> {
    let portal = settings.portal.url.as_str();
    let event = match v.get("table").and_then(Value::as_str) {
        Some("events") => {
            let payload = v["payload"].as_str().unwrap_or_default();
            serde_json::from_str(payload).map_err(|e| {
                CliError::Usage(format!("the exported event's payload is not JSON: {e}"))
            })?
        }
        Some("deliveries") => return delivery_context(settings, kind, v, today, praktijk),
        Some(other) => {
            return Err(CliError::Usage(format!(
                "an export line of table {other}: give an `events` or `deliveries` line"
            )));
        }
        None => v.clone(),
    };
    let MailKind::Module(t) = kind else {
        return Err(CliError::Usage(format!(
            "{} is a notice: its data is the delivery's notice; give its `deliveries` line of `notifier export`",
            kind.as_str()
        )));
    };
    let parsed = parse_event(
        event.to_string().as_bytes(),
        &app::validation_rules(settings),
    )
    .map_err(|r| CliError::Usage(format!("the event is not valid: {}", r.reason)))?;
    if parsed.event_type != t {
        return Err(CliError::Usage(format!(
            "the event is a {}, not a {}",
            parsed.event_type.as_str(),
            kind.as_str()
        )));
    }
    let EventBody::Module(m) = parsed.body else {
        return Err(CliError::Usage("not a module event".into()));
    };
    let addressee = samples::planned_addressee(kind);
    let common = Common::at_date(today, portal, &addressee);
    let praktijk = praktijk.unwrap_or(m.agb_code.as_str());
    Ok(context::module_context(
        kind.as_str(),
        &m,
        praktijk,
        &common,
    ))
}

fn delivery_context(
    settings: &Settings,
    kind: MailKind,
    v: &Value,
    today: NaiveDate,
    praktijk: Option<&str>,
) -> Result<Value, CliError> {
    if v["kind"].as_str() != Some(kind.as_str()) {
        return Err(CliError::Usage(format!(
            "the delivery is a {}, not a {}",
            v["kind"].as_str().unwrap_or("?"),
            kind.as_str()
        )));
    }
    if kind.is_module() {
        return Err(CliError::Usage(
            "a module mail's data is its event: give the event's `events` line of `notifier export`".into(),
        ));
    }
    let notice: Value = v["notice"]
        .as_str()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| CliError::Usage(format!("the delivery's notice is not JSON: {e}")))?
        .unwrap_or_default();
    let rules = v["rule"]
        .as_str()
        .and_then(Rules::parse)
        .ok_or_else(|| CliError::Usage("the delivery has no rule this version knows".into()))?;
    let addressee = Addressee::planned(&rules, 1);
    let common = Common::at_date(today, &settings.portal.url, &addressee);
    let agb = notice["agb_code"].as_str();
    Ok(context::notice_context(
        kind.as_str(),
        agb,
        praktijk,
        &notice,
        &common,
    ))
}

/// `notifier templates send-test KIND --to ADDR`.
pub async fn send_test(settings: &Settings, kind: &str, to: &str) -> Result<(), CliError> {
    let kind = kind_arg(kind)?;
    let to: lettre::Address = to
        .parse()
        .map_err(|e| CliError::Usage(format!("--to {to:?} is not an address: {e}")))?;
    let templates = app::load_templates(settings)?;
    let sample = samples_of(settings, today_arg(None), Variant::Sample)?
        .into_iter()
        .find(|s| s.kind == kind)
        .expect("every kind has a sample");
    let mut mail = templates.render(kind, &sample.context)?;
    mail.subject = format!("[TEST] {}", mail.subject);
    let id = format!("test.{}.{}", kind.as_str(), uuid::Uuid::now_v7());
    let bytes = message::build(
        &settings.smtp.from,
        to.as_ref(),
        &mail,
        &format!("{id}@notifier"),
    )
    .map_err(|e| CliError::Problem(e.to_string()))?;
    let mailer = app::mailer(settings)?;
    let report = mailer
        .send(settings.smtp.from.email.as_ref(), to.as_ref(), &id, &bytes)
        .await;
    mailer.close().await;
    let via = match settings.smtp.target() {
        Some(_) => "the relay".to_owned(),
        None => format!("the outbox {} (no smtp.url set)", settings.smtp.outbox_dir),
    };
    match report.outcome {
        crate::domain::delivery::AttemptOutcome::Sent => {
            println!(
                "sent {} (sample data, subject marked [TEST]) through {via}: {}",
                kind.as_str(),
                report.detail
            );
            Ok(())
        }
        outcome => {
            let why = format!(
                "not sent through {via} ({}): {}",
                outcome.as_str(),
                crate::mail::classify::redact_addresses(&report.detail)
            );
            Err(match outcome {
                crate::domain::delivery::AttemptOutcome::Permanent => CliError::Problem(why),
                _ => CliError::Dependency(why),
            })
        }
    }
}
