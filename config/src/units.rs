//! Human-friendly scalar units used across the configuration: durations
//! (`250ms`, `5s`, `1m30s`) and byte sizes (`64KiB`, `10MiB`).
//!
//! Both parse from strings at deserialization time, so the rest of weir only ever
//! sees typed values, and both serialize back to the same canonical text.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with a unit: `250ms`, `5s`, `1m`, `2h`, or a
/// sum of such parts (`1m30s`). A bare `0` means zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// Builds a duration from whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }

    /// Builds a duration from whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }

    /// The standard-library duration.
    pub const fn get(self) -> StdDuration {
        self.0
    }

    /// True when the duration is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Why a duration or size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        if text.is_empty() {
            return Err(UnitError(
                "empty duration (expected e.g. \"250ms\", \"5s\", \"1m\")".into(),
            ));
        }
        let bad = || {
            UnitError(format!(
                "invalid duration {s:?} (expected a number with a unit: ms, s, m or h, e.g. \"250ms\", \"5s\", \"1m30s\")"
            ))
        };
        let mut total: u128 = 0; // nanoseconds
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return Err(bad());
            }
            let value: u128 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let unit_nanos: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = value
                .checked_mul(unit_nanos)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
        // Lossless: the remainder is below one second.
        let nanos = (total % 1_000_000_000) as u32;
        Ok(Duration(StdDuration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let nanos = d.as_nanos();
        let units: [(u128, &str); 6] = [
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let mut rest = nanos;
        for (size, unit) in units {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size written as a number with an optional binary or decimal unit:
/// `512`, `64KiB`, `10MiB`, `1GiB`, `100KB`, `1MB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || {
            UnitError(format!(
                "invalid size {s:?} (expected a number with an optional unit: B, KiB, MiB, GiB, KB, MB, GB, e.g. \"64KiB\")"
            ))
        };
        let digits = text.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = text[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match text[digits..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        value.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (size, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{}", b / size, unit);
            }
        }
        write!(f, "{b}B")
    }
}

/// Sizes may be written as a plain YAML integer (bytes) or as a string with a unit.
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!("5s".parse::<Duration>().unwrap(), Duration::from_secs(5));
        assert_eq!(
            "1m30s".parse::<Duration>().unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!("2h".parse::<Duration>().unwrap(), Duration::from_secs(7200));
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::from_secs(0));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn durations_round_trip_through_display() {
        for text in ["250ms", "5s", "1m30s", "2h", "1s500ms"] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("10MiB".parse::<ByteSize>().unwrap(), ByteSize(10 << 20));
        assert_eq!("100KB".parse::<ByteSize>().unwrap(), ByteSize(100_000));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        for bad in ["", "KiB", "10XB", "-1", "99999999999999GiB"] {
            assert!(
                bad.parse::<ByteSize>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(ByteSize(65536).to_string(), "64KiB");
    }
}
