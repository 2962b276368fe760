//! Amazon SNS `Publish` to a phone number (docs/providers/README.md): the Query API (`POST {endpoint}/`, form
//! `Action=Publish&Version=2010-03-31&PhoneNumber&Message&MessageAttributes…`), signed with AWS Signature
//! Version 4 by `aws-sigv4`. The answer is XML, read with `quick-xml`: `PublishResponse/PublishResult/MessageId`
//! on success, `ErrorResponse/Error/{Type,Code,Message}` otherwise
//! (<https://docs.aws.amazon.com/sns/latest/api/API_Publish.html>,
//! <https://docs.aws.amazon.com/sns/latest/api/CommonErrors.html>).
//!
//! Classification is by the error `Code` ([`class_of`], docs/providers/sns.md), whatever HTTP status AWS
//! pairs it with (AWS sends `Throttling` with a 400); a code of no table goes by its HTTP status (408, 429,
//! 5xx transient). SNS has no validity field: a message SNS took is delivered or dropped by SNS.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sms_of,
};
use crate::config::SnsConfig;
use crate::job::Job;
use crate::privacy::scrub;
use crate::templates::Rendered;

const CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

pub struct Sns {
    client: HttpClient,
    url: Url,
    region: String,
    /// Its `Debug` redacts the secret.
    credentials: Credentials,
    sender_id: String,
}

/// How each documented error code of `Publish` and of every AWS Query API is taken. The `Publish` errors
/// are the botocore SNS model's (`Publish` → `errors`, each shape's `error.code`); the common ones are
/// AWS's common error list. Names are the wire codes (`ParameterValueInvalid` is the code of the model's
/// `InvalidParameterValueException`).
pub const CODES: &[(&str, Class)] = &[
    // Publish (botocore sns 2010-03-31), the recipient or the message: fails the same way anywhere.
    ("InvalidParameter", Class::Permanent),
    ("ParameterValueInvalid", Class::Permanent),
    ("ValidationException", Class::Permanent),
    // The phone number opted out of SMS from this account (OptedOutException).
    ("OptedOut", Class::Permanent),
    ("EndpointDisabled", Class::Permanent),
    // Publish, SNS-side failures and throttling: worth another attempt.
    ("InternalError", Class::Transient),
    ("Throttled", Class::Transient),
    ("KMSThrottling", Class::Transient),
    // Publish, this account, its IAM policy, its resources or its keys: another provider can send it.
    ("AuthorizationError", Class::NextProvider),
    ("InvalidSecurity", Class::NextProvider),
    ("NotFound", Class::NextProvider),
    ("PlatformApplicationDisabled", Class::NextProvider),
    ("KMSDisabled", Class::NextProvider),
    ("KMSInvalidState", Class::NextProvider),
    ("KMSNotFound", Class::NextProvider),
    ("KMSOptInRequired", Class::NextProvider),
    ("KMSAccessDenied", Class::NextProvider),
    // Common AWS errors: throttling and AWS-side failures.
    ("Throttling", Class::Transient),
    ("ThrottlingException", Class::Transient),
    ("ThrottledException", Class::Transient),
    ("RequestThrottled", Class::Transient),
    ("RequestLimitExceeded", Class::Transient),
    ("TooManyRequestsException", Class::Transient),
    ("InternalFailure", Class::Transient),
    ("ServiceUnavailable", Class::Transient),
    // Common AWS errors: credentials, signature, account. A clock skewed past the signature's validity
    // (`RequestExpired`) stays skewed on the next attempt: another provider does not depend on it.
    ("AccessDenied", Class::NextProvider),
    ("AccessDeniedException", Class::NextProvider),
    ("NotAuthorized", Class::NextProvider),
    ("InvalidClientTokenId", Class::NextProvider),
    ("UnrecognizedClientException", Class::NextProvider),
    ("SignatureDoesNotMatch", Class::NextProvider),
    ("IncompleteSignature", Class::NextProvider),
    ("MissingAuthenticationToken", Class::NextProvider),
    ("ExpiredToken", Class::NextProvider),
    ("ExpiredTokenException", Class::NextProvider),
    ("RequestExpired", Class::NextProvider),
    ("OptInRequired", Class::NextProvider),
    // Common AWS errors: the request as herald writes it for SNS (its action, version or query), not the
    // message: another provider's request is another request.
    ("InvalidAction", Class::NextProvider),
    ("MissingAction", Class::NextProvider),
    ("MalformedQueryString", Class::NextProvider),
    ("InvalidQueryParameter", Class::NextProvider),
    // Common AWS errors about a parameter's value: the message or the number, as `InvalidParameter`.
    ("InvalidParameterValue", Class::Permanent),
    ("InvalidParameterCombination", Class::Permanent),
    ("MissingParameter", Class::Permanent),
    ("ValidationError", Class::Permanent),
];

/// How SNS's error `code` is taken, if it is one of [`CODES`].
pub fn class_of(code: &str) -> Option<Class> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, class)| *class)
}

/// `<PublishResponse><PublishResult><MessageId>…`.
#[derive(Deserialize)]
struct PublishResponse {
    #[serde(rename = "PublishResult")]
    result: PublishResult,
}

#[derive(Deserialize)]
struct PublishResult {
    #[serde(rename = "MessageId")]
    message_id: String,
}

/// `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`.
#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(rename = "Error")]
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: Option<String>,
}

/// The `MessageId` of a `PublishResponse`, if `xml` is one.
pub fn message_id(xml: &str) -> Option<String> {
    let answer: PublishResponse = quick_xml::de::from_str(xml).ok()?;
    let id = answer.result.message_id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The `Code` and `Message` of an `ErrorResponse`, if `xml` is one.
pub fn error_of(xml: &str) -> Option<(String, Option<String>)> {
    let answer: ErrorResponse = quick_xml::de::from_str(xml).ok()?;
    Some((
        answer.error.code.trim().to_owned(),
        answer.error.message.map(|m| m.trim().to_owned()),
    ))
}

impl Sns {
    pub fn new(config: &SnsConfig, client: HttpClient) -> Result<Sns, SetupError> {
        let session_token = (!config.session_token.is_empty()).then(|| config.session_token.expose().to_owned());
        Ok(Sns {
            client,
            url: config.endpoint().map_err(|source| SetupError::Url {
                keys: "sns.base_url / sns.region",
                what: "an endpoint URL",
                source,
            })?,
            region: config.region.clone(),
            credentials: Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.expose().to_owned(),
                session_token,
                None,
                "herald",
            ),
            sender_id: config.sender_id.clone(),
        })
    }

    /// The form body of one `Publish`.
    fn body(&self, phone: &str, text: &str) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "Publish")
            .append_pair("Version", "2010-03-31")
            .append_pair("PhoneNumber", phone)
            .append_pair("Message", text)
            .append_pair("MessageAttributes.entry.1.Name", "AWS.SNS.SMS.SMSType")
            .append_pair("MessageAttributes.entry.1.Value.DataType", "String")
            .append_pair("MessageAttributes.entry.1.Value.StringValue", "Transactional");
        if !self.sender_id.is_empty() {
            form.append_pair("MessageAttributes.entry.2.Name", "AWS.SNS.SMS.SenderID")
                .append_pair("MessageAttributes.entry.2.Value.DataType", "String")
                .append_pair("MessageAttributes.entry.2.Value.StringValue", &self.sender_id);
        }
        form.finish()
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a POST of `body`.
    fn signature(&self, body: &[u8]) -> Result<Vec<(String, String)>, ProviderError> {
        let failed = |what: &str| ProviderError::Permanent {
            message: format!("sns request could not be signed: {what}"),
            provider_code: None,
        };
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sns")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| failed("incomplete signing parameters"))?
            .into();
        let request = SignableRequest::new(
            "POST",
            self.url.as_str(),
            [("content-type", CONTENT_TYPE)].into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| failed("the request is not signable"))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|_| failed("signing failed"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }
}

#[async_trait::async_trait]
impl Provider for Sns {
    fn name(&self) -> ProviderKind {
        ProviderKind::Sns
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let body = sms_of(message, self.name())?;
        let form = self.body(phone_of(job, self.name())?.expose(), body);
        let mut request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE);
        for (name, value) in self.signature(form.as_bytes())? {
            request = request.header(name, value);
        }
        let exchanged = match exchange(self.name(), request.body(form)).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        let answer = String::from_utf8_lossy(&exchanged.body);
        if status.is_success() {
            // SNS accepted the publish: an unreadable body must not make us send it twice.
            return Ok(match message_id(&answer) {
                Some(id) => Receipt::sent(Some(id)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        let error = error_of(&answer);
        // Only an AWS error code's shape: what else the answer put in `<Code>` is dropped.
        let code = error.as_ref().and_then(|(c, _)| ProviderCode::aws(c));
        let detail = error
            .and_then(|(_, m)| m)
            .map(|m| scrub(&m))
            .unwrap_or_else(|| "no SNS error body".into());
        let message = format!(
            "sns answered {} {}: {detail}",
            status.as_u16(),
            code.as_deref().unwrap_or("-")
        );
        Err(match code.as_deref().and_then(class_of) {
            Some(class) => exchanged.rejection(class, message, code),
            None => exchanged.failure(message, code),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_answers_are_read_as_xml() {
        let ok = "<?xml version=\"1.0\"?><PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\">\
                  <PublishResult><MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId></PublishResult>\
                  <ResponseMetadata><RequestId>d74b8436-ae13-5ab4-a9ff-ce54dfea72a0</RequestId>\
                  </ResponseMetadata></PublishResponse>";
        assert_eq!(message_id(ok).as_deref(), Some("567910cd-659e-55d4-8ccb-5aaf14679dc0"));
        let err = "<ErrorResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type>\
                   <Code>InvalidParameter</Code><Message>Invalid parameter: PhoneNumber &amp; more</Message>\
                   </Error><RequestId>r-2</RequestId></ErrorResponse>";
        assert_eq!(
            error_of(err),
            Some((
                "InvalidParameter".into(),
                Some("Invalid parameter: PhoneNumber & more".into())
            ))
        );
        // A code in CDATA, a message left out: still AWS's answer.
        let bare = "<ErrorResponse><Error><Code><![CDATA[Throttling]]></Code></Error></ErrorResponse>";
        assert_eq!(error_of(bare), Some(("Throttling".into(), None)));
        // Text scanning found a `<MessageId>` or `<Code>` anywhere; only the documented elements count now.
        assert_eq!(message_id("<Other><MessageId>x</MessageId></Other>"), None);
        assert_eq!(
            message_id("<PublishResponse><PublishResult><MessageId> </MessageId></PublishResult></PublishResponse>"),
            None
        );
        assert_eq!(error_of("<html><Code>Throttling</Code></html>"), None);
        for garbage in ["garbage", "", "<Code>unterminated", "<ErrorResponse><Error>"] {
            assert_eq!(error_of(garbage), None, "{garbage}");
            assert_eq!(message_id(garbage), None, "{garbage}");
        }
    }

    /// Every row of the table, as docs/providers/sns.md gives it.
    #[test]
    fn every_documented_code_has_its_class() {
        use Class::{NextProvider as Next, Permanent as Perm, Transient as Tran};
        let expected: &[(&str, Class)] = &[
            ("InvalidParameter", Perm),
            ("ParameterValueInvalid", Perm),
            ("ValidationException", Perm),
            ("OptedOut", Perm),
            ("EndpointDisabled", Perm),
            ("InternalError", Tran),
            ("Throttled", Tran),
            ("KMSThrottling", Tran),
            ("AuthorizationError", Next),
            ("InvalidSecurity", Next),
            ("NotFound", Next),
            ("PlatformApplicationDisabled", Next),
            ("KMSDisabled", Next),
            ("KMSInvalidState", Next),
            ("KMSNotFound", Next),
            ("KMSOptInRequired", Next),
            ("KMSAccessDenied", Next),
            ("Throttling", Tran),
            ("ThrottlingException", Tran),
            ("ThrottledException", Tran),
            ("RequestThrottled", Tran),
            ("RequestLimitExceeded", Tran),
            ("TooManyRequestsException", Tran),
            ("InternalFailure", Tran),
            ("ServiceUnavailable", Tran),
            ("AccessDenied", Next),
            ("AccessDeniedException", Next),
            ("NotAuthorized", Next),
            ("InvalidClientTokenId", Next),
            ("UnrecognizedClientException", Next),
            ("SignatureDoesNotMatch", Next),
            ("IncompleteSignature", Next),
            ("MissingAuthenticationToken", Next),
            ("ExpiredToken", Next),
            ("ExpiredTokenException", Next),
            ("RequestExpired", Next),
            ("OptInRequired", Next),
            ("InvalidAction", Next),
            ("MissingAction", Next),
            ("MalformedQueryString", Next),
            ("InvalidQueryParameter", Next),
            ("InvalidParameterValue", Perm),
            ("InvalidParameterCombination", Perm),
            ("MissingParameter", Perm),
            ("ValidationError", Perm),
        ];
        for (code, class) in expected {
            assert_eq!(class_of(code), Some(*class), "{code}");
        }
        assert_eq!(CODES.len(), expected.len(), "a row without its test");
        // The model's Publish errors, each in the table (botocore sns 2010-03-31, `Publish` → `errors`).
        for code in [
            "InvalidParameter",
            "ParameterValueInvalid",
            "InternalError",
            "NotFound",
            "EndpointDisabled",
            "PlatformApplicationDisabled",
            "AuthorizationError",
            "KMSDisabled",
            "KMSInvalidState",
            "KMSNotFound",
            "KMSOptInRequired",
            "KMSThrottling",
            "KMSAccessDenied",
            "InvalidSecurity",
            "ValidationException",
        ] {
            assert!(class_of(code).is_some(), "{code}");
        }
        assert_eq!(class_of("SomethingNew"), None);
        assert_eq!(class_of("throttling"), None, "AWS codes are case-sensitive");
    }
}
