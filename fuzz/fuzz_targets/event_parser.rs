//! Any bytes as a portal message: the parser and the quarantine hint must
//! return (an event or a reason), never panic, and an accepted event must
//! hold no NUL and a link on an allowed host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notifier::domain::event::{EventBody, ValidationRules, envelope_hint, parse_event};

fuzz_target!(|body: &[u8]| {
    let rules = ValidationRules {
        allowed_link_hosts: vec!["zip.example.nl".into()],
    };
    let _ = envelope_hint(body);
    if let Ok(event) = parse_event(body, &rules) {
        assert!(!event.id.as_str().contains('\0'));
        if let EventBody::Module(m) = event.body {
            assert!(m.url.starts_with("https://zip.example.nl"));
        }
    }
});
