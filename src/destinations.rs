//! Destination keys (docs/providers/README.md "Routing by destination"): the keys of `[routing.*]`,
//! `throttle.countries_allow`/`countries_deny` and `[fraud] allow_countries`, each a calling code (`"44"`), a
//! longer E.164 prefix (`"1876"`) or a region (`"JM"`), and the lists and maps of them that name a
//! [`PhoneNumber`]. Above both the number plan ([`crate::numbering`]) and the job's numbers.

use std::fmt;

use crate::job::PhoneNumber;
use crate::numbering::{CallingCode, Region, code_of};

/// A key of `[routing.*]`, `throttle.countries_allow`/`countries_deny` or `[fraud] allow_countries`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `"44"`: every number of the calling code.
    Code(CallingCode),
    /// `"JM"`: the numbers libphonenumber's metadata puts in the region.
    Region(Region),
    /// `"1876"`: the numbers starting with these E.164 digits, longer than their calling code.
    Prefix(String),
}

/// The text is not a destination key; says what a key may be, never quoting the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is not a calling code, prefix or region (like \"44\", \"1876\" or \"JM\")")]
pub struct NotADestination;

impl Destination {
    pub fn parse(s: &str) -> Result<Destination, NotADestination> {
        if s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Region::parse(s).map(Destination::Region).ok_or(NotADestination);
        }
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotADestination);
        }
        let meta = code_of(s).ok_or(NotADestination)?;
        let code = CallingCode::parse(&meta.code.to_string()).map_err(|_| NotADestination)?;
        if s.len() == code.to_string().len() {
            Ok(Destination::Code(code))
        } else {
            Ok(Destination::Prefix(s.to_owned()))
        }
    }

    /// How specifically this key names `phone`, if it does: a prefix (the longer the more) over a region
    /// over a calling code (docs/providers/README.md).
    pub fn specificity(&self, phone: &PhoneNumber) -> Option<usize> {
        match self {
            Destination::Code(code) => (phone.calling_code() == Some(*code)).then_some(1),
            Destination::Region(region) => (phone.region() == Some(*region)).then_some(2),
            Destination::Prefix(prefix) => phone.digits().starts_with(prefix.as_str()).then(|| 2 + prefix.len()),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Code(code) => write!(f, "{code}"),
            Destination::Region(region) => write!(f, "{region}"),
            Destination::Prefix(prefix) => f.write_str(prefix),
        }
    }
}

impl serde::Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Destination {
    /// A string, or an integer calling code as `countries_deny = [225]` was written before regions.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Destination;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a calling code, prefix or region (like \"44\", \"1876\" or \"JM\")")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Destination, E> {
                // figment names the key (`routing.sms.ZZ`); the message says what is wrong with it.
                Destination::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Destination, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Destination, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Destination keys with a value each (a provider chain): the most specific key naming a number wins.
#[derive(Debug, Clone)]
pub struct DestinationMap<T> {
    entries: Vec<(Destination, T)>,
}

impl<T> Default for DestinationMap<T> {
    fn default() -> Self {
        DestinationMap { entries: Vec::new() }
    }
}

impl<T> FromIterator<(Destination, T)> for DestinationMap<T> {
    fn from_iter<I: IntoIterator<Item = (Destination, T)>>(iter: I) -> Self {
        DestinationMap {
            entries: iter.into_iter().collect(),
        }
    }
}

impl<T> DestinationMap<T> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most specific entry naming `phone`, with its specificity.
    pub fn best(&self, phone: &PhoneNumber) -> Option<(usize, &T)> {
        self.entries
            .iter()
            .filter_map(|(key, value)| key.specificity(phone).map(|s| (s, value)))
            .max_by_key(|(s, _)| *s)
    }

    pub fn get(&self, phone: &PhoneNumber) -> Option<&T> {
        self.best(phone).map(|(_, value)| value)
    }
}

/// Why `allow`/`deny` refuse a number ([`refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The deny entry that decided.
    Denied(Destination),
    /// `allow` has entries and none names the number.
    NotAllowed,
}

/// `allow`/`deny` lists of destinations: the most specific entry naming the number decides, deny winning a
/// tie; a number no entry names is allowed unless `allow` has entries. `None` when the number may go.
pub fn refusal(allow: &[Destination], deny: &[Destination], phone: &PhoneNumber) -> Option<Refusal> {
    fn best<'a>(list: &'a [Destination], phone: &PhoneNumber) -> Option<(usize, &'a Destination)> {
        list.iter()
            .filter_map(|d| d.specificity(phone).map(|s| (s, d)))
            .max_by_key(|(s, _)| *s)
    }
    match (best(allow, phone), best(deny, phone)) {
        (Some((allowed, _)), Some((denied, _))) if allowed > denied => None,
        (_, Some((_, entry))) => Some(Refusal::Denied(entry.clone())),
        (Some(_), None) => None,
        (None, None) => (!allow.is_empty()).then_some(Refusal::NotAllowed),
    }
}

/// Whether [`refusal`] lets the number go.
pub fn permitted(allow: &[Destination], deny: &[Destination], phone: &PhoneNumber) -> bool {
    refusal(allow, deny, phone).is_none()
}

/// Whether any of `list` names `phone`.
pub fn names(list: &[Destination], phone: &PhoneNumber) -> bool {
    list.iter().any(|d| d.specificity(phone).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_keys() {
        let cases: &[(&str, Option<&str>)] = &[
            ("44", Some("Code(44)")),
            ("1", Some("Code(1)")),
            ("1876", Some("Prefix(1876)")),
            ("441481", Some("Prefix(441481)")),
            ("JM", Some("Region(JM)")),
            ("jm", Some("Region(JM)")),
            ("GG", Some("Region(GG)")),
            ("KZ", Some("Region(KZ)")),
            ("ZZ", None),
            ("UK", None),
            ("001", None),
            ("", None),
            ("+44", None),
            ("4x", None),
            ("999", None),
            ("0", None),
            ("1234567890123456", None),
            ("J", None),
            ("USA", None),
        ];
        for (key, want) in cases {
            let got = Destination::parse(key).ok().map(|d| match d {
                Destination::Code(c) => format!("Code({c})"),
                Destination::Prefix(p) => format!("Prefix({p})"),
                Destination::Region(r) => format!("Region({r})"),
            });
            assert_eq!(got.as_deref(), *want, "{key:?}");
        }
        assert_eq!(Region::parse("JM").map(Region::calling_code), Some(1));
        assert_eq!(Region::parse("GG").map(Region::calling_code), Some(44));
        assert_eq!(Destination::parse("jm").unwrap().to_string(), "JM");
    }

    #[test]
    fn the_most_specific_key_wins() {
        let map: DestinationMap<&str> = ["1", "JM", "1876", "18765", "44", "GG"]
            .into_iter()
            .map(|k| (Destination::parse(k).unwrap(), k))
            .collect();
        let key = |n: &str| map.get(&PhoneNumber::parse(n).unwrap()).copied();
        assert_eq!(key("+12125550123"), Some("1"));
        assert_eq!(key("+16585550123"), Some("JM"));
        assert_eq!(key("+18764550123"), Some("1876"));
        assert_eq!(key("+18765550123"), Some("18765"));
        assert_eq!(key("+441481256789"), Some("GG"));
        assert_eq!(key("+442071234567"), Some("44"));
        assert_eq!(key("+33612345678"), None);
    }

    #[test]
    fn allow_and_deny() {
        let list =
            |keys: &[&str]| -> Vec<Destination> { keys.iter().map(|k| Destination::parse(k).unwrap()).collect() };
        let phone = |n: &str| PhoneNumber::parse(n).unwrap();
        let jm = phone("+18765550123");
        let us = phone("+12125550123");
        assert!(permitted(&[], &[], &jm));
        assert!(!permitted(&list(&["44"]), &[], &jm));
        assert!(permitted(&list(&["1"]), &list(&["JM"]), &us));
        assert!(!permitted(&list(&["1"]), &list(&["JM"]), &jm));
        assert!(permitted(&list(&["1876"]), &list(&["JM"]), &jm));
        assert!(!permitted(&list(&["JM"]), &list(&["JM", "44"]), &jm), "deny wins a tie");
        // The refusal names the deny entry that decided.
        let jm_entry = Destination::parse("JM").unwrap();
        assert_eq!(
            refusal(&list(&["1"]), &list(&["44", "JM"]), &jm),
            Some(Refusal::Denied(jm_entry))
        );
        assert_eq!(refusal(&list(&["44"]), &[], &jm), Some(Refusal::NotAllowed));
        assert!(names(&list(&["33", "JM"]), &jm) && !names(&list(&["33", "JM"]), &us));
    }
}
