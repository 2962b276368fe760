//! The hashes that keep a private value (a phone number or range, an email address, an IP, a user or job
//! id) out of memory, Redis keys and labels in the clear.

use std::hash::{DefaultHasher, Hash, Hasher};

use sha2::{Digest, Sha256};

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
}
