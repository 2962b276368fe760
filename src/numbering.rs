//! Numbering plans from libphonenumber's metadata, as build.rs wrote them out: which national lengths a
//! calling code can have, and which region (ISO 3166) a number of it is in. Keys of `[routing.*]`,
//! `throttle.countries_allow`/`countries_deny` and `[fraud] allow_countries` are [`Destination`]s
//! (docs/providers/README.md "Routing by destination"): a calling code (`"44"`), a longer E.164 prefix (`"1876"`) or a
//! region (`"JM"`).

use std::fmt;
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};

use crate::job::{CallingCode, PhoneNumber};

mod table {
    /// A calling code: bit `n` of `lengths` is set when a national number can have `n` digits.
    pub struct CodeMeta {
        pub code: u16,
        pub lengths: u32,
        /// Main region first; none for the non-geographic codes (+800, +882, …).
        pub regions: &'static [RegionMeta],
    }

    /// A region of a calling code: `leading` (its `leadingDigits`) decides alone where the metadata has
    /// one, else `pattern` (the union of its number types' national number patterns) must match whole.
    pub struct RegionMeta {
        pub id: [u8; 2],
        /// Where its compiled patterns are kept (`2 * slot` the pattern, `2 * slot + 1` leading digits).
        pub slot: usize,
        pub leading: Option<&'static str>,
        pub pattern: &'static str,
    }

    include!(concat!(env!("OUT_DIR"), "/numbering.rs"));
}

pub(crate) use table::CodeMeta;

/// The calling code of E.164 `digits` (without `+`): calling codes are prefix-free, so the first 1–3 digit
/// prefix that is assigned is the one.
pub(crate) fn code_of(digits: &str) -> Option<&'static CodeMeta> {
    if digits.starts_with('0') {
        return None;
    }
    (1..=3.min(digits.len())).find_map(|n| {
        let code: u16 = digits.get(..n)?.parse().ok()?;
        meta(code)
    })
}

pub(crate) fn meta(code: u16) -> Option<&'static CodeMeta> {
    table::CODES
        .binary_search_by_key(&code, |m| m.code)
        .ok()
        .and_then(|i| table::CODES.get(i))
}

/// Whether a national number of `len` digits can exist for the calling code (any of its regions).
pub(crate) fn possible_length(meta: &CodeMeta, len: usize) -> bool {
    len < 32 && meta.lengths & (1 << len) != 0
}

/// The region of `national` (the digits after calling code `meta`), as libphonenumber's
/// `getRegionCodeForNumber` decides it: the only region of a calling code; else the first whose leading
/// digits start the number, or (without leading digits) whose number patterns match it. A range the
/// metadata does not list keeps the main region: numbering plans grow before the metadata learns them.
pub(crate) fn region_of(meta: &CodeMeta, national: &str) -> Option<Region> {
    let regions = meta.regions;
    let main = regions.first()?;
    if regions.len() == 1 {
        return Some(Region(main.id));
    }
    let found = regions.iter().find(|r| match r.leading {
        Some(leading) => compiled(2 * r.slot + 1, leading).is_some_and(|re| re.is_match(national)),
        None => compiled(2 * r.slot, r.pattern).is_some_and(|re| re.is_match(national)),
    });
    Some(Region(found.unwrap_or(main).id))
}

/// Each pattern compiled on first use and kept: only the calling codes herald sends to cost memory. A
/// pattern the regex crate refused (a test checks there is none) matches nothing. Without Unicode, `\d` is
/// `[0-9]` (the text is ASCII digits): the patterns of +1, +7 and +44 take 1.4 MiB compiled, not 4.9 MiB.
fn compiled(slot: usize, pattern: &str) -> Option<&'static Regex> {
    static COMPILED: [OnceLock<Option<Regex>>; 2 * table::SLOTS] = [const { OnceLock::new() }; 2 * table::SLOTS];
    COMPILED
        .get(slot)?
        .get_or_init(|| RegexBuilder::new(pattern).unicode(false).build().ok())
        .as_ref()
}

/// An ISO 3166 region that libphonenumber's metadata knows (`JM`, `KZ`, `GG`), upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region([u8; 2]);

impl Region {
    /// Two letters, any case, of a region in the metadata.
    pub fn parse(s: &str) -> Option<Region> {
        let id: [u8; 2] = s.as_bytes().try_into().ok()?;
        let id = id.map(|b| b.to_ascii_uppercase());
        table::REGIONS
            .binary_search_by_key(&id, |(r, _)| *r)
            .ok()
            .map(|_| Region(id))
    }

    pub fn as_str(&self) -> &str {
        // Built from ASCII letters only (the table and `parse`).
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The calling code numbers of the region have.
    pub fn calling_code(self) -> u16 {
        table::REGIONS
            .binary_search_by_key(&self.0, |(r, _)| *r)
            .ok()
            .and_then(|i| table::REGIONS.get(i))
            .map_or(0, |(_, code)| *code)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    /// A pattern the regex crate refused would silently match nothing.
    #[test]
    fn every_pattern_of_the_metadata_compiles() {
        for meta in table::CODES {
            for r in meta.regions {
                if meta.regions.len() > 1 {
                    assert!(compiled(2 * r.slot, r.pattern).is_some(), "{}", Region(r.id));
                }
                if let Some(leading) = r.leading {
                    assert!(compiled(2 * r.slot + 1, leading).is_some(), "{} leading", Region(r.id));
                }
                assert!(r.slot < table::SLOTS);
            }
        }
    }

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
