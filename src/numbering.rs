//! Numbering plans from libphonenumber's metadata, as build.rs wrote them out: which calling codes are
//! assigned ([`CallingCode`]), which national lengths each can have, and which region (ISO 3166) a number
//! of it is in. The lowest layer of numbers: [`crate::job::PhoneNumber`] is checked against it.

use std::fmt;
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};

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

impl CodeMeta {
    pub(crate) fn calling_code(&self) -> CallingCode {
        CallingCode(self.code)
    }
}

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

/// An assigned E.164 country calling code (`1`, `44`, `225`): a key of `[routing.sms]`, written as its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallingCode(u16);

/// What is wrong with a calling code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallingCodeError {
    #[error("not a country calling code: 1 to 3 digits without `+`, like \"44\"")]
    Form,
    #[error("not an assigned country calling code")]
    Unassigned,
}

impl CallingCode {
    /// 1–3 digits that libphonenumber knows as a country calling code (no `+`).
    pub fn parse(s: &str) -> Result<CallingCode, CallingCodeError> {
        if !(1..=3).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
            return Err(CallingCodeError::Form);
        }
        let code: u16 = s.parse().map_err(|_| CallingCodeError::Form)?;
        meta(code)
            .map(|_| CallingCode(code))
            .ok_or(CallingCodeError::Unassigned)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for CallingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for CallingCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CallingCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        // figment names the key (`routing.sms.4x`); the message says what is wrong with it.
        CallingCode::parse(&text).map_err(serde::de::Error::custom)
    }
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
}
