//! Mail templates: handlebars in strict mode, compiled once at start. One
//! registry escapes for HTML; a second, without escaping, renders subjects and
//! plain text. Templates are built into the binary from `templates/`; a
//! directory with the same layout (`mail.templates_dir`) replaces them.
//!
//! Every value a template prints passes [`visible`] first: bidi overrides and
//! zero-width characters from an event cannot reorder or hide the text around
//! them. Each kind has a [`Provenance`] (where its files came from and a hash
//! of them) that every attempt records.

use crate::domain::calendar;
use crate::domain::delivery::MailKind;
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use ring::digest;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

pub mod samples;

/// A template problem: at start (compile) or when rendering one mail.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name} does not compile: {reason}")]
    Compile { name: String, reason: String },
    #[error("template {name} failed to render: {reason}")]
    Render { name: String, reason: String },
    #[error("cannot read template {path}: {reason}")]
    Read { path: String, reason: String },
}

/// A rendered mail: subject, HTML part and plain-text part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// Where the templates of a kind came from, as each attempt records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// `builtin`, or the `mail.templates_dir` path.
    pub source: String,
    /// The first 12 hex characters of a SHA-256 over the files the kind uses.
    pub version: String,
}

macro_rules! builtin {
    ($($kind:literal),* $(,)?) => {
        &[$(
            ($kind,
             include_str!(concat!("../../templates/", $kind, "/subject.hbs")),
             include_str!(concat!("../../templates/", $kind, "/html.hbs")),
             include_str!(concat!("../../templates/", $kind, "/text.hbs"))),
        )*]
    };
}

/// (kind, subject, html, text) of every built-in template.
const BUILTIN: &[(&str, &str, &str, &str)] = builtin!(
    "uitvraag.vragenlijst_klaargezet",
    "uitvraag.herinnering_sluitingsdatum",
    "uitvraag.aanvulling_gevraagd",
    "uitvraag.beoordeeld",
    "contract.voorstel_aangeboden",
    "contract.herinnering_acceptatie",
    "contract.geaccepteerd",
    "contract.administratief_vastgelegd",
    "onderhandeling.voorstel_gedaan",
    "onderhandeling.geaccordeerd",
    "onderhandeling.afgerond",
    "naleving.aanleververzoek",
    "beheer.geen_ontvanger",
    "beheer.geen_tekenbevoegde",
    "beheer.laatste_tekenbevoegde_ingetrokken",
    "certificaat.ingetrokken",
    "beheer.onbestelbaar",
    "gebruiker.emailadres_gewijzigd",
    "gebruiker.emailadres_gewijzigd.oud_adres",
);

/// (partial name, file under partials/, goes to the HTML registry).
const PARTIALS: &[(&str, &str, bool)] = &[
    ("layout", "layout.html.hbs", true),
    ("footer_html", "footer.html.hbs", true),
    ("button", "button.html.hbs", true),
    ("reden_html", "reden.html.hbs", true),
    ("layout_text", "layout.text.hbs", false),
    ("footer_text", "footer.text.hbs", false),
    ("reden_text", "reden.text.hbs", false),
];

const BUILTIN_PARTIALS: &[&str] = &[
    include_str!("../../templates/partials/layout.html.hbs"),
    include_str!("../../templates/partials/footer.html.hbs"),
    include_str!("../../templates/partials/button.html.hbs"),
    include_str!("../../templates/partials/reden.html.hbs"),
    include_str!("../../templates/partials/layout.text.hbs"),
    include_str!("../../templates/partials/footer.text.hbs"),
    include_str!("../../templates/partials/reden.text.hbs"),
];

/// Names in a subject are cut to this many characters (`kort`).
pub const SUBJECT_NAME_CHARS: usize = 80;

/// The compiled templates.
pub struct Templates {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
    provenance: HashMap<&'static str, Provenance>,
}

impl Templates {
    /// Compiles the built-in templates, or those in `dir` when given.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut html = Handlebars::new();
        let mut text = Handlebars::new();
        for reg in [&mut html, &mut text] {
            reg.set_strict_mode(true);
            reg.register_helper("datum", Box::new(datum_helper));
            reg.register_helper("termijn", Box::new(termijn_helper));
            reg.register_helper("kort", Box::new(kort_helper));
        }
        html.register_escape_fn(|s| handlebars::html_escape(&visible_cow(s)));
        text.register_escape_fn(visible);

        let read = |rel: &str, builtin: &'static str| -> Result<String, TemplateError> {
            match dir {
                None => Ok(builtin.to_owned()),
                Some(d) => {
                    let p = d.join(rel);
                    std::fs::read_to_string(&p).map_err(|e| TemplateError::Read {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        };
        let compile_err = |name: &str, e: handlebars::TemplateError| TemplateError::Compile {
            name: name.to_owned(),
            reason: e.to_string(),
        };

        // Every kind's mail goes through the layouts, so every partial is a
        // file the kind uses.
        let mut shared = Vec::new();
        for ((name, file, is_html), src) in PARTIALS.iter().zip(BUILTIN_PARTIALS) {
            let rel = format!("partials/{file}");
            let src = read(&rel, src)?;
            let reg = if *is_html { &mut html } else { &mut text };
            reg.register_partial(name, &src)
                .map_err(|e| compile_err(&rel, e))?;
            shared.push((rel, src));
        }
        let source = dir.map_or_else(|| "builtin".to_owned(), |d| d.display().to_string());
        let mut provenance = HashMap::new();
        for (kind, subject, body_html, body_text) in BUILTIN {
            let mut files = shared.clone();
            for (part, builtin) in [
                ("subject", subject),
                ("html", body_html),
                ("text", body_text),
            ] {
                let rel = format!("{kind}/{part}.hbs");
                let src = read(&rel, builtin)?;
                let reg = if part == "html" { &mut html } else { &mut text };
                let body = if part == "subject" {
                    src.trim_end()
                } else {
                    &src
                };
                reg.register_template_string(&format!("{kind}/{part}"), body)
                    .map_err(|e| compile_err(&rel, e))?;
                files.push((rel, src));
            }
            provenance.insert(
                *kind,
                Provenance {
                    source: source.clone(),
                    version: version_of(&files),
                },
            );
        }
        Ok(Self {
            html,
            text,
            provenance,
        })
    }

    /// Where the templates of `kind` came from.
    pub fn provenance(&self, kind: MailKind) -> &Provenance {
        self.provenance
            .get(kind.as_str())
            .expect("every kind has templates (BUILTIN lists MailKind::all)")
    }

    /// Renders the mail of `kind` for `ctx`.
    pub fn render(&self, kind: MailKind, ctx: &Value) -> Result<RenderedMail, TemplateError> {
        let k = kind.as_str();
        let r = |reg: &Handlebars<'static>, part: &str| {
            let name = format!("{k}/{part}");
            reg.render(&name, ctx).map_err(|e| TemplateError::Render {
                name: format!("{name}.hbs"),
                reason: e.to_string(),
            })
        };
        Ok(RenderedMail {
            subject: one_line(&r(&self.text, "subject")?),
            html: r(&self.html, "html")?,
            text: r(&self.text, "text")?,
        })
    }
}

/// What is wrong with a rendered mail beyond rendering at all: the rules
/// every template set must keep, checked on the hostile variant too.
pub fn lint(mail: &RenderedMail, url: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let html = mail.html.to_ascii_lowercase();
    if html.contains("<script") || html.contains("onerror=") {
        problems.push("the HTML prints event text unescaped (a {{{triple-stash}}}?)".into());
    }
    if !html.contains("<html lang=\"nl\"") {
        problems.push("the HTML does not declare lang=\"nl\"".into());
    }
    // Handlebars escapes `=`, `&` and quotes inside the attribute.
    let href = format!("href=\"{}\"", handlebars::html_escape(url));
    match html.matches("href=").count() {
        0 => problems.push("the HTML has no call-to-action link".into()),
        1 if mail.html.contains(&href) => {}
        1 => problems.push(format!("the call to action does not link to {url}")),
        n => problems.push(format!(
            "the HTML has {n} links; a mail has one call to action"
        )),
    }
    if !url.starts_with("https://") {
        problems.push("the call to action is not https".into());
    }
    if !mail.text.contains(url) {
        problems.push("the plain-text part does not carry the full link".into());
    }
    if mail.subject.is_empty() {
        problems.push("the subject is empty".into());
    }
    problems
}

/// The version of a set of files: SHA-256 over each path and content.
fn version_of(files: &[(String, String)]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (path, content) in files {
        for part in [path.as_bytes(), &[0], content.as_bytes(), &[0]] {
            ctx.update(part);
        }
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Characters that change how the text around them is shown without being
/// seen: bidi embeddings, overrides and isolates, and zero-width spaces and
/// joiners used to hide or split words. Joiners inside emoji sequences
/// (U+200D) are kept.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}')
}

/// `s` without [`is_invisible`] characters: what every template value goes through.
pub fn visible(s: &str) -> String {
    visible_cow(s).into_owned()
}

/// [`visible`] without a copy when there is nothing to remove (nearly always).
fn visible_cow(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(is_invisible) {
        std::borrow::Cow::Owned(s.chars().filter(|c| !is_invisible(*c)).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A subject on one line: control characters (CR, LF, tab) become spaces,
/// invisible ones go, and runs of spaces become one.
pub fn one_line(s: &str) -> String {
    let spaced: String = s
        .chars()
        .filter(|c| !is_invisible(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` cut to `max` characters, with "…" when it was longer.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn str_param<'a>(h: &'a Helper<'_>, name: &'static str) -> Result<&'a Value, RenderErrorReason> {
    h.param(0)
        .map(|p| p.value())
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))
}

/// `{{datum d}}`: `2026-11-12` → `12 november 2026`.
fn datum_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let s = str_param(h, "datum")?.as_str().unwrap_or_default();
    let formatted = calendar::dutch_date(s)
        .ok_or_else(|| RenderErrorReason::InvalidParamType("a date YYYY-MM-DD for datum"))?;
    out.write(&formatted)?;
    Ok(())
}

/// `{{termijn d}}`: `12 november 2026, over 10 dagen`, counted from the
/// context's `vandaag` (the Dutch date at render time).
fn termijn_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let s = str_param(h, "termijn")?.as_str().unwrap_or_default();
    let today = ctx
        .data()
        .get("vandaag")
        .and_then(Value::as_str)
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or(RenderErrorReason::InvalidParamType(
            "the context's vandaag (YYYY-MM-DD) for termijn",
        ))?;
    let words = calendar::deadline_words(s, today).ok_or(RenderErrorReason::InvalidParamType(
        "a date YYYY-MM-DD for termijn",
    ))?;
    out.write(&words)?;
    Ok(())
}

/// `{{kort name}}`: the name cut to [`SUBJECT_NAME_CHARS`] characters, for subjects.
fn kort_helper(
    h: &Helper<'_>,
    r: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = str_param(h, "kort")?;
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    out.write(&r.get_escape_fn()(&cut(&one_line(&s), SUBJECT_NAME_CHARS)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_compile_with_a_version_per_kind() {
        let t = Templates::load(None).unwrap();
        let a = t.provenance(MailKind::all()[0]);
        assert_eq!(a.source, "builtin");
        assert_eq!(a.version.len(), 12);
        assert!(a.version.chars().all(|c| c.is_ascii_hexdigit()));
        let versions: std::collections::HashSet<_> = MailKind::all()
            .iter()
            .map(|k| &t.provenance(*k).version)
            .collect();
        assert_eq!(
            versions.len(),
            MailKind::all().len(),
            "kinds differ in their own files"
        );
    }

    #[test]
    fn subjects_are_one_visible_line() {
        assert_eq!(
            one_line("Contract\r\nBcc: x@y.nl\t \u{202E}lmth.exe\u{200B}"),
            "Contract Bcc: x@y.nl lmth.exe"
        );
    }

    #[test]
    fn names_are_cut_with_an_ellipsis() {
        let long = "a".repeat(2000);
        let c = cut(&long, SUBJECT_NAME_CHARS);
        assert_eq!(c.chars().count(), 80);
        assert!(c.ends_with('…'));
        assert_eq!(cut("kort", 80), "kort");
    }

    fn mail(html: &str, text: &str) -> RenderedMail {
        RenderedMail {
            subject: "Onderwerp".into(),
            html: format!("<!DOCTYPE html>\n<html lang=\"nl\"><body>{html}</body></html>"),
            text: text.into(),
        }
    }

    #[test]
    fn lint_wants_one_https_call_to_action_in_both_parts() {
        let url = "https://zip.example.nl/x?a=1&b=2";
        let attr = handlebars::html_escape(url);
        let good = mail(&format!("<a href=\"{attr}\">Bekijk</a>"), url);
        assert_eq!(lint(&good, url), Vec::<String>::new());

        let two = mail(
            &format!("<a href=\"{attr}\">a</a><a href=\"{attr}\">b</a>"),
            url,
        );
        assert!(lint(&two, url)[0].contains("2 links"));
        assert!(lint(&mail("", url), url)[0].contains("no call-to-action"));
        let other = mail("<a href=\"https://elders.example\">a</a>", url);
        assert!(lint(&other, url)[0].contains("does not link to"));
        let no_text = mail(&format!("<a href=\"{attr}\">Bekijk</a>"), "geen link");
        assert!(lint(&no_text, url)[0].contains("plain-text part"));
        let http = "http://zip.example.nl/x";
        let plain = mail(
            &format!("<a href=\"{}\">a</a>", handlebars::html_escape(http)),
            http,
        );
        assert!(lint(&plain, http)[0].contains("not https"));
        let raw = mail(&format!("<a href=\"{attr}\">a</a><script>x</script>"), url);
        assert!(lint(&raw, url)[0].contains("unescaped"));
    }
}
