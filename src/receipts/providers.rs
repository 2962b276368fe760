//! Delivery reports of Vonage, Plivo and Infobip (docs/receipts.md "Vonage, Plivo and Infobip"): how each provider
//! authenticates its reports, and how its statuses map to those of docs/receipts.md. The routes are in `http::reports`.

use base64::Engine;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::status::{Reported, Status};
use crate::config::{InfobipConfig, VonageSignatureMethod};

/// Equal in constant time (for equal lengths; a length says nothing of a secret's content).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A provider error code that means "no error" (Vonage's `0`, Plivo's `000`): not an error code at all.
fn error_code(code: &str) -> Option<String> {
    let code = code.trim();
    (!code.is_empty() && !code.bytes().all(|b| b == b'0')).then(|| code.to_owned())
}

/// Vonage SMS API delivery receipts
/// (https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts), signed as
/// https://developer.vonage.com/en/getting-started/concepts/signing-messages describes and the `vonage`
/// Python SDK (3.x, `Client.signature`) computes.
pub mod vonage {
    use super::*;

    /// How far a signed report's `timestamp` may be from now: Vonage's documented five minutes.
    pub const TIMESTAMP_TOLERANCE_S: u64 = 5 * 60;

    /// Why a report's signature does not hold.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Refusal {
        /// No `sig`, or not the one the secret gives.
        Signature,
        /// Signed, but its `timestamp` is missing or more than five minutes away.
        Expired,
    }

    /// The text Vonage signs: every parameter but `sig`, sorted by name, as `&name=value`, with `&` and
    /// `=` in values replaced by `_`. A repeated name counts once, its last value (as the SDK's dict).
    fn signed_text(params: &[(String, String)]) -> String {
        let sorted: std::collections::BTreeMap<&str, &str> = params
            .iter()
            .filter(|(k, _)| k != "sig")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut text = String::new();
        for (key, value) in sorted {
            text.push('&');
            text.push_str(key);
            text.push('=');
            text.push_str(&value.replace(['&', '='], "_"));
        }
        text
    }

    fn hmac_hex<M: Mac + KeyInit>(secret: &[u8], text: &str) -> String {
        let mut mac = <M as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(text.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The lowercase hex `sig` of `params` (without their own `sig`).
    pub fn signature(method: VonageSignatureMethod, secret: &str, params: &[(String, String)]) -> String {
        use md5::Digest;
        let text = signed_text(params);
        let secret = secret.as_bytes();
        match method {
            VonageSignatureMethod::Md5hash => {
                let mut hash = md5::Md5::new();
                hash.update(text.as_bytes());
                hash.update(secret);
                hex(&hash.finalize())
            }
            VonageSignatureMethod::Md5 => hmac_hex::<hmac::Hmac<md5::Md5>>(secret, &text),
            VonageSignatureMethod::Sha1 => hmac_hex::<hmac::Hmac<sha1::Sha1>>(secret, &text),
            VonageSignatureMethod::Sha256 => hmac_hex::<hmac::Hmac<sha2::Sha256>>(secret, &text),
            VonageSignatureMethod::Sha512 => hmac_hex::<hmac::Hmac<sha2::Sha512>>(secret, &text),
        }
    }

    /// Whether a report's `sig` is the one `secret` gives (compared case-insensitively, in constant time),
    /// with its `timestamp` (Unix seconds) within [`TIMESTAMP_TOLERANCE_S`] of `now`.
    pub fn check(
        method: VonageSignatureMethod,
        secret: &str,
        params: &[(String, String)],
        now: u64,
    ) -> Result<(), Refusal> {
        let field = |name: &str| params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let claimed = field("sig").unwrap_or("").to_ascii_lowercase();
        if claimed.is_empty() || !same(claimed.as_bytes(), signature(method, secret, params).as_bytes()) {
            return Err(Refusal::Signature);
        }
        match field("timestamp").and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(at) if at.abs_diff(now) <= TIMESTAMP_TOLERANCE_S => Ok(()),
            _ => Err(Refusal::Expired),
        }
    }

    /// A receipt's `status`: `delivered`; `expired` and `failed` (not delivered); `rejected` (refused
    /// before delivery: failed); `accepted` and `buffered` on the way (intermediate); `unknown` and
    /// anything else say nothing.
    pub fn status(text: &str) -> Option<Status> {
        match text {
            "delivered" => Some(Status::Delivered),
            "expired" | "failed" => Some(Status::Undelivered),
            "rejected" => Some(Status::Failed),
            "accepted" | "buffered" => Some(Status::Accepted),
            _ => None,
        }
    }

    /// `err-code`, where it is one (`0` is "delivered").
    pub fn error_code(code: &str) -> Option<String> {
        super::error_code(code)
    }
}

/// Plivo message status callbacks (https://www.plivo.com/docs/messaging/api/message#the-message-object),
/// signed with `X-Plivo-Signature-V3` and its nonce
/// (https://www.plivo.com/docs/messaging/concepts/signature-validation) exactly as plivo-python's
/// `plivo.utils.signature_v3.validate_v3_signature` checks them.
pub mod plivo {
    use super::*;
    use std::collections::BTreeMap;

    /// Parameters by name, each name's values sorted (plivo-python sorts a list's values).
    fn grouped<'a>(pairs: impl Iterator<Item = (String, String)> + 'a) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k).or_default().push(v);
        }
        for values in map.values_mut() {
            values.sort();
        }
        map
    }

    /// `url` split as Python's `urlparse` splits it: everything before the query (the last path
    /// segment's `;params` dropped, as `urlunparse` with empty params does), and the query; the
    /// fragment dropped.
    fn split(url: &str) -> (&str, &str) {
        let url = url.split_once('#').map_or(url, |(u, _)| u);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        // `;params` belongs to the path's last segment only, and only after the authority.
        let path_start = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[path_start..].find('/').map_or(base.len(), |i| path_start + i);
        let last_segment = base[path_start..].rfind('/').map_or(path_start, |i| path_start + i);
        let base = base[last_segment..]
            .find(';')
            .map_or(base, |i| &base[..last_segment + i]);
        (base, query)
    }

    /// The text Plivo signs for a POST to `url` with form `params` (before `.` and the nonce): the URL
    /// without its query, then `?`, the URL's own query sorted as `k=v&…` followed by `.` when it has one,
    /// then every parameter as `namevalue`, sorted by name (a repeated name's values sorted). Without
    /// parameters: the URL with its sorted query, if any.
    pub fn signed_text(url: &str, params: &[(String, String)]) -> String {
        let (base, query) = split(url);
        let query = grouped(url::form_urlencoded::parse(query.as_bytes()).into_owned());
        let query: Vec<String> = query
            .iter()
            .flat_map(|(k, values)| values.iter().map(move |v| format!("{k}={v}")))
            .collect();
        let query = query.join("&");
        let mut text = base.to_owned();
        if params.is_empty() {
            if !query.is_empty() {
                text.push('?');
                text.push_str(&query);
            }
            return text;
        }
        text.push('?');
        if !query.is_empty() {
            text.push_str(&query);
            text.push('.');
        }
        for (key, values) in grouped(params.iter().cloned()) {
            for value in values {
                text.push_str(&key);
                text.push_str(&value);
            }
        }
        text
    }

    /// `X-Plivo-Signature-V3` of a POST to `url` with `params`: base64 of HMAC-SHA256 keyed with the auth
    /// token over the signed text, `.` and the nonce.
    pub fn signature(auth_token: &str, url: &str, params: &[(String, String)], nonce: &str) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(auth_token.as_bytes()).expect("any key length");
        mac.update(signed_text(url, params).as_bytes());
        mac.update(b".");
        mac.update(nonce.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// Whether one of the header's comma-separated signatures (Plivo sends several while an auth token
    /// is being rotated) is ours, each compared in constant time.
    pub fn signature_holds(
        auth_token: &str,
        url: &str,
        params: &[(String, String)],
        nonce: &str,
        header: &str,
    ) -> bool {
        if nonce.is_empty() || header.is_empty() {
            return false;
        }
        let expected = signature(auth_token, url, params, nonce);
        header
            .split(',')
            .any(|claimed| same(claimed.as_bytes(), expected.as_bytes()))
    }

    /// A callback's `Status`: `queued` and `sent` on the way; `delivered`; `undelivered` (the carrier
    /// could not deliver it); `failed` and `rejected` (Plivo could not send it).
    pub fn status(text: &str) -> Option<Status> {
        match text {
            "queued" => Some(Status::Queued),
            "sent" => Some(Status::Sent),
            "delivered" => Some(Status::Delivered),
            "undelivered" => Some(Status::Undelivered),
            "failed" | "rejected" => Some(Status::Failed),
            _ => None,
        }
    }

    /// `ErrorCode`, where it is one (`000` is "no error").
    pub fn error_code(code: &str) -> Option<String> {
        super::error_code(code)
    }
}

/// Infobip delivery reports pushed to `notifyUrl`: SMS
/// (https://www.infobip.com/docs/api/channels/sms/sms-messaging/logs-and-status-reports/receive-outbound-sms-message-report)
/// and voice text-to-speech (https://www.infobip.com/docs/api/channels/voice/voice-reports-and-logs),
/// both `{"results": [{"messageId", "status": {"groupName", "name", …}, "error": {…}, …}]}`. Infobip does
/// not sign them: herald's token in the URL is the proof.
pub mod infobip {
    use super::*;
    use serde::Deserialize;

    /// The token of a report's URL query is the configured one (compared in constant time).
    pub fn token_holds(query: &str, token: &str) -> bool {
        let mut found = url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == InfobipConfig::TOKEN_PARAM);
        match (found.next(), found.next()) {
            (Some((_, claimed)), None) => !token.is_empty() && same(claimed.as_bytes(), token.as_bytes()),
            _ => false,
        }
    }

    #[derive(Debug, Deserialize)]
    pub struct Reports {
        pub results: Vec<Report>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Report {
        pub message_id: String,
        pub status: ReportStatus,
        #[serde(default)]
        pub error: Option<ReportError>,
        /// Present in voice reports only (the call's times and duration).
        #[serde(default)]
        voice_call: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        duration: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        file_duration: Option<serde::de::IgnoredAny>,
        /// Present in SMS reports only.
        #[serde(default)]
        sms_count: Option<serde::de::IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReportStatus {
        pub group_name: String,
        #[serde(default)]
        pub name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReportError {
        #[serde(default)]
        pub group_name: String,
        #[serde(default)]
        pub id: Option<i64>,
        #[serde(default)]
        pub name: String,
    }

    impl Report {
        /// The status in both vocabularies, the likelier first: a report with a call's fields is a
        /// voice report. The message's own channel decides which one applies (the other is ignored).
        pub fn reported(&self) -> Vec<Reported> {
            let error = self.error.as_ref().map_or("", |e| e.name.as_str());
            let sms = sms_status(&self.status.group_name).map(Reported::message);
            let voice = voice_status(&self.status.group_name, error).map(Reported::call);
            let looks_voice = self.sms_count.is_none()
                && (self.voice_call.is_some() || self.duration.is_some() || self.file_duration.is_some());
            let ordered = if looks_voice { [voice, sms] } else { [sms, voice] };
            ordered.into_iter().flatten().collect()
        }

        /// The error's name (`EC_ABSENT_SUBSCRIBER`), else its id; none for Infobip's "no error"
        /// (group `OK`, id 0, `NO_ERROR`, and a voice call's `VOICE_ANSWERED`).
        pub fn error_code(&self) -> Option<String> {
            let e = self.error.as_ref()?;
            if e.group_name == "OK" || e.id == Some(0) || matches!(e.name.as_str(), "" | "NO_ERROR") {
                return None;
            }
            if crate::receipts::is_error_code(&e.name) {
                Some(e.name.clone())
            } else {
                e.id.map(|id| id.to_string())
            }
        }
    }

    /// An SMS report's status group (https://www.infobip.com/docs/essentials/response-status-and-error-codes):
    /// DELIVERED; UNDELIVERABLE and EXPIRED (not delivered); REJECTED (never sent: failed); PENDING and
    /// ACCEPTED on the way.
    pub fn sms_status(group: &str) -> Option<Status> {
        match group {
            "DELIVERED" => Some(Status::Delivered),
            "UNDELIVERABLE" | "EXPIRED" => Some(Status::Undelivered),
            "REJECTED" => Some(Status::Failed),
            "PENDING" => Some(Status::Sent),
            "ACCEPTED" => Some(Status::Accepted),
            _ => None,
        }
    }

    /// A voice report's status group: DELIVERED is an answered call (`completed`); a call that did not
    /// get through is `busy` or `no-answer` when its error says so, else `failed`; PENDING and ACCEPTED
    /// on the way.
    pub fn voice_status(group: &str, error: &str) -> Option<Status> {
        match group {
            "DELIVERED" => Some(Status::Completed),
            "UNDELIVERABLE" | "EXPIRED" | "REJECTED" if error.contains("BUSY") => Some(Status::Busy),
            "UNDELIVERABLE" | "EXPIRED" | "REJECTED" if error.contains("NO_ANSWER") => Some(Status::NoAnswer),
            "UNDELIVERABLE" | "EXPIRED" | "REJECTED" => Some(Status::Failed),
            "PENDING" => Some(Status::Initiated),
            "ACCEPTED" => Some(Status::Queued),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Channel;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// A delivery receipt as Vonage sends it, with a value holding `&` and `=`.
    fn vonage_receipt() -> Vec<(String, String)> {
        pairs(&[
            ("msisdn", "447700900000"),
            ("to", "AcmeInc"),
            ("network-code", "12345"),
            ("messageId", "0A0000001234567B"),
            ("price", "0.03330000"),
            ("status", "delivered"),
            ("scts", "2001011400"),
            ("err-code", "0"),
            ("api-key", "abcd1234"),
            ("message-timestamp", "2020-01-01 12:00:00"),
            ("timestamp", "1582650446"),
            ("nonce", "ec11dd3e-1e7f-4db5-9467-82b02cd223b9"),
            ("client-ref", "a&b=c"),
        ])
    }

    /// Known answers computed with the `vonage` 3.18.0 Python SDK's `Client.signature` for each method.
    #[test]
    fn vonage_signatures_are_the_sdks() {
        use VonageSignatureMethod::*;
        let params = vonage_receipt();
        for (method, sig) in [
            (Md5hash, "e82a868a8060ba27afe465b7034da10e"),
            (Md5, "150bc427d8cd2eaf60af15b759149845"),
            (Sha1, "6290b5aa4b0db436a130cca289253bffbcecd9d3"),
            (
                Sha256,
                "4ce2ee9918a32e8ddb6c1d3a0c23a358acabdef2e1617e9688725d71ed8a1fe6",
            ),
            (
                Sha512,
                "0e5f3f71f7daae2ae6e62626cbccf6e6c624b8f95313e5d2648c21904f7fea1636acf5d509a009ea9118362fa597e55fadc686da1354016b74cc54c09c9974bd",
            ),
        ] {
            assert_eq!(vonage::signature(method, "s3cr3t-Sig", &params), sig, "{method:?}");
            let mut signed = params.clone();
            // Compared case-insensitively; the `sig` itself is not signed.
            signed.push(("sig".into(), sig.to_ascii_uppercase()));
            assert_eq!(vonage::check(method, "s3cr3t-Sig", &signed, 1582650446), Ok(()));
            assert_eq!(vonage::check(method, "s3cr3t-Sig", &signed, 1582650446 + 300), Ok(()));
            assert_eq!(
                vonage::check(method, "s3cr3t-Sig", &signed, 1582650446 + 301),
                Err(vonage::Refusal::Expired)
            );
            assert_eq!(
                vonage::check(method, "other", &signed, 1582650446),
                Err(vonage::Refusal::Signature)
            );
            let mut tampered = signed.clone();
            tampered[5].1 = "failed".into();
            assert_eq!(
                vonage::check(method, "s3cr3t-Sig", &tampered, 1582650446),
                Err(vonage::Refusal::Signature)
            );
            assert_eq!(
                vonage::check(method, "s3cr3t-Sig", &params, 1582650446),
                Err(vonage::Refusal::Signature)
            );
        }
        // Signed without a timestamp: refused as expired, whatever the signature.
        let mut untimed: Vec<_> = params.into_iter().filter(|(k, _)| k != "timestamp").collect();
        let sig = vonage::signature(Sha256, "s3cr3t-Sig", &untimed);
        untimed.push(("sig".into(), sig));
        assert_eq!(
            vonage::check(Sha256, "s3cr3t-Sig", &untimed, 1582650446),
            Err(vonage::Refusal::Expired)
        );
    }

    #[test]
    fn vonage_statuses_map_row_by_row() {
        for (text, status) in [
            ("delivered", Some(Status::Delivered)),
            ("expired", Some(Status::Undelivered)),
            ("failed", Some(Status::Undelivered)),
            ("rejected", Some(Status::Failed)),
            ("accepted", Some(Status::Accepted)),
            ("buffered", Some(Status::Accepted)),
            ("unknown", None),
            ("Delivered", None),
            ("", None),
        ] {
            assert_eq!(vonage::status(text), status, "{text}");
        }
        assert_eq!(vonage::error_code("0"), None);
        assert_eq!(vonage::error_code("6"), Some("6".into()));
        assert_eq!(vonage::error_code(""), None);
    }

    fn plivo_callback() -> Vec<(String, String)> {
        pairs(&[
            ("MessageUUID", "db3ce55a-7f1d-11e1-8ea7-1231380bc196"),
            ("Status", "delivered"),
            ("To", "14155550123"),
            ("From", "14155550100"),
            ("ErrorCode", "000"),
            ("TotalRate", "0.0035"),
            ("Units", "1"),
        ])
    }

    /// Known answers computed with plivo-python 4.63's `construct_post_url` and `get_signature_v3`.
    #[test]
    fn plivo_v3_signatures_are_plivo_pythons() {
        let url = "https://herald.example.test/providers/plivo/status";
        let params = plivo_callback();
        assert_eq!(
            plivo::signed_text(url, &params),
            "https://herald.example.test/providers/plivo/status?ErrorCode000From14155550100MessageUUIDdb3ce55a-7f1d-11e1-8ea7-1231380bc196StatusdeliveredTo14155550123TotalRate0.0035Units1"
        );
        let sig = "4KgpRySiwad1m57jFAlQnOVizqPJyd7kzD98htG2CM0=";
        assert_eq!(
            plivo::signature("plivo-auth-token", url, &params, "05429567804466091622"),
            sig
        );
        assert_eq!(
            plivo::signature("plivo-auth-token", url, &[], "n1"),
            "JpdVj6ET+vfbi/5B0LZqZaormNQuqPZmIGs8c6U4stE="
        );
        // The URL's own query, sorted and decoded, then `.`; its fragment dropped; a port kept as written.
        let queried = "https://herald.example.test:8443/providers/plivo/status?b=2&a=x%20y&a=1#frag";
        assert_eq!(
            plivo::signature("plivo-auth-token", queried, &params, "05429567804466091622"),
            "XCQ9KMgg9EPIMVBwCErO8VVJJn1mGRz2m0NJIFfI7Tc="
        );
        assert_eq!(
            plivo::signature("plivo-auth-token", queried, &[], "n1"),
            "E0OI91F3RI0qOLgYVFUJQ2LxoCNcH0pZyfHEVKPA35Y="
        );
        // Only the last path segment's `;params` go; a repeated name's values are sorted.
        assert_eq!(
            plivo::signed_text(
                "https://h.test/a;x/b;p?q=1",
                &pairs(&[("k", "v"), ("a", "2"), ("a", "1")])
            ),
            "https://h.test/a;x/b?q=1.a1a2kv"
        );
        let holds = |header: &str, nonce: &str, params: &[(String, String)]| {
            plivo::signature_holds("plivo-auth-token", url, params, nonce, header)
        };
        assert!(holds(sig, "05429567804466091622", &params));
        // Several signatures, comma-separated (a token being rotated): one of them is enough.
        assert!(holds(&format!("bm90IGl0,{sig}"), "05429567804466091622", &params));
        assert!(!holds(&format!("bm90IGl0, {sig}"), "05429567804466091622", &params));
        assert!(!holds(sig, "05429567804466091623", &params));
        assert!(!holds(sig, "", &params));
        assert!(!holds("", "05429567804466091622", &params));
        let mut tampered = params.clone();
        tampered[1].1 = "undelivered".into();
        assert!(!holds(sig, "05429567804466091622", &tampered));
    }

    #[test]
    fn plivo_statuses_map_row_by_row() {
        for (text, status) in [
            ("queued", Some(Status::Queued)),
            ("sent", Some(Status::Sent)),
            ("delivered", Some(Status::Delivered)),
            ("undelivered", Some(Status::Undelivered)),
            ("failed", Some(Status::Failed)),
            ("rejected", Some(Status::Failed)),
            ("received", None),
            ("Delivered", None),
        ] {
            assert_eq!(plivo::status(text), status, "{text}");
        }
        assert_eq!(plivo::error_code("000"), None);
        assert_eq!(plivo::error_code("200"), Some("200".into()));
    }

    #[test]
    fn infobip_tokens_are_checked() {
        assert!(infobip::token_holds("token=t0k%2Fen", "t0k/en"));
        assert!(infobip::token_holds("a=1&token=t0k", "t0k"));
        assert!(!infobip::token_holds("token=t0k&token=t0k", "t0k"));
        assert!(!infobip::token_holds("token=t0", "t0k"));
        assert!(!infobip::token_holds("", "t0k"));
        assert!(!infobip::token_holds("token=", ""));
    }

    #[test]
    fn infobip_status_groups_map_row_by_row() {
        for (group, sms) in [
            ("DELIVERED", Some(Status::Delivered)),
            ("UNDELIVERABLE", Some(Status::Undelivered)),
            ("EXPIRED", Some(Status::Undelivered)),
            ("REJECTED", Some(Status::Failed)),
            ("PENDING", Some(Status::Sent)),
            ("ACCEPTED", Some(Status::Accepted)),
            ("OK", None),
            ("delivered", None),
        ] {
            assert_eq!(infobip::sms_status(group), sms, "{group}");
        }
        for (group, error, voice) in [
            ("DELIVERED", "VOICE_ANSWERED", Some(Status::Completed)),
            ("UNDELIVERABLE", "EC_VOICE_USER_BUSY", Some(Status::Busy)),
            ("UNDELIVERABLE", "EC_VOICE_NO_ANSWER", Some(Status::NoAnswer)),
            ("EXPIRED", "EC_VOICE_NO_ANSWER", Some(Status::NoAnswer)),
            ("UNDELIVERABLE", "EC_VOICE_ERROR_UNKNOWN", Some(Status::Failed)),
            ("REJECTED", "", Some(Status::Failed)),
            ("PENDING", "", Some(Status::Initiated)),
            ("ACCEPTED", "", Some(Status::Queued)),
            ("NOPE", "", None),
        ] {
            assert_eq!(infobip::voice_status(group, error), voice, "{group} {error}");
        }
    }

    #[test]
    fn infobip_reports_parse_with_their_channel_first_and_their_error() {
        let body = br#"{"results":[
            {"bulkId":"b1","messageId":"m1","to":"41793026727","sentAt":"2019-11-09T16:00:00.000+0000",
             "doneAt":"2019-11-09T16:00:00.000+0000","smsCount":1,"mccMnc":"22801","callbackData":"x",
             "price":{"pricePerMessage":0.01,"currency":"EUR"},
             "status":{"groupId":2,"groupName":"UNDELIVERABLE","id":9,"name":"UNDELIVERABLE_NOT_DELIVERED","description":"d"},
             "error":{"groupId":1,"groupName":"HANDSET_ERRORS","id":27,"name":"EC_ABSENT_SUBSCRIBER","description":"d","permanent":false}},
            {"messageId":"m2","to":"41793026727","duration":10,"fileDuration":19.3,
             "status":{"groupId":3,"groupName":"DELIVERED","id":5,"name":"DELIVERED_TO_HANDSET","description":"d"},
             "error":{"groupId":0,"groupName":"OK","id":5000,"name":"VOICE_ANSWERED","description":"d","permanent":true}},
            {"messageId":"m3","status":{"groupName":"DELIVERED"},"error":{"groupName":"OK","id":0,"name":"NO_ERROR"}}
        ]}"#;
        let reports: infobip::Reports = serde_json::from_slice(body).unwrap();
        let [sms, voice, bare] = &reports.results[..] else {
            panic!("three reports")
        };
        assert_eq!(
            sms.reported(),
            [Reported::message(Status::Undelivered), Reported::call(Status::Failed)]
        );
        assert_eq!(sms.error_code().as_deref(), Some("EC_ABSENT_SUBSCRIBER"));
        assert_eq!(
            voice.reported(),
            [Reported::call(Status::Completed), Reported::message(Status::Delivered)]
        );
        assert_eq!(voice.error_code(), None);
        assert_eq!(bare.reported()[0], Reported::message(Status::Delivered));
        assert_eq!(bare.error_code(), None);
        // A name longer than an event's error code may be: its id instead.
        let long: infobip::Report = serde_json::from_value(serde_json::json!({
            "messageId": "m4", "status": {"groupName": "UNDELIVERABLE"},
            "error": {"groupName": "HANDSET_ERRORS", "id": 21, "name": "EC_SM_DF_MEMORY_CAPACITY_EXCEEDED_X"},
        }))
        .unwrap();
        assert_eq!(long.error_code().as_deref(), Some("21"));
        // Each applies to its own channel only.
        assert!(voice.reported()[0].applies_to(Channel::Voice));
        assert!(!voice.reported()[0].applies_to(Channel::Sms));
    }
}
