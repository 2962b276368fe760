//! SMS encoding and segment count: GSM-7 when every character is in the GSM 03.38 alphabet (extension
//! characters take two septets), UCS-2 otherwise. 160/70 units fit one message; longer texts are split
//! into 153/67-unit segments (the rest carries the concatenation header).

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// Twilio refuses bodies longer than this many characters.
pub const TWILIO_MAX_CHARS: usize = 1600;

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segments {
    pub encoding: Encoding,
    /// Characters as the user sees them.
    pub characters: usize,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

pub fn segments(text: &str) -> Segments {
    let characters = text.chars().count();
    let gsm: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM_BASIC.contains(c) {
                Some(1)
            } else if GSM_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, multi) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let segments = if units == 0 {
        0
    } else if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    Segments {
        encoding,
        characters,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_and_ucs2_segments() {
        let s = segments("482913 is your verification code for Acme.");
        assert_eq!((s.encoding, s.segments), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(160)).segments, 1);
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // Extension characters count twice.
        let s = segments(&"€".repeat(80));
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Gsm7, 160, 1));
        // One character outside GSM-7 switches the whole message to UCS-2.
        let s = segments("Ваш код 482913");
        assert_eq!((s.encoding, s.segments), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"ç".repeat(71)).segments, 2);
        assert_eq!(segments(&"ç".repeat(134)).segments, 2);
        // Accented letters of the shipped es/fr/de/pt-BR templates: é is GSM-7, ó and ã are not.
        assert_eq!(segments("vérification").encoding, Encoding::Gsm7);
        assert_eq!(segments("código").encoding, Encoding::Ucs2);
        assert_eq!(segments("").segments, 0);
    }
}
