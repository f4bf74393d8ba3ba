//! The template context of a delivery: the same shape for every kind
//! (`kind`, `praktijk`, `agb_code`, `url`, `portal_url`, `vandaag`,
//! `ontvanger`), plus `data` and `zorgverzekeraar` for module mails or
//! `notice` for notices. docs/templates.md lists every field.

use crate::domain::calendar;
use crate::domain::event::ModuleEvent;
use crate::domain::recipients::Addressee;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

/// What every mail's context holds besides its own data.
#[derive(Debug, Clone)]
pub struct Common<'a> {
    /// The portal's address (`portal.url`): the link of notices and the footer.
    pub portal_url: &'a str,
    /// The Dutch calendar date at render time: deadlines count from it.
    pub today: NaiveDate,
    /// Why the mail reaches its address.
    pub addressee: &'a Addressee,
}

impl<'a> Common<'a> {
    /// The common part of a mail rendered at `now`.
    pub fn at(now: DateTime<Utc>, portal_url: &'a str, addressee: &'a Addressee) -> Self {
        Self {
            portal_url,
            today: calendar::amsterdam_date(now),
            addressee,
        }
    }

    /// The common part of a mail rendered as on `today` (previews, `templates render --today`).
    pub fn at_date(today: NaiveDate, portal_url: &'a str, addressee: &'a Addressee) -> Self {
        Self {
            portal_url,
            today,
            addressee,
        }
    }

    fn merge(&self, mut v: Value) -> Value {
        v["portal_url"] = self.portal_url.into();
        v["vandaag"] = self.today.format("%Y-%m-%d").to_string().into();
        v["ontvanger"] = self.addressee.context();
        v
    }
}

/// Context for a module mail.
pub fn module_context(kind: &str, event: &ModuleEvent, praktijk: &str, common: &Common) -> Value {
    common.merge(json!({
        "kind": kind,
        "praktijk": praktijk,
        "agb_code": event.agb_code.as_str(),
        "url": event.url,
        "zorgverzekeraar": event.zorgverzekeraar,
        "data": event.data,
    }))
}

/// Context for a notice or directory mail; the call to action is the portal.
pub fn notice_context(
    kind: &str,
    agb_code: Option<&str>,
    praktijk: Option<&str>,
    notice: &Value,
    common: &Common,
) -> Value {
    common.merge(json!({
        "kind": kind,
        "praktijk": praktijk.or(agb_code),
        "agb_code": agb_code,
        "url": common.portal_url,
        "notice": notice,
    }))
}
