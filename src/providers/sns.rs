//! Amazon SNS `Publish` to a phone number (contract §6): the Query API (`POST {endpoint}/`, form
//! `Action=Publish&Version=2010-03-31&PhoneNumber&Message&MessageAttributes…`), signed with AWS Signature
//! Version 4 by `aws-sigv4`. The answer is XML: `<MessageId>` on success, `<Error><Code>` otherwise.
//!
//! Classification: throttling and AWS-side failures (`Throttling`, `Throttled`, `InternalError`,
//! `ServiceUnavailable`, …) are transient whatever their HTTP status (AWS sends `Throttling` with a 400);
//! `InvalidParameter` (which is also how SNS refuses an opted-out or invalid number), `AuthorizationError`
//! and the other request and credential errors are permanent; any other code goes by its HTTP status
//! (408, 429, 5xx transient).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use url::Url;

use super::http::{HttpClient, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
};
use crate::config::SnsConfig;
use crate::events::scrub;
use crate::job::Job;
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

/// Error codes worth another attempt (or the next provider), from the SNS `Publish` and AWS common errors.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "Throttled",
    "ThrottledException",
    "RequestLimitExceeded",
    "KMSThrottling",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    // A clock skewed past the signature's validity: the next attempt signs anew.
    "RequestExpired",
];

/// Error codes that fail the same way again, whatever HTTP status AWS pairs them with.
const PERMANENT_CODES: &[&str] = &[
    "InvalidParameter",
    "InvalidParameterValue",
    "ValidationException",
    "AuthorizationError",
    "OptedOut",
    "EndpointDisabled",
    "InvalidSecurity",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "OptInRequired",
    "NotFound",
];

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
        let Rendered::Sms { body } = message else {
            return Err(ProviderError::Permanent {
                message: "sns delivers SMS only".into(),
                provider_code: None,
            });
        };
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
            return Ok(match xml_text(&answer, "MessageId") {
                Some(id) => Receipt::sent(Some(id)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        // Only an AWS error code's shape: what else the answer put in `<Code>` is dropped.
        let code = xml_text(&answer, "Code").and_then(|c| ProviderCode::aws(&c));
        let detail = xml_text(&answer, "Message")
            .map(|m| scrub(&m))
            .unwrap_or_else(|| "no SNS error body".into());
        let message = format!(
            "sns answered {} {}: {detail}",
            status.as_u16(),
            code.as_deref().unwrap_or("-")
        );
        Err(match code.as_deref() {
            Some(c) if TRANSIENT_CODES.contains(&c) => exchanged.rejection(Class::Transient, message, code),
            Some(c) if PERMANENT_CODES.contains(&c) => exchanged.rejection(Class::Permanent, message, code),
            _ => exchanged.failure(message, code),
        })
    }
}

/// The text of the first `<tag>…</tag>` in an AWS XML answer, entities decoded. AWS answers are flat
/// and small (capped by `read_capped`): no XML parser needed for two fields.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    let text = xml[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_fields_of_aws_answers() {
        let ok = "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
                  <MessageId>567910cd-659e-55d4-8ccb-5aaf14679dc0</MessageId></PublishResult></PublishResponse>";
        assert_eq!(
            xml_text(ok, "MessageId").as_deref(),
            Some("567910cd-659e-55d4-8ccb-5aaf14679dc0")
        );
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameter</Code>\
                   <Message>Invalid parameter: PhoneNumber &amp; more</Message></Error></ErrorResponse>";
        assert_eq!(xml_text(err, "Code").as_deref(), Some("InvalidParameter"));
        assert_eq!(
            xml_text(err, "Message").as_deref(),
            Some("Invalid parameter: PhoneNumber & more")
        );
        assert_eq!(xml_text("garbage", "Code"), None);
        assert_eq!(xml_text("<Code>unterminated", "Code"), None);
    }
}
