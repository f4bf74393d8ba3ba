//! Dates as the practices read them: the calendar day in the Netherlands,
//! Dutch date words, and how far away a deadline is.
//!
//! Only the date matters here, so Europe/Amsterdam is its two offsets under
//! the EU summer-time rule (Directive 2000/84/EC: from 01:00 UTC on the last
//! Sunday of March to 01:00 UTC on the last Sunday of October), not a time
//! zone database.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};

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

/// The calendar date in Europe/Amsterdam at `now`.
pub fn amsterdam_date(now: DateTime<Utc>) -> NaiveDate {
    let offset = if is_summer_time(now) { 2 } else { 1 };
    (now + Duration::hours(offset)).date_naive()
}

/// True while the Netherlands keep summer time (UTC+2).
fn is_summer_time(now: DateTime<Utc>) -> bool {
    let year = now.year();
    let switch = |month: u32| {
        let last = last_sunday(year, month);
        Utc.from_utc_datetime(&last.and_hms_opt(1, 0, 0).expect("01:00 exists"))
    };
    now >= switch(3) && now < switch(10)
}

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let mut d = NaiveDate::from_ymd_opt(year, month, 31).expect("March and October have 31 days");
    while d.weekday() != Weekday::Sun {
        d = d.pred_opt().expect("a day before the 31st");
    }
    d
}

/// `YYYY-MM-DD` as a Dutch date: `2026-11-01` → `1 november 2026`.
pub fn dutch_date(iso: &str) -> Option<String> {
    let d = NaiveDate::parse_from_str(iso, "%Y-%m-%d").ok()?;
    Some(format!(
        "{} {} {}",
        d.day(),
        MAANDEN[d.month0() as usize],
        d.year()
    ))
}

/// How far a deadline is from today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termijn {
    /// More than one day left.
    Over(i64),
    Morgen,
    Vandaag,
    Verlopen,
}

impl Termijn {
    /// The deadline `date` seen on `today`.
    pub fn of(date: NaiveDate, today: NaiveDate) -> Self {
        match (date - today).num_days() {
            n if n < 0 => Self::Verlopen,
            0 => Self::Vandaag,
            1 => Self::Morgen,
            n => Self::Over(n),
        }
    }

    /// The words a mail uses: "over 10 dagen", "morgen", "vandaag", "de termijn is verlopen".
    pub fn words(self) -> String {
        match self {
            Self::Over(n) => format!("over {n} dagen"),
            Self::Morgen => "morgen".into(),
            Self::Vandaag => "vandaag".into(),
            Self::Verlopen => "de termijn is verlopen".into(),
        }
    }
}

/// A deadline as a mail states it: "12 november 2026, over 10 dagen".
pub fn deadline_words(iso: &str, today: NaiveDate) -> Option<String> {
    let date = NaiveDate::parse_from_str(iso, "%Y-%m-%d").ok()?;
    Some(format!(
        "{}, {}",
        dutch_date(iso)?,
        Termijn::of(date, today).words()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_dutch_day_starts_at_local_midnight() {
        // Winter: UTC+1.
        assert_eq!(
            amsterdam_date(utc("2026-12-06T22:59:59Z")),
            date("2026-12-06")
        );
        assert_eq!(
            amsterdam_date(utc("2026-12-06T23:00:00Z")),
            date("2026-12-07")
        );
        // Summer: UTC+2.
        assert_eq!(
            amsterdam_date(utc("2026-07-01T21:59:59Z")),
            date("2026-07-01")
        );
        assert_eq!(
            amsterdam_date(utc("2026-07-01T22:00:00Z")),
            date("2026-07-02")
        );
    }

    #[test]
    fn summer_time_switches_on_the_last_sundays_at_one_utc() {
        // 2026: 29 March and 25 October.
        assert!(!is_summer_time(utc("2026-03-29T00:59:59Z")));
        assert!(is_summer_time(utc("2026-03-29T01:00:00Z")));
        assert!(is_summer_time(utc("2026-10-25T00:59:59Z")));
        assert!(!is_summer_time(utc("2026-10-25T01:00:00Z")));
        // The evening before the October switch is still summer: 22:30 UTC is 00:30 the next day.
        assert_eq!(
            amsterdam_date(utc("2026-10-24T22:30:00Z")),
            date("2026-10-25")
        );
    }

    #[test]
    fn deadlines_count_calendar_days() {
        let today = date("2026-11-02");
        let w = |d: &str| deadline_words(d, today).unwrap();
        assert_eq!(w("2026-11-12"), "12 november 2026, over 10 dagen");
        assert_eq!(w("2026-11-03"), "3 november 2026, morgen");
        assert_eq!(w("2026-11-02"), "2 november 2026, vandaag");
        assert_eq!(w("2026-11-01"), "1 november 2026, de termijn is verlopen");
        assert_eq!(deadline_words("2026-13-01", today), None);
    }

    #[test]
    fn dutch_dates() {
        assert_eq!(dutch_date("2026-11-01").as_deref(), Some("1 november 2026"));
        assert_eq!(dutch_date("2027-03-31").as_deref(), Some("31 maart 2027"));
        assert_eq!(dutch_date("2026-13-01"), None);
    }
}
