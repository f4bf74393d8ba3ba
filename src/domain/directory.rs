//! The notifier's copy of the portal directory: users (certificates), their
//! links to AGB codes with rights and flags, and the `versie` rule that keeps a
//! stale update from overwriting newer data.

use super::ids::{AgbCode, EmailAddress, Gebruikersnummer};
use std::collections::BTreeSet;

/// A module right on an AGB link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recht {
    Uitvragen,
    Contracteren,
    Onderhandelen,
    Naleving,
}

impl Recht {
    /// The contract's name for the right.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uitvragen => "uitvragen",
            Self::Contracteren => "contracteren",
            Self::Onderhandelen => "onderhandelen",
            Self::Naleving => "naleving",
        }
    }

    /// Parses the contract's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uitvragen" => Some(Self::Uitvragen),
            "contracteren" => Some(Self::Contracteren),
            "onderhandelen" => Some(Self::Onderhandelen),
            "naleving" => Some(Self::Naleving),
            _ => None,
        }
    }

    /// The right as a mail names it: "Contracteren".
    pub fn title(self) -> &'static str {
        match self {
            Self::Uitvragen => "Uitvragen",
            Self::Contracteren => "Contracteren",
            Self::Onderhandelen => "Onderhandelen",
            Self::Naleving => "Naleving",
        }
    }

    /// The Dutch name of the module the right opens.
    pub fn module(self) -> &'static str {
        match self {
            Self::Uitvragen => "Uitvraagmodule",
            Self::Contracteren => "Contracteermodule",
            Self::Onderhandelen => "Onderhandelmodule",
            Self::Naleving => "Nalevingsmodule",
        }
    }
}

/// Certificate status of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Actief,
    Ingetrokken,
}

impl UserStatus {
    /// The contract's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Actief => "actief",
            Self::Ingetrokken => "ingetrokken",
        }
    }

    /// Parses the contract's word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "actief" => Some(Self::Actief),
            "ingetrokken" => Some(Self::Ingetrokken),
            _ => None,
        }
    }
}

/// One link of a user to an AGB code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Koppeling {
    pub agb_code: AgbCode,
    pub rechten: BTreeSet<Recht>,
    pub tekenbevoegd: bool,
    pub contactpersoon: bool,
}

/// A whole user as `gebruiker.bijgewerkt` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub gebruikersnummer: Gebruikersnummer,
    pub naam: String,
    pub email: EmailAddress,
    pub status: UserStatus,
    pub koppelingen: Vec<Koppeling>,
    pub versie: i64,
}

/// The outcome of applying a directory update under the `versie` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionCheck {
    /// Unknown before: insert.
    New,
    /// Higher than stored: apply.
    Newer,
    /// Not higher than stored: ignore and count.
    Stale,
}

impl VersionCheck {
    /// Compares an incoming `versie` with the stored one.
    pub fn of(stored: Option<i64>, incoming: i64) -> Self {
        match stored {
            None => Self::New,
            Some(s) if incoming > s => Self::Newer,
            Some(_) => Self::Stale,
        }
    }
}

/// A user as seen from one AGB code: what the recipient rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub gebruikersnummer: Gebruikersnummer,
    pub naam: String,
    pub email: EmailAddress,
    pub status: UserStatus,
    pub versie: i64,
    pub rechten: BTreeSet<Recht>,
    pub tekenbevoegd: bool,
    pub contactpersoon: bool,
}

impl Member {
    /// Active (certificate not revoked).
    pub fn is_active(&self) -> bool {
        self.status == UserStatus::Actief
    }
}

/// A user found by number regardless of AGB code (an actor, a revoked user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub gebruikersnummer: Gebruikersnummer,
    pub naam: String,
    pub email: EmailAddress,
    pub status: UserStatus,
    pub versie: i64,
}

/// Everything the rules need to know about one AGB code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgbSnapshot {
    pub agb_code: AgbCode,
    /// The practice name, if an `organisatie.bijgewerkt` was seen.
    pub naam: Option<String>,
    /// Every user linked to the code, active or not.
    pub members: Vec<Member>,
}

impl AgbSnapshot {
    /// The practice's display name: its name, or the AGB code while unknown.
    pub fn praktijk(&self) -> String {
        self.naam
            .clone()
            .unwrap_or_else(|| self.agb_code.to_string())
    }
}
