//! The template context of a delivery: the same shape for every kind
//! (`kind`, `praktijk`, `agb_code`, `url`, `portal_url`), plus `data` and
//! `zorgverzekeraar` for module mails or `notice` for notices.

use crate::domain::event::ModuleEvent;
use serde_json::{Value, json};

/// Context for a module mail.
pub fn module_context(kind: &str, event: &ModuleEvent, praktijk: &str, portal_url: &str) -> Value {
    json!({
        "kind": kind,
        "praktijk": praktijk,
        "agb_code": event.agb_code.as_str(),
        "url": event.url,
        "portal_url": portal_url,
        "zorgverzekeraar": event.zorgverzekeraar,
        "data": event.data,
    })
}

/// Context for a notice or directory mail; the call to action is the portal.
pub fn notice_context(
    kind: &str,
    agb_code: Option<&str>,
    praktijk: Option<&str>,
    notice: &Value,
    portal_url: &str,
) -> Value {
    json!({
        "kind": kind,
        "praktijk": praktijk.or(agb_code),
        "agb_code": agb_code,
        "url": portal_url,
        "portal_url": portal_url,
        "notice": notice,
    })
}
