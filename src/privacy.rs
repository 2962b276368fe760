//! What keeps a private value out of sight: the hashes that keep one (a phone number or range, an email
//! address, an IP, a user or job id) out of memory, Redis keys and labels in the clear, and the scrubbing
//! that masks one in free text (provider error messages) before an event or a log carries it.

use std::hash::{DefaultHasher, Hash, Hasher};

use sha2::{Digest, Sha256};

use crate::job;

/// The first 96 bits of SHA-256, in lowercase hex (24 characters): a key written to Redis or a label.
/// Stable across releases and replicas: keys that a running herald wrote must stay readable.
pub fn hashed(s: &str) -> String {
    // Hex by hand: a `format!` per byte was most of the guard's CPU per job (callgrind, #23).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(24);
    for b in &digest[..12] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// A 64-bit in-process key for `id` within the kind `tag` (a limit, a guard level): a few bytes per key
/// whatever the id. Never written out: only this process's maps hold it.
pub fn local_key(tag: impl Hash, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    tag.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// Longest text [`scrub`] returns: a message is for an operator to read, not a channel for a payload.
const SCRUBBED_MAX: usize = 256;

/// Masks anything in free text (provider error messages) that could be a phone number, a code or an
/// email address: runs of 6+ digits and `x@y` words. Shorter numbers (statuses, Twilio error codes) stay.
/// Cut to [`SCRUBBED_MAX`] characters.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SCRUBBED_MAX + 3));
    let original_len = text.len();
    let text = match text.char_indices().nth(SCRUBBED_MAX) {
        // A digit run cut short could be the visible part of a number: drop it.
        Some((cut, _)) => text[..cut].trim_end_matches(|c: char| c.is_ascii_digit()),
        None => text,
    };
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.contains('@') && word.len() > 3 {
            out.push_str("[address]");
            continue;
        }
        let mut run = String::new();
        for c in word.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                run.push(c);
                continue;
            }
            if run.len() >= 6 {
                out.push_str("[number]");
            } else {
                out.push_str(&run);
            }
            run.clear();
            if c != ' ' {
                out.push(c);
            }
        }
    }
    if text.len() < original_len {
        out.push('…');
    }
    out
}

/// [`scrub`], and then anything still holding this job's own code or recipient, however it is written:
/// a provider that echoes a 4-digit code (below [`scrub`]'s 6), or the number as `(415) 555-0123`, or the
/// mailbox's local part alone. Digit groups joined by spaces, `-`, `.`, `/`, `(` or `)` count as one
/// number; one whose digits hold the code, or the last 6 digits of the phone number, becomes `[number]`.
pub fn scrub_for(text: &str, job: &job::Job) -> String {
    let mut text = scrub(text);
    let code = job.code.expose();
    let phone_tail = match &job.to {
        job::Recipient::Phone(p) => Some(&p.digits()[p.digits().len().saturating_sub(6)..]),
        job::Recipient::Email(e) => {
            let address = e.expose();
            let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
            for secret in [address, local] {
                if secret.len() >= 3 {
                    text = replace_ignore_case(&text, secret, "[address]");
                }
            }
            None
        }
    };
    mask_numbers(&text, |digits| {
        digits.contains(code) || phone_tail.is_some_and(|t| digits.contains(t))
    })
}

/// Replaces every digit group (see [`scrub_for`]) for which `secret` says so with `[number]`.
fn mask_numbers(text: &str, secret: impl Fn(&str) -> bool) -> String {
    let joiner = |c: char| matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | '+');
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if !c.is_ascii_digit() {
            out.push(c);
            i += 1;
            continue;
        }
        // A group: digits, with single joiners between them.
        let mut digits = String::new();
        let mut end = i;
        let mut j = i;
        while j < chars.len() {
            let c = chars[j].1;
            if c.is_ascii_digit() {
                digits.push(c);
                end = j;
                j += 1;
            } else if joiner(c) && chars.get(j + 1).is_some_and(|(_, n)| n.is_ascii_digit() || joiner(*n)) {
                j += 1;
            } else {
                break;
            }
        }
        let stop = chars.get(end + 1).map_or(text.len(), |(at, _)| *at);
        if secret(&digits) {
            out.push_str("[number]");
        } else {
            out.push_str(&text[start..stop]);
        }
        i = end + 1;
    }
    out
}

fn replace_ignore_case(text: &str, needle: &str, with: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(&needle) {
        if at < last {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(with);
        last = at + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_hash_is_the_first_96_bits_of_its_sha256_in_lowercase_hex() {
        assert_eq!(hashed(""), "e3b0c44298fc1c149afbf4c8");
        assert_eq!(hashed("abc"), "ba7816bf8f01cfea414140de");
    }

    #[test]
    fn the_hex_is_what_format_gave_for_each_byte() {
        // The throttle's and the guard's job keys were written with `format!("{b:02x}")`: the same text.
        for s in ["", "abc", "+14155550123", "user|42", "01JD3V7ZQ4T6Y0M2W8K5H9N1PB"] {
            let formatted: String = Sha256::digest(s.as_bytes())[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hashed(s), formatted, "{s}");
        }
    }

    #[test]
    fn local_keys_differ_by_tag() {
        assert_eq!(local_key('r', "44"), local_key('r', "44"));
        assert_ne!(local_key('r', "44"), local_key('c', "44"));
        assert_ne!(local_key(0usize, "u"), local_key(1usize, "u"));
    }

    #[test]
    fn scrub_masks_numbers_and_addresses() {
        assert_eq!(
            scrub("The 'To' number +14155550123 is invalid"),
            "The 'To' number +[number] is invalid"
        );
        assert_eq!(scrub("mail jane@example.com failed"), "mail [address] failed");
        assert_eq!(
            scrub("twilio answered 400: code 21211"),
            "twilio answered 400: code 21211"
        );
    }

    #[test]
    fn scrub_for_masks_the_jobs_own_code_and_recipient_however_written() {
        let sms = job::Job::from_json(br#"{"id":"j","channel":"sms","to":"+14155550123","code":"4829","user_id":"u"}"#)
            .unwrap();
        let email = job::Job::from_json(
            br#"{"id":"j","channel":"email","to":"Jane.Doe@example.com","code":"48291","user_id":"u"}"#,
        )
        .unwrap();
        let cases: [(&job::Job, &str, &str); 8] = [
            (&sms, "code 4829 rejected", "code [number] rejected"),
            (
                &sms,
                "error 21211: bad To (415) 555-0123.",
                "error 21211: bad To ([number].",
            ),
            (&sms, "To 415.555.0123 / 4829", "To [number]"),
            (&sms, "status 400, code 21614", "status 400, code 21614"),
            (&sms, "48290 is not 4829x", "[number] is not [number]x"),
            (&email, "mailbox jane.doe unknown", "mailbox [address] unknown"),
            (
                &email,
                "550 5.1.1 JANE.DOE@EXAMPLE.COM: no such user",
                "550 5.1.1 [address] no such user",
            ),
            (&email, "code 4-8-2-9-1 seen", "code [number] seen"),
        ];
        for (job, text, expected) in cases {
            assert_eq!(scrub_for(text, job), expected, "{text}");
        }
    }

    #[test]
    fn scrub_caps_the_length() {
        let long = "é".repeat(10_000);
        let out = scrub(&long);
        assert_eq!(out.chars().count(), SCRUBBED_MAX + 1);
        assert!(out.ends_with('…'));
        assert_eq!(scrub("short"), "short");
        let cut_in_a_number = format!("{}+14155550123", "x".repeat(SCRUBBED_MAX - 4));
        assert!(!scrub(&cut_in_a_number).contains("141"), "{}", scrub(&cut_in_a_number));
    }
}
