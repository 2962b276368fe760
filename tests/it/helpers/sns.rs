//! An Amazon SNS `Publish` endpoint written from botocore's SNS model (`sns/2010-03-31/service-2.json`: the
//! `Publish` operation, `PublishInput`'s members, its errors and each error shape's `code` and
//! `httpStatusCode`), AWS's Query API and Signature Version 4 documentation
//! (<https://docs.aws.amazon.com/sns/latest/api/API_Publish.html>,
//! <https://docs.aws.amazon.com/sns/latest/api/CommonErrors.html>,
//! <https://docs.aws.amazon.com/sns/latest/dg/sms_publish-to-phone.html>).
//!
//! It checks every request as AWS does — method, path, content type, the SigV4 signature, `Action`,
//! `Version`, `PhoneNumber`, `Message`, each `MessageAttributes.entry.N`, nothing else — and answers as AWS
//! does: `PublishResponse` XML, or `ErrorResponse` XML (`Type`, `Code`, `Message`, `RequestId`) with the
//! code's HTTP status. A request AWS would refuse is answered with AWS's refusal and recorded in
//! [`SnsSpec::problems`], which each test asserts empty.

use std::sync::{Arc, Mutex};

use wiremock::{MockServer, Request, Respond, ResponseTemplate};

/// AWS Signature Version 4 written from AWS's description of it, independent of `aws-sigv4`: the test server
/// checks herald's signature with it. Held to AWS's published test suite vectors
/// (`the_test_verifier_reproduces_aws_published_sigv4_vectors`).
pub mod sigv4 {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    pub fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn sha256_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// `headers`: (lowercase name, value) of exactly the signed headers.
    pub fn canonical_request(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        payload: &[u8],
    ) -> String {
        let mut headers = headers.to_vec();
        headers.sort();
        let canonical: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        format!(
            "{method}\n{path}\n{query}\n{canonical}\n{}\n{}",
            signed.join(";"),
            sha256_hex(payload)
        )
    }

    pub fn string_to_sign(amz_date: &str, region: &str, service: &str, canonical_request: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{}/{region}/{service}/aws4_request\n{}",
            &amz_date[..8],
            sha256_hex(canonical_request.as_bytes())
        )
    }

    pub fn signature(secret: &str, amz_date: &str, region: &str, service: &str, string_to_sign: &str) -> String {
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), &amz_date[..8]);
        let k_region = hmac(&k_date, region);
        let k_service = hmac(&k_region, service);
        let k_signing = hmac(&k_service, "aws4_request");
        hex(&hmac(&k_signing, string_to_sign))
    }
}

/// An AWS refusal: its wire code and text.
type Refusal = (&'static str, String);

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a request's SigV4 `Authorization` as AWS does; the signed header names, or AWS's refusal.
pub fn check_sigv4(r: &Request, access_key: &str, secret: &str, region: &str) -> Result<Vec<String>, Refusal> {
    let refuse = |code, text: &str| Err((code, text.to_owned()));
    let Some(authorization) = header(r, "authorization") else {
        return refuse("MissingAuthenticationToken", "Request is missing Authentication Token");
    };
    let Some(rest) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return refuse("IncompleteSignature", "Unsupported signature algorithm");
    };
    let part = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let (Some(credential), Some(signed), Some(signature)) =
        (part("Credential"), part("SignedHeaders"), part("Signature"))
    else {
        return refuse(
            "IncompleteSignature",
            "Authorization header requires Credential, SignedHeaders, Signature",
        );
    };
    let Some(amz_date) = header(r, "x-amz-date").map(str::to_owned) else {
        return refuse(
            "IncompleteSignature",
            "Authorization header requires existence of a valid Date or X-Amz-Date header",
        );
    };
    let Ok(at) = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ") else {
        return refuse("IncompleteSignature", "X-Amz-Date must be in the ISO8601 Long Format");
    };
    // AWS refuses a signature more than 5 minutes from its clock (and one older than 15 as expired).
    if (chrono::Utc::now().naive_utc() - at).num_seconds().abs() > 300 {
        return refuse("RequestExpired", "Request has expired");
    }
    if credential != format!("{access_key}/{}/{region}/sns/aws4_request", &amz_date[..8]) {
        return refuse(
            "InvalidClientTokenId",
            "The security token included in the request is invalid",
        );
    }
    let signed: Vec<String> = signed.split(';').map(str::to_owned).collect();
    for required in ["host", "x-amz-date"] {
        if !signed.iter().any(|s| s == required) {
            return refuse(
                "SignatureDoesNotMatch",
                &format!("'{required}' must be a signed header"),
            );
        }
    }
    let mut headers = Vec::new();
    for name in &signed {
        let Some(value) = header(r, name) else {
            return refuse("SignatureDoesNotMatch", &format!("signed header {name} is missing"));
        };
        headers.push((name.clone(), value.to_owned()));
    }
    let creq = sigv4::canonical_request(
        r.method.as_str(),
        r.url.path(),
        r.url.query().unwrap_or(""),
        &headers,
        &r.body,
    );
    let sts = sigv4::string_to_sign(&amz_date, region, "sns", &creq);
    if signature != sigv4::signature(secret, &amz_date, region, "sns", &sts) {
        return refuse(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    Ok(signed)
}

/// [`check_sigv4`] that fails the test on a refusal.
pub fn verify_sigv4(r: &Request, access_key: &str, secret: &str, region: &str) -> Vec<String> {
    check_sigv4(r, access_key, secret, region).unwrap_or_else(|(code, text)| panic!("{code}: {text}"))
}

/// Each error code and its HTTP status: `Publish`'s from the model's error shapes, then AWS's common
/// errors. 5xx are `Receiver` faults, the rest `Sender`.
pub const ERRORS: &[(&str, u16)] = &[
    ("InvalidParameter", 400),
    ("ParameterValueInvalid", 400),
    ("InternalError", 500),
    ("NotFound", 404),
    ("EndpointDisabled", 400),
    ("PlatformApplicationDisabled", 400),
    ("AuthorizationError", 403),
    ("KMSDisabled", 400),
    ("KMSInvalidState", 400),
    ("KMSNotFound", 400),
    ("KMSOptInRequired", 403),
    ("KMSThrottling", 400),
    ("KMSAccessDenied", 400),
    ("InvalidSecurity", 403),
    ("ValidationException", 400),
    ("OptedOut", 400),
    ("Throttled", 429),
    ("AccessDeniedException", 400),
    ("IncompleteSignature", 400),
    ("InternalFailure", 500),
    ("InvalidAction", 400),
    ("InvalidClientTokenId", 403),
    ("NotAuthorized", 400),
    ("OptInRequired", 403),
    ("RequestExpired", 400),
    ("ServiceUnavailable", 503),
    ("ThrottlingException", 400),
    ("Throttling", 400),
    ("ValidationError", 400),
    ("MissingAuthenticationToken", 403),
    ("SignatureDoesNotMatch", 403),
    ("ExpiredToken", 403),
    ("MissingAction", 400),
    ("MissingParameter", 400),
    ("MalformedQueryString", 404),
    ("InvalidQueryParameter", 400),
    ("InvalidParameterValue", 400),
    ("InvalidParameterCombination", 400),
];

/// The HTTP status AWS answers `code` with.
pub fn status_of(code: &str) -> u16 {
    ERRORS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| panic!("{code} is not a documented SNS error"), |(_, s)| *s)
}

/// `ErrorResponse` as AWS writes it for the Query protocol.
pub fn error_response(code: &str, text: &str) -> ResponseTemplate {
    let status = status_of(code);
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let text = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    ResponseTemplate::new(status).set_body_raw(
        format!(
            "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n  <Error>\n    <Type>{kind}</Type>\n    \
             <Code>{code}</Code>\n    <Message>{text}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n</ErrorResponse>\n",
            uuid::Uuid::new_v4()
        ),
        "text/xml",
    )
}

/// `PublishResponse` as AWS writes it.
pub fn publish_response(message_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        format!(
            "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n  <PublishResult>\n    \
             <MessageId>{message_id}</MessageId>\n  </PublishResult>\n  <ResponseMetadata>\n    \
             <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</PublishResponse>\n",
            uuid::Uuid::new_v4()
        ),
        "text/xml",
    )
}

/// What herald must send: the account's keys and the settings that shape the request.
#[derive(Clone, Debug)]
pub struct Expect {
    pub access_key: String,
    pub secret: String,
    pub region: String,
    pub session_token: Option<String>,
    pub sender_id: Option<String>,
}

/// How the endpoint answers a request it finds correct.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `PublishResponse` with a fresh message id.
    Published,
    /// The `ErrorResponse` of this documented code, with its status.
    Error(&'static str),
    /// Anything else (a proxy's page, garbage, a delay).
    Raw(ResponseTemplate),
}

/// One publish the endpoint took.
#[derive(Clone, Debug)]
pub struct Published {
    pub phone: String,
    pub message: String,
    pub message_id: String,
}

#[derive(Clone)]
pub struct SnsSpec {
    expect: Expect,
    answer: Answer,
    problems: Arc<Mutex<Vec<String>>>,
    published: Arc<Mutex<Vec<Published>>>,
}

/// `MessageAttributes` SNS takes for SMS (sms_publish-to-phone, "Message attributes").
const SMS_ATTRIBUTES: &[&str] = &[
    "AWS.SNS.SMS.SenderID",
    "AWS.SNS.SMS.SMSType",
    "AWS.SNS.SMS.MaxPrice",
    "AWS.MM.SMS.OriginationNumber",
    "AWS.MM.SMS.EntityId",
    "AWS.MM.SMS.TemplateId",
];

impl SnsSpec {
    pub fn new(expect: Expect, answer: Answer) -> SnsSpec {
        SnsSpec {
            expect,
            answer,
            problems: Arc::default(),
            published: Arc::default(),
        }
    }

    /// A server answering every request with this endpoint.
    pub async fn start(&self) -> MockServer {
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }

    /// What the endpoint refused, in AWS's words: empty when herald sent what AWS documents.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    pub fn published(&self) -> Vec<Published> {
        self.published.lock().unwrap().clone()
    }

    /// The request's `Publish`, or AWS's refusal.
    fn check(&self, r: &Request) -> Result<(String, String), Refusal> {
        let e = &self.expect;
        if r.method.as_str() != "POST" || r.url.path() != "/" {
            return Err((
                "InvalidAction",
                format!("{} {} is not the Query API", r.method, r.url.path()),
            ));
        }
        let content_type = header(r, "content-type").unwrap_or("");
        if content_type.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
            return Err(("MalformedQueryString", format!("content-type {content_type:?}")));
        }
        let signed = check_sigv4(r, &e.access_key, &e.secret, &e.region)?;
        match (&e.session_token, header(r, "x-amz-security-token")) {
            (Some(want), Some(got)) if want == got && signed.iter().any(|s| s == "x-amz-security-token") => {}
            (None, None) => {}
            (want, got) => {
                return Err((
                    "InvalidClientTokenId",
                    format!("session token: wanted {want:?}, got {got:?} (signed: {signed:?})"),
                ));
            }
        }
        if r.url.query().is_some() {
            return Err(("InvalidQueryParameter", "parameters go in the body of a POST".into()));
        }
        let mut fields = std::collections::BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(&r.body) {
            if fields.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(("MalformedQueryString", format!("{k} given twice")));
            }
        }
        let mut take = |name: &str| fields.remove(name);
        match take("Action").as_deref() {
            Some("Publish") => {}
            None => return Err(("MissingAction", "Action is missing".into())),
            Some(other) => return Err(("InvalidAction", format!("Could not find operation {other}"))),
        }
        if take("Version").as_deref() != Some("2010-03-31") {
            return Err(("InvalidParameterValue", "Version must be 2010-03-31".into()));
        }
        let Some(phone) = take("PhoneNumber") else {
            return Err((
                "InvalidParameter",
                "Invalid parameter: PhoneNumber, TopicArn or TargetArn".into(),
            ));
        };
        let digits = phone.strip_prefix('+').unwrap_or("");
        if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                "InvalidParameter",
                "Invalid parameter: PhoneNumber Reason: not in E.164 format".into(),
            ));
        }
        let Some(message) = take("Message").filter(|m| !m.is_empty()) else {
            return Err(("InvalidParameter", "Invalid parameter: Empty message".into()));
        };
        if message.chars().count() > 1600 {
            return Err(("InvalidParameter", "Invalid parameter: Message too long".into()));
        }
        let mut attributes = std::collections::BTreeMap::new();
        for n in 1.. {
            let prefix = format!("MessageAttributes.entry.{n}.");
            let (Some(name), data_type, value) = (
                take(&format!("{prefix}Name")),
                take(&format!("{prefix}Value.DataType")),
                take(&format!("{prefix}Value.StringValue")),
            ) else {
                break;
            };
            if data_type.as_deref() != Some("String") || value.as_deref().is_none_or(str::is_empty) {
                return Err((
                    "ParameterValueInvalid",
                    format!(
                        "The message attribute '{name}' must contain non-empty message attribute value for message attribute type 'String'."
                    ),
                ));
            }
            if !SMS_ATTRIBUTES.contains(&name.as_str()) {
                return Err((
                    "InvalidParameter",
                    format!("Invalid parameter: MessageAttributes {name}"),
                ));
            }
            if attributes.insert(name.clone(), value.unwrap_or_default()).is_some() {
                return Err(("InvalidParameter", format!("Invalid parameter: {name} given twice")));
            }
        }
        if let Some((extra, _)) = fields.iter().next() {
            return Err(("InvalidParameter", format!("Invalid parameter: {extra}")));
        }
        match attributes.remove("AWS.SNS.SMS.SMSType").as_deref() {
            // A one-time code is transactional: SNS routes it for reliability, not cost.
            Some("Transactional") => {}
            Some("Promotional") => return Err(("InvalidParameter", "a code sent as Promotional".into())),
            other => return Err(("ParameterValueInvalid", format!("SMSType {other:?}"))),
        }
        let sender = attributes.remove("AWS.SNS.SMS.SenderID");
        if let Some(id) = &sender {
            let alnum = (1..=11).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && id.bytes().any(|b| b.is_ascii_alphabetic());
            if !alnum {
                return Err(("ParameterValueInvalid", format!("SenderID {id:?}")));
            }
        }
        if sender != e.sender_id {
            return Err((
                "InvalidParameter",
                format!("SenderID: wanted {:?}, got {sender:?}", e.sender_id),
            ));
        }
        if let Some((name, _)) = attributes.iter().next() {
            return Err(("InvalidParameter", format!("herald sets no {name}")));
        }
        Ok((phone, message))
    }
}

impl Respond for SnsSpec {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        match self.check(r) {
            Err((code, text)) => {
                self.problems.lock().unwrap().push(format!("{code}: {text}"));
                error_response(code, &text)
            }
            Ok((phone, message)) => match &self.answer {
                Answer::Published => {
                    let message_id = uuid::Uuid::new_v4().to_string();
                    let response = publish_response(&message_id);
                    self.published.lock().unwrap().push(Published {
                        phone,
                        message,
                        message_id,
                    });
                    response
                }
                Answer::Error(code) => error_response(
                    code,
                    &format!("Invalid parameter: PhoneNumber Reason: {phone} is not valid ({code})"),
                ),
                Answer::Raw(response) => response.clone(),
            },
        }
    }
}
