//! Serde for `Duration` config fields as human text: `"30s"`, `"500ms"`, `"5m"`, `"1h"`, or a
//! plain integer number of seconds.
//!
//! Every Nodosum config file writes durations this way; use it with
//! `#[serde(with = "nodosum_discovery::duration")]`, or `duration::option` for an
//! `Option<Duration>`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses `"<n>ms"`, `"<n>s"`, `"<n>m"`, `"<n>h"` or `"<n>"` (seconds).
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit_ms): (&str, u64) = if let Some(d) = text.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = text.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (text, 1_000)
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(unit_ms).map(Duration::from_millis)
}

/// Formats as whole seconds where exact, else milliseconds (Consul's `wait` accepts both).
pub fn format(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Serialises as [`format`] does.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Secs(u64),
    Text(String),
}

/// Deserialises what [`parse`] accepts, or an integer number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse(&t).ok_or_else(|| {
            de::Error::custom(format_args!(
                "invalid duration {t:?}: expected e.g. \"30s\", \"500ms\", \"5m\""
            ))
        }),
    }
}

/// The same for `Option<Duration>` fields (absent or `null` is `None`).
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises `Some` as [`format`](super::format) does; `None` as nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Deserialises an optional duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse(&format!("{}h", u64::MAX)), None);
    }

    #[test]
    fn formats_round_trip() {
        for d in [Duration::from_secs(30), Duration::from_millis(1500)] {
            assert_eq!(parse(&format(d)), Some(d));
        }
    }
}
