//! A provider's error code, as `error.provider_code` carries it into events, stdout and the outcome store.
//! Built only from the shape its provider documents: what a provider echoes back in that field (the number
//! it was asked to reach, the text it was asked to send) cannot ride along in it. A code that does not have
//! its provider's shape is dropped, never passed on (docs/providers/README.md).

use http::StatusCode;

/// A code of its provider's documented shape. Built only by the constructors below.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ProviderCode(String);

/// The longest name-shaped code taken: Infobip's and AWS's longest are about 40 characters.
const MAX_NAME: usize = 64;
/// The longest run of digits a name-shaped code may hold (`EC_10DLC_LIMIT_REACHED`): a number or a
/// one-time code cannot hide in one.
const MAX_DIGIT_RUN: usize = 3;

impl ProviderCode {
    /// Twilio's `code`: an integer of its error dictionary (`21211`, `30008`; the oldest are HTTP-like,
    /// `400`). The JSON number Twilio sends, or the same digits as a string.
    pub fn twilio(code: &serde_json::Value) -> Option<ProviderCode> {
        let number = match code {
            serde_json::Value::Number(n) => n.as_u64()?,
            serde_json::Value::String(s) if (3..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()?
            }
            _ => return None,
        };
        (100..=99_999)
            .contains(&number)
            .then(|| ProviderCode(number.to_string()))
    }

    /// Vonage's `messages[].status`: a number of its SMS API status table (`"0"` to `"33"`, at most three
    /// digits).
    pub fn vonage(status: &str) -> Option<ProviderCode> {
        let digits = (1..=3).contains(&status.len()) && status.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| ProviderCode(status.to_owned()))
    }

    /// Infobip's status or error `name` (`REJECTED_DESTINATION`, `EC_UNKNOWN_SUBSCRIBER`) or its
    /// `serviceException.messageId` (`UNAUTHORIZED`): capitals, digits and `_`, starting with a capital.
    pub fn infobip(name: &str) -> Option<ProviderCode> {
        let shaped = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        (shaped && is_short_name(name)).then(|| ProviderCode(name.to_owned()))
    }

    /// An AWS error `Code` (`InvalidParameter`, `Throttling`, `KMSThrottling`): letters and digits, with
    /// `.` between parts (`AWS.SimpleQueueService.NonExistentQueue`), starting with a letter.
    pub fn aws(code: &str) -> Option<ProviderCode> {
        let shaped = code.split('.').all(|part| {
            part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && part.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        (shaped && is_short_name(code)).then(|| ProviderCode(code.to_owned()))
    }

    /// An SMTP reply code (RFC 5321: three digits, the first 2 to 5), optionally followed by its enhanced
    /// status code (RFC 3463: `class.subject.detail`, e.g. `550 5.1.1`).
    pub fn smtp(reply: &str) -> Option<ProviderCode> {
        let (basic, enhanced) = match reply.split_once(' ') {
            Some((basic, enhanced)) => (basic, Some(enhanced)),
            None => (reply, None),
        };
        let basic_ok =
            basic.len() == 3 && basic.bytes().all(|b| b.is_ascii_digit()) && matches!(basic.as_bytes()[0], b'2'..=b'5');
        let enhanced_ok = enhanced.is_none_or(|e| {
            let parts: Vec<&str> = e.split('.').collect();
            let number = |p: &str, max: usize| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
            parts.len() == 3 && matches!(parts[0], "2" | "4" | "5") && number(parts[1], 3) && number(parts[2], 3)
        });
        (basic_ok && enhanced_ok).then(|| ProviderCode(reply.to_owned()))
    }

    /// Meta's Graph API error `code`: an integer of its table (`100`, `190`, `130429`, `131026`), at most six
    /// digits.
    pub fn meta(code: u64) -> ProviderCode {
        ProviderCode(code.min(999_999).to_string())
    }

    /// An HTTP status, for the providers whose code it is (Plivo, the webhook).
    pub fn http_status(status: StatusCode) -> ProviderCode {
        ProviderCode(status.as_u16().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most [`MAX_NAME`] characters and no digit run longer than [`MAX_DIGIT_RUN`].
fn is_short_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name
            .split(|c: char| !c.is_ascii_digit())
            .all(|run| run.len() <= MAX_DIGIT_RUN)
}

impl std::ops::Deref for ProviderCode {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ProviderCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the outside attack saw a Twilio 400 carry in `code`, and its kin: never a code.
    const ECHOES: &[&str] = &[
        "21211 +14155550400 735162",
        "+14155550400",
        "14155550400",
        "735162",
        "21211+14155550400",
        "",
        " 21211",
        "21211\n",
    ];

    #[test]
    fn twilio_codes_are_the_integers_of_its_error_dictionary() {
        assert_eq!(ProviderCode::twilio(&json!(21211)).as_deref(), Some("21211"));
        assert_eq!(ProviderCode::twilio(&json!(30008)).as_deref(), Some("30008"));
        assert_eq!(ProviderCode::twilio(&json!(400)).as_deref(), Some("400"));
        assert_eq!(ProviderCode::twilio(&json!("20429")).as_deref(), Some("20429"));
        for echo in ECHOES {
            assert_eq!(ProviderCode::twilio(&json!(echo)), None, "{echo:?}");
        }
        for not_a_code in [
            json!(14155550400u64),
            json!(735162),
            json!(-21211),
            json!(21211.5),
            json!(99),
            json!(null),
            json!([21211]),
            json!({"code": 21211}),
            json!("021211"),
        ] {
            assert_eq!(ProviderCode::twilio(&not_a_code), None, "{not_a_code}");
        }
    }

    #[test]
    fn vonage_codes_are_its_status_numbers() {
        for status in ["0", "1", "15", "29", "101"] {
            assert_eq!(ProviderCode::vonage(status).as_deref(), Some(status));
        }
        for echo in ECHOES.iter().copied().chain(["1a", "-1", "4155"]) {
            assert_eq!(ProviderCode::vonage(echo), None, "{echo:?}");
        }
    }

    #[test]
    fn infobip_codes_are_its_status_and_error_names() {
        for name in [
            "REJECTED_DESTINATION",
            "REJECTED_ROUTE_NOT_AVAILABLE",
            "EC_INVALID_DESTINATION_ADDRESS",
            "EC_10DLC_LIMIT_REACHED",
            "EC_ACC_NOT_2_WAY",
            "UNAUTHORIZED",
            "TOO_MANY_REQUESTS",
        ] {
            assert_eq!(ProviderCode::infobip(name).as_deref(), Some(name));
        }
        let long = "A".repeat(65);
        for echo in ECHOES.iter().copied().chain([
            "REJECTED_14155550400",
            "EC_735162",
            "rejected_destination",
            "_REJECTED",
            "REJECTED DESTINATION",
            "REJECTED-DESTINATION",
            long.as_str(),
        ]) {
            assert_eq!(ProviderCode::infobip(echo), None, "{echo:?}");
        }
    }

    #[test]
    fn aws_codes_are_alphanumeric_names() {
        for code in [
            "InvalidParameter",
            "Throttling",
            "KMSThrottling",
            "AWS.SimpleQueueService.NonExistentQueue",
        ] {
            assert_eq!(ProviderCode::aws(code).as_deref(), Some(code));
        }
        for echo in ECHOES.iter().copied().chain([
            "InvalidParameter14155550400",
            "Invalid Parameter",
            "Invalid_Parameter",
            ".Throttling",
            "Throttling.",
            "1Throttling",
        ]) {
            assert_eq!(ProviderCode::aws(echo), None, "{echo:?}");
        }
    }

    #[test]
    fn smtp_codes_are_reply_codes_with_an_optional_enhanced_status() {
        for reply in ["550", "451", "250", "550 5.1.1", "452 4.2.2", "554 5.7.123"] {
            assert_eq!(ProviderCode::smtp(reply).as_deref(), Some(reply));
        }
        for echo in ECHOES.iter().copied().chain([
            "650",
            "55",
            "5500",
            "550 5.1",
            "550 6.1.1",
            "550 5.1.1 jane@example.com",
            "550 5.1.1234",
            "550  5.1.1",
        ]) {
            assert_eq!(ProviderCode::smtp(echo), None, "{echo:?}");
        }
    }

    #[test]
    fn http_statuses_are_their_three_digits_and_codes_serialize_as_text() {
        let code = ProviderCode::http_status(StatusCode::FORBIDDEN);
        assert_eq!(code.as_str(), "403");
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"403\"");
        assert_eq!(code.to_string(), "403");
    }
}
