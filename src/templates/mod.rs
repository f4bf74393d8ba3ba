//! Mail templates: handlebars in strict mode, compiled once at start. One
//! registry escapes for HTML; a second, without escaping, renders subjects and
//! plain text. Templates are built into the binary from `templates/`; a
//! directory with the same layout (`mail.templates_dir`) replaces them.

use crate::domain::delivery::MailKind;
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;
use std::path::Path;

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
    ("layout_text", "layout.text.hbs", false),
    ("footer_text", "footer.text.hbs", false),
];

const BUILTIN_PARTIALS: &[&str] = &[
    include_str!("../../templates/partials/layout.html.hbs"),
    include_str!("../../templates/partials/footer.html.hbs"),
    include_str!("../../templates/partials/button.html.hbs"),
    include_str!("../../templates/partials/layout.text.hbs"),
    include_str!("../../templates/partials/footer.text.hbs"),
];

/// The compiled templates.
pub struct Templates {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
}

impl Templates {
    /// Compiles the built-in templates, or those in `dir` when given.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut html = Handlebars::new();
        let mut text = Handlebars::new();
        for reg in [&mut html, &mut text] {
            reg.set_strict_mode(true);
            reg.register_helper("datum", Box::new(datum_helper));
        }
        text.register_escape_fn(handlebars::no_escape);

        let read = |rel: String, builtin: &'static str| -> Result<String, TemplateError> {
            match dir {
                None => Ok(builtin.to_owned()),
                Some(d) => {
                    let p = d.join(&rel);
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

        for ((name, file, is_html), src) in PARTIALS.iter().zip(BUILTIN_PARTIALS) {
            let src = read(format!("partials/{file}"), src)?;
            let reg = if *is_html { &mut html } else { &mut text };
            reg.register_partial(name, src)
                .map_err(|e| compile_err(&format!("partials/{file}"), e))?;
        }
        for (kind, subject, body_html, body_text) in BUILTIN {
            let s = read(format!("{kind}/subject.hbs"), subject)?;
            let h = read(format!("{kind}/html.hbs"), body_html)?;
            let t = read(format!("{kind}/text.hbs"), body_text)?;
            text.register_template_string(&format!("{kind}/subject"), s.trim_end())
                .map_err(|e| compile_err(&format!("{kind}/subject.hbs"), e))?;
            html.register_template_string(&format!("{kind}/html"), h)
                .map_err(|e| compile_err(&format!("{kind}/html.hbs"), e))?;
            text.register_template_string(&format!("{kind}/text"), t)
                .map_err(|e| compile_err(&format!("{kind}/text.hbs"), e))?;
        }
        Ok(Self { html, text })
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
        let subject = r(&self.text, "subject")?;
        Ok(RenderedMail {
            // A subject is one line: nothing from an event may start a new header.
            subject: subject
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_owned(),
            html: r(&self.html, "html")?,
            text: r(&self.text, "text")?,
        })
    }
}

const MAANDEN: [&str; 12] = [
    "januari",
    "februari",
    "maart",
    "april",
    "mei",
    "juni",
    "juli",
    "augustus",
    "september",
    "oktober",
    "november",
    "december",
];

/// Formats `YYYY-MM-DD` as a Dutch date: `2026-11-01` → `1 november 2026`.
pub fn dutch_date(iso: &str) -> Option<String> {
    let d = chrono::NaiveDate::parse_from_str(iso, "%Y-%m-%d").ok()?;
    use chrono::Datelike;
    Some(format!(
        "{} {} {}",
        d.day(),
        MAANDEN[d.month0() as usize],
        d.year()
    ))
}

fn datum_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("datum", 0))?;
    let s = v.value().as_str().unwrap_or_default();
    let formatted = dutch_date(s)
        .ok_or_else(|| RenderErrorReason::InvalidParamType("a date YYYY-MM-DD for datum"))?;
    out.write(&formatted)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dutch_dates() {
        assert_eq!(dutch_date("2026-11-01").as_deref(), Some("1 november 2026"));
        assert_eq!(dutch_date("2026-13-01"), None);
    }

    #[test]
    fn builtin_templates_compile() {
        Templates::load(None).unwrap();
    }
}
