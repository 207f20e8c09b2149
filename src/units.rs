//! Physical quantities in configuration files.
//!
//! A quantity is written either as a bare number in its documented unit
//! (`g_m = 0.5`, mS/cm²) or as a string with an explicit unit
//! (`sample_period = "100 us"`). A unit of the wrong kind (`"0.1 mV"` for a
//! time) is an error that names the units allowed, because a silently
//! misread unit on a stimulator is a safety problem.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A kind of quantity: its canonical unit and the units accepted for it.
pub trait Dimension {
    /// What it is, for error messages ("a time").
    const WHAT: &'static str;
    /// Canonical unit (the unit of bare numbers and of the stored value).
    const UNIT: &'static str;
    /// Accepted spellings and their factor to the canonical unit.
    const UNITS: &'static [(&'static str, f64)];
}

macro_rules! dimension {
    ($name:ident, $what:expr, $unit:expr, [$(($u:expr, $f:expr)),* $(,)?]) => {
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct $name;
        impl Dimension for $name {
            const WHAT: &'static str = $what;
            const UNIT: &'static str = $unit;
            const UNITS: &'static [(&'static str, f64)] = &[$(($u, $f)),*];
        }
    };
}

dimension!(
    Time,
    "a time",
    "ms",
    [("s", 1e3), ("ms", 1.0), ("us", 1e-3), ("µs", 1e-3)]
);
dimension!(
    Voltage,
    "a voltage",
    "mV",
    [("V", 1e3), ("mV", 1.0), ("uV", 1e-3), ("µV", 1e-3)]
);
dimension!(
    Conductance,
    "a conductance density",
    "mS/cm2",
    [
        ("S/cm2", 1e3),
        ("mS/cm2", 1.0),
        ("uS/cm2", 1e-3),
        ("µS/cm2", 1e-3)
    ]
);
dimension!(
    Current,
    "a current density",
    "uA/cm2",
    [
        ("mA/cm2", 1e3),
        ("uA/cm2", 1.0),
        ("µA/cm2", 1.0),
        ("nA/cm2", 1e-3)
    ]
);
dimension!(Frequency, "a frequency", "Hz", [("kHz", 1e3), ("Hz", 1.0)]);
dimension!(
    Charge,
    "a charge density",
    "nC/cm2",
    [
        ("uC/cm2", 1e3),
        ("µC/cm2", 1e3),
        ("nC/cm2", 1.0),
        ("pC/cm2", 1e-3)
    ]
);

/// A value of dimension `D`, stored in `D::UNIT`.
pub struct Quantity<D> {
    value: f64,
    _d: PhantomData<D>,
}

impl<D> Clone for Quantity<D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for Quantity<D> {}
impl<D> PartialEq for Quantity<D> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<D: Dimension> Quantity<D> {
    pub fn new(value_in_canonical_unit: f64) -> Self {
        Quantity {
            value: value_in_canonical_unit,
            _d: PhantomData,
        }
    }
    /// The value in the canonical unit `D::UNIT`.
    pub fn get(self) -> f64 {
        self.value
    }
}

impl<D: Dimension> fmt::Debug for Quantity<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.value, D::UNIT)
    }
}

impl<D: Dimension> fmt::Display for Quantity<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.value, D::UNIT)
    }
}

/// Parse `"<number> <unit>"` (the space is optional) for dimension `D`.
pub fn parse<D: Dimension>(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(s.len());
    // "1e3" is a number, but in "1 ms" the 'e'-free split above is exact;
    // guard against a unit that starts with 'e'/'E' (none of ours do).
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number followed by a unit"))?;
    if unit.is_empty() {
        return Ok(value);
    }
    match D::UNITS.iter().find(|(u, _)| *u == unit) {
        Some((_, factor)) => Ok(value * factor),
        None => {
            let allowed: Vec<&str> = D::UNITS.iter().map(|(u, _)| *u).collect();
            Err(format!(
                "unit `{unit}` is not {}; use one of {} (a bare number is {})",
                D::WHAT,
                allowed.join(", "),
                D::UNIT
            ))
        }
    }
}

impl<'de, D: Dimension> Deserialize<'de> for Quantity<D> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        struct V<D>(PhantomData<D>);
        impl<D: Dimension> Visitor<'_> for V<D> {
            type Value = Quantity<D>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{} as a number in {} or a string with a unit",
                    D::WHAT,
                    D::UNIT
                )
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Quantity::new(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Quantity::new(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Quantity::new(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse::<D>(v).map(Quantity::new).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<D: Dimension> serde::Serialize for Quantity<D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{} {}", self.value, D::UNIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_canonical_and_units_convert() {
        assert_eq!(parse::<Time>("0.1").unwrap(), 0.1);
        assert_eq!(parse::<Time>("100 us").unwrap(), 0.1);
        assert_eq!(parse::<Time>("30s").unwrap(), 30_000.0);
        assert_eq!(parse::<Voltage>("-0.02 V").unwrap(), -20.0);
        assert_eq!(parse::<Current>("1.5 uA/cm2").unwrap(), 1.5);
        assert_eq!(parse::<Time>("1e-1 ms").unwrap(), 0.1);
    }

    #[test]
    fn wrong_unit_names_the_allowed_ones() {
        let e = parse::<Time>("0.1 mV").unwrap_err();
        assert!(e.contains("`mV` is not a time"), "{e}");
        assert!(e.contains("s, ms, us"), "{e}");
        assert!(parse::<Time>("fast").is_err());
    }
}
