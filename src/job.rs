//! The "send code" job (docs/jobs-and-events.md "Jobs"). The raw AMQP body becomes a [`Job`] in exactly one place,
//! [`Job::from_message`]; past that point every field is a checked type.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::numbering::{self, CallingCode, Region};

/// Largest accepted body (docs/jobs-and-events.md "Jobs").
pub const MAX_BODY: usize = 16 * 1024;
/// The most vars a job may carry, each at most [`MAX_VAR_VALUE`] bytes: the templates' checks render the
/// longest job these allow.
pub const MAX_VARS: usize = 32;
pub const MAX_VAR_VALUE: usize = 1024;
const MAX_ID: usize = 128;
const MAX_USER_ID: usize = 256;
const MAX_FRIENDLY_NAME: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Voice,
    Email,
    /// WhatsApp authentication messages (docs/providers/meta.md): herald sends the code into a template
    /// Meta approved, it renders none.
    Whatsapp,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Sms, Channel::Voice, Channel::Email, Channel::Whatsapp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "voice",
            Channel::Email => "email",
            Channel::Whatsapp => "whatsapp",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One `T` per channel: the provider chains, the per-channel counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerChannel<T> {
    pub sms: T,
    pub voice: T,
    pub email: T,
    pub whatsapp: T,
}

impl<T> PerChannel<T> {
    /// Builds each channel's value.
    pub fn from_fn(mut f: impl FnMut(Channel) -> T) -> PerChannel<T> {
        PerChannel {
            sms: f(Channel::Sms),
            voice: f(Channel::Voice),
            email: f(Channel::Email),
            whatsapp: f(Channel::Whatsapp),
        }
    }

    /// Builds each channel's value, or the first error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Channel) -> Result<T, E>) -> Result<PerChannel<T>, E> {
        Ok(PerChannel {
            sms: f(Channel::Sms)?,
            voice: f(Channel::Voice)?,
            email: f(Channel::Email)?,
            whatsapp: f(Channel::Whatsapp)?,
        })
    }

    pub fn get(&self, channel: Channel) -> &T {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Voice => &self.voice,
            Channel::Email => &self.email,
            Channel::Whatsapp => &self.whatsapp,
        }
    }

    pub fn get_mut(&mut self, channel: Channel) -> &mut T {
        match channel {
            Channel::Sms => &mut self.sms,
            Channel::Voice => &mut self.voice,
            Channel::Email => &mut self.email,
            Channel::Whatsapp => &mut self.whatsapp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Enrollment,
    SecondFactorAuthentication,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Enrollment, Action::SecondFactorAuthentication];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enrollment => "enrollment",
            Action::SecondFactorAuthentication => "second-factor-authentication",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Action {
    /// As events write it (a recorded event is read back).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Action::parse(&text).ok_or_else(|| serde::de::Error::custom("not an action"))
    }
}

/// An E.164 number, checked once against libphonenumber's metadata (through [`numbering`]): `+`, then a
/// calling code, then a national number of a length some region of that calling code has. Its range need
/// not be in the metadata: new ranges open before libraries learn them, and the provider decides. A number
/// whose calling code the metadata does not know is kept to E.164's shape (8 to 15 digits), as before.
/// `Debug` is masked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    code: Option<CallingCode>,
    /// The region the metadata puts the number in (`JM` for +1 876), kept for routing and allow lists.
    region: Option<Region>,
}

/// What is wrong with an E.164 number, never quoting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("must start with `+` (E.164)")]
    NoPlus,
    #[error("must be `+` followed by 15 digits at most (E.164)")]
    Digits,
    #[error("country calling code cannot start with 0")]
    LeadingZero,
    #[error("is too short or too long for its country calling code (E.164)")]
    Length,
}

/// E.164: at most 15 digits, calling code included.
const MAX_E164_DIGITS: usize = 15;

impl PhoneNumber {
    pub fn parse(s: &str) -> Result<PhoneNumber, PhoneNumberError> {
        let digits = s.strip_prefix('+').ok_or(PhoneNumberError::NoPlus)?;
        if digits.is_empty() || digits.len() > MAX_E164_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneNumberError::Digits);
        }
        if digits.starts_with('0') {
            return Err(PhoneNumberError::LeadingZero);
        }
        let Some(meta) = numbering::code_of(digits) else {
            if digits.len() < 8 {
                return Err(PhoneNumberError::Length);
            }
            return Ok(PhoneNumber {
                e164: s.to_owned(),
                code: None,
                region: None,
            });
        };
        let national = &digits[meta.code.to_string().len()..];
        if !numbering::possible_length(meta, national.len()) {
            return Err(PhoneNumberError::Length);
        }
        Ok(PhoneNumber {
            e164: s.to_owned(),
            code: Some(meta.calling_code()),
            region: numbering::region_of(meta, national),
        })
    }

    /// The full number, for providers only: never log it.
    pub fn expose(&self) -> &str {
        &self.e164
    }

    pub fn digits(&self) -> &str {
        &self.e164[1..]
    }

    /// The E.164 country calling code (`1`, `44`, `225`), from libphonenumber's metadata.
    pub fn country_code(&self) -> Option<u16> {
        self.code.map(CallingCode::get)
    }

    pub fn calling_code(&self) -> Option<CallingCode> {
        self.code
    }

    /// The region libphonenumber's metadata puts the number in (`JM` for +1 876, `KZ` for +7 7, `GG` for
    /// +44 1481); the calling code's main region for a range it does not list; none for non-geographic
    /// calling codes (+800, +882, …) and unknown ones.
    pub fn region(&self) -> Option<Region> {
        self.region
    }

    /// `+1415*****23`: calling code and area kept for ops, the subscriber part hidden.
    pub fn masked(&self) -> String {
        mask_digits(self.digits())
    }

    /// [`PhoneNumber::masked`] of any text shaped like an E.164 number (`+` and 4 to 15 digits), whether
    /// or not it is a possible number: for text that may hold one (user ids), where a number refused by
    /// [`PhoneNumber::parse`] must not be shown in full either.
    pub fn mask_text(s: &str) -> Option<String> {
        let digits = s.strip_prefix('+')?;
        ((4..=MAX_E164_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| mask_digits(digits))
    }
}

fn mask_digits(digits: &str) -> String {
    let keep_head = if digits.len() >= 10 { 4 } else { 2 };
    let keep_tail = if digits.len() > keep_head + 2 { 2 } else { 0 };
    let hidden = digits.len().saturating_sub(keep_head + keep_tail);
    format!(
        "+{}{}{}",
        digits.get(..keep_head).unwrap_or(""),
        "*".repeat(hidden),
        digits.get(digits.len() - keep_tail..).unwrap_or("")
    )
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// A syntactically plausible address (`local@domain.tld`, no spaces or control characters).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// The text is not an email address (which part is wrong is not said: it would quote it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is not an email address")]
pub struct NotAnEmailAddress;

impl EmailAddress {
    pub fn parse(s: &str) -> Result<EmailAddress, NotAnEmailAddress> {
        let bad = || NotAnEmailAddress;
        if s.len() > 254
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(bad());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(bad());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels
                .iter()
                .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        {
            return Err(bad());
        }
        Ok(EmailAddress(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `j***@***.com`: first letter and top-level domain only.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or((&self.0, ""));
        let first: String = local.chars().take(1).collect();
        let tld = domain.rsplit('.').next().unwrap_or("");
        format!("{first}***@***.{tld}")
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    Phone(PhoneNumber),
    Email(EmailAddress),
}

impl Recipient {
    pub fn masked(&self) -> String {
        match self {
            Recipient::Phone(p) => p.masked(),
            Recipient::Email(e) => e.masked(),
        }
    }

    pub fn expose(&self) -> &str {
        match self {
            Recipient::Phone(p) => p.expose(),
            Recipient::Email(e) => e.expose(),
        }
    }

    /// The recipient's `country` in events and metrics.
    pub fn country(&self) -> Country {
        match self {
            Recipient::Phone(p) => p.calling_code().map_or(Country::Unknown, Country::Code),
            Recipient::Email(_) => Country::Email,
        }
    }

    /// [`Recipient::country`] as its label.
    pub fn country_label(&self) -> String {
        self.country().to_string()
    }
}

/// The `country` of an event and of its metric labels (docs/http-and-metrics.md "Metrics"): a phone's calling
/// code (`44`), `unknown` for a number whose calling code the metadata does not know, `none` for email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Country {
    Code(CallingCode),
    Unknown,
    Email,
}

impl Country {
    /// The label back as the country (a recorded event is read back).
    pub fn parse(s: &str) -> Option<Country> {
        match s {
            "unknown" => Some(Country::Unknown),
            "none" => Some(Country::Email),
            digits => CallingCode::parse(digits).ok().map(Country::Code),
        }
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Country::Code(code) => write!(f, "{code}"),
            Country::Unknown => f.write_str("unknown"),
            Country::Email => f.write_str("none"),
        }
    }
}

impl serde::Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Country::parse(&text).ok_or_else(|| serde::de::Error::custom("not a country label"))
    }
}

/// The one-time code: 4–10 ASCII digits. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 4 to 10 digits")]
pub struct NotAnOtpCode;

impl OtpCode {
    pub fn parse(s: &str) -> Result<OtpCode, NotAnOtpCode> {
        if (4..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(OtpCode(s.to_owned()))
        } else {
            Err(NotAnOtpCode)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `4. 8. 2. 9. 1. 3`: how a voice call reads a code, one digit at a time.
    pub fn spoken(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 3);
        for (i, d) in self.0.chars().enumerate() {
            if i > 0 {
                out.push_str(". ");
            }
            out.push(d);
        }
        out
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(***)")
    }
}

/// A BCP 47 language tag, kept in canonical case (`es-AR`, `zh-Hant-TW`, `pt-BR`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locale(String);

/// Never echoes the text: a job can carry a number or a code in any field (docs/jobs-and-events.md "Events"). No
/// source: the tag parser's message quotes the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is not a BCP 47 language tag")]
pub struct NotALocale;

impl Locale {
    pub fn parse(s: &str) -> Result<Locale, NotALocale> {
        let bad = || NotALocale;
        if s.is_empty() || s.len() > 35 {
            return Err(bad());
        }
        let tag = language_tags::LanguageTag::parse(s).map_err(|_| bad())?;
        // Private-use-only and grandfathered tags have no language to fall back on.
        if tag.primary_language().is_empty() || tag.primary_language() == "x" {
            return Err(bad());
        }
        Ok(Locale(canonical_case(tag.as_str())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Primary language subtag: `es` for `es-AR`.
    pub fn language(&self) -> &str {
        self.0.split('-').next().unwrap_or(&self.0)
    }

    /// Lookup order for templates: `zh-Hant-TW` → `zh-Hant` → `zh` (RFC 4647 lookup, truncating).
    pub fn fallbacks(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        std::iter::successors(Some(s), |cur| {
            let cut = cur.rfind('-')?;
            let mut shorter = &cur[..cut];
            // Never leave a dangling single-letter extension/private-use marker.
            if let Some(i) = shorter.rfind('-')
                && shorter.len() - i == 2
            {
                shorter = &shorter[..i];
            }
            Some(shorter)
        })
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Locale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Language lower case, script title case, region upper case (RFC 5646 §2.1.1).
fn canonical_case(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    let mut after_singleton = false;
    for (i, sub) in tag.split('-').enumerate() {
        if i > 0 {
            out.push('-');
        }
        let lower = sub.to_ascii_lowercase();
        if i == 0 || after_singleton {
            out.push_str(&lower);
        } else if sub.len() == 1 {
            after_singleton = true;
            out.push_str(&lower);
        } else if sub.len() == 2 && sub.bytes().all(|b| b.is_ascii_alphabetic()) {
            out.push_str(&sub.to_ascii_uppercase());
        } else if sub.len() == 4 && sub.bytes().all(|b| b.is_ascii_alphabetic()) {
            out.push_str(&lower[..1].to_ascii_uppercase());
            out.push_str(&lower[1..]);
        } else {
            out.push_str(&lower);
        }
    }
    out
}

/// A parsed, valid job. Construct it with [`Job::from_message`] or [`Job::from_json`].
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub channel: Channel,
    pub to: Recipient,
    pub code: OtpCode,
    pub action: Action,
    pub locale: Option<Locale>,
    pub user_id: String,
    pub ip: Option<IpAddr>,
    pub friendly_name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub vars: BTreeMap<String, String>,
    /// The `[workflows.<name>]` the job names (docs/workflows.md); `None` for a job of one channel.
    pub workflow: Option<JobWorkflow>,
}

/// A job's workflow: its name as the job gave it, and the step this send is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWorkflow {
    pub name: String,
    /// The channel the job named besides, if any: it must be the first step's.
    pub named_channel: Option<Channel>,
    /// The step being sent, 1-based: herald's own (from its store), never the message's. Until the
    /// workflow is resolved ([`crate::workflow::resolve`]), 1, and `Job::channel` is only the kind of `to`.
    pub step: u32,
}

/// Why a message is not a valid job, plus whatever could still be read from it for the failure event.
/// `reason` names the field and the rule it breaks, never the value: a publisher that puts a phone number
/// or a code in the wrong field must not see it echoed in the event, the log or `x-herald-error`.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidJob {
    #[source]
    pub reason: JobError,
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub channel: Option<Channel>,
    pub ip: Option<String>,
}

/// Why a message is not a job: the closed list of rules a message can break. The text is the
/// dead-letter reason and the event's message, so it names fields and rules, never values.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("body is {0} bytes, more than the {MAX_BODY} allowed")]
    TooLarge(usize),
    #[error("content type is not application/json")]
    ContentType,
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("body is not a JSON object")]
    NotAnObject,
    /// JSON, but not of the job's shape (serde's message names the field, not its value).
    #[error("body: {0}")]
    Shape(#[source] serde_json::Error),
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The message's AMQP `reply_to` (checked with the body: a job is the message, not only its JSON).
    #[error(transparent)]
    ReplyTo(#[from] ReplyToError),
    /// The encoded size of the message's AMQP headers, over what herald takes (`broker::MAX_HEADERS`).
    #[error("message headers are {size} bytes; herald takes at most {max}")]
    Headers { size: usize, max: usize },
    /// The job's `workflow` against the configured workflows (docs/workflows.md).
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

/// Why a workflow job is refused (`invalid_job`). Names the rule, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("field `workflow` names no configured workflow")]
    Unknown,
    #[error("field `channel` is not the first step's channel of the workflow")]
    NotFirstStep,
    #[error("step {step} of the workflow is {channel}, which field `to` does not fit", channel = .channel.as_str())]
    DoesNotFit { step: u32, channel: Channel },
}

/// The longest workflow name (docs/workflows.md).
pub const MAX_WORKFLOW_NAME: usize = 64;

/// A workflow name as jobs and metric labels carry it: 1 to [`MAX_WORKFLOW_NAME`] letters, digits, `_`, `-`.
pub fn is_workflow_name(name: &str) -> bool {
    (1..=MAX_WORKFLOW_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Why a job's `reply_to` is refused (with the job: it is dead-lettered as `invalid_job`), by
/// `reply::ReplyTo::parse`. Names the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyToError {
    #[error("`reply_to` names one of herald's own queues")]
    OwnQueue,
    #[error("`reply_to` is not a direct reply-to name the broker issues (amq.rabbitmq.reply-to.<pid>[.<key>])")]
    DirectReplyTo,
}

/// A field of the job that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field `{0}` must be a string")]
    NotAString(&'static str),
    #[error("field `{0}` is required")]
    Missing(&'static str),
    #[error("field `id` must be 1 to {MAX_ID} printable ASCII characters, no spaces")]
    Id,
    #[error("field `channel`: unknown channel (sms, voice, email or whatsapp)")]
    Channel,
    #[error("field `workflow` must be 1 to 64 letters, digits, `_` or `-`")]
    WorkflowName,
    #[error("field `to` {0}")]
    Phone(#[source] PhoneNumberError),
    #[error("field `to` {0}")]
    Email(#[source] NotAnEmailAddress),
    #[error("field `code` {0}")]
    Code(#[source] NotAnOtpCode),
    #[error("field `action`: unknown action (enrollment or second-factor-authentication)")]
    Action,
    #[error("field `locale`: {0}")]
    Locale(#[source] NotALocale),
    #[error(
        "field `user_id` must be 1 to {MAX_USER_ID} characters: printable ASCII, or letters and digits of any \
         script (no control, bidi or invisible characters)"
    )]
    UserId,
    #[error("field `ip` is not an IPv4 or IPv6 address")]
    Ip,
    #[error("field `friendly_name` must be at most {MAX_FRIENDLY_NAME} characters, no control characters")]
    FriendlyName,
    #[error("field `expires_at` is not an RFC 3339 time")]
    ExpiresAt,
    #[error("field `vars` has {0} keys, at most {MAX_VARS} allowed")]
    TooManyVars(usize),
    #[error("field `vars`: keys must be 1 to 64 letters, digits or `_`")]
    VarKey,
    #[error("field `vars`: every value must be a string")]
    VarNotAString,
    #[error("field `vars`: a value is longer than {MAX_VAR_VALUE} bytes")]
    VarTooLong,
    /// Names the key (the publisher's template variable), never the value.
    #[error("field `vars`: value of `{0}` contains control characters")]
    VarControl(String),
    #[error("field `vars` must be an object of strings")]
    Vars,
}

impl InvalidJob {
    /// A job whose body is valid refused for the rest of its message (`reply_to`, headers): its event still
    /// names the job.
    pub fn refused(job: Job, reason: JobError) -> Self {
        InvalidJob {
            reason,
            id: Some(job.id),
            user_id: Some(job.user_id),
            channel: Some(job.channel),
            ip: job.ip.map(|ip| ip.to_string()),
        }
    }

    fn bare(reason: JobError) -> Self {
        InvalidJob {
            reason,
            id: None,
            user_id: None,
            channel: None,
            ip: None,
        }
    }
}

/// The wire shape: only `serde` types, so that any well-formed JSON object reaches the field checks
/// and each error can name its field.
#[derive(Deserialize)]
struct RawJob {
    id: Option<serde_json::Value>,
    channel: Option<serde_json::Value>,
    to: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
    action: Option<serde_json::Value>,
    locale: Option<serde_json::Value>,
    user_id: Option<serde_json::Value>,
    ip: Option<serde_json::Value>,
    workflow: Option<serde_json::Value>,
    friendly_name: Option<serde_json::Value>,
    expires_at: Option<serde_json::Value>,
    vars: Option<serde_json::Value>,
}

fn opt_str<'a>(field: &'static str, v: &'a Option<serde_json::Value>) -> Result<Option<&'a str>, FieldError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError::NotAString(field)),
    }
}

fn req_str<'a>(field: &'static str, v: &'a Option<serde_json::Value>) -> Result<&'a str, FieldError> {
    opt_str(field, v)?.ok_or(FieldError::Missing(field))
}

impl Job {
    /// The single entry point from AMQP: checks content type and size, then the body.
    pub fn from_message(body: &[u8], content_type: Option<&str>) -> Result<Job, InvalidJob> {
        if body.len() > MAX_BODY {
            return Err(InvalidJob::bare(JobError::TooLarge(body.len())));
        }
        if let Some(ct) = content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(InvalidJob::bare(JobError::ContentType));
            }
        }
        Job::from_json(body)
    }

    pub fn from_json(body: &[u8]) -> Result<Job, InvalidJob> {
        // Straight into the wire shape when it can only be an object (no intermediate map of the whole body);
        // serde would also read a JSON array into a struct, field by position, so anything else takes the
        // slow path that tells JSON that is not an object from no JSON at all.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let mut raw: RawJob = if first == Some(&b'{') {
            serde_json::from_slice(body).map_err(|e| {
                InvalidJob::bare(if e.is_data() {
                    JobError::Shape(e)
                } else {
                    JobError::NotJson(e)
                })
            })?
        } else {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| InvalidJob::bare(JobError::NotJson(e)))?;
            if !value.is_object() {
                return Err(InvalidJob::bare(JobError::NotAnObject));
            }
            serde_json::from_value(value).map_err(|e| InvalidJob::bare(JobError::Shape(e)))?
        };
        let vars = raw.vars.take();
        Job::check(&raw, vars).map_err(|reason| {
            // Keep what is readable for the failure event, but only values that pass their own checks.
            InvalidJob {
                reason: reason.into(),
                id: opt_str("id", &raw.id)
                    .ok()
                    .flatten()
                    .filter(|s| valid_id(s))
                    .map(str::to_owned),
                user_id: opt_str("user_id", &raw.user_id)
                    .ok()
                    .flatten()
                    .filter(|s| valid_user_id(s))
                    .map(str::to_owned),
                channel: opt_str("channel", &raw.channel).ok().flatten().and_then(Channel::parse),
                ip: opt_str("ip", &raw.ip)
                    .ok()
                    .flatten()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .map(|ip| ip.to_string()),
            }
        })
    }

    /// `raw` is only borrowed, so that a rejection can still read it; `vars`, taken out of it, moves into the
    /// job instead of being copied.
    fn check(raw: &RawJob, vars: Option<serde_json::Value>) -> Result<Job, FieldError> {
        let id = req_str("id", &raw.id)?;
        if !valid_id(id) {
            return Err(FieldError::Id);
        }
        let workflow = match opt_str("workflow", &raw.workflow)? {
            None => None,
            Some(name) if is_workflow_name(name) => Some(name),
            Some(_) => return Err(FieldError::WorkflowName),
        };
        let named_channel = match (opt_str("channel", &raw.channel)?, workflow) {
            (Some(c), _) => Some(Channel::parse(c).ok_or(FieldError::Channel)?),
            (None, Some(_)) => None,
            (None, None) => return Err(FieldError::Missing("channel")),
        };
        let to_s = req_str("to", &raw.to)?;
        // A workflow job without a channel: `to` says which kind of recipient it is, and the workflow's
        // steps are checked against it once the workflow is known.
        let channel = named_channel.unwrap_or(if to_s.starts_with('+') {
            Channel::Sms
        } else {
            Channel::Email
        });
        let workflow = workflow.map(|name| JobWorkflow {
            name: name.to_owned(),
            named_channel,
            step: 1,
        });
        let to = match channel {
            Channel::Sms | Channel::Voice | Channel::Whatsapp => {
                Recipient::Phone(PhoneNumber::parse(to_s).map_err(FieldError::Phone)?)
            }
            Channel::Email => Recipient::Email(EmailAddress::parse(to_s).map_err(FieldError::Email)?),
        };
        let code = OtpCode::parse(req_str("code", &raw.code)?).map_err(FieldError::Code)?;
        let action = match opt_str("action", &raw.action)? {
            None => Action::SecondFactorAuthentication,
            Some(a) => Action::parse(a).ok_or(FieldError::Action)?,
        };
        let locale = opt_str("locale", &raw.locale)?
            .map(Locale::parse)
            .transpose()
            .map_err(FieldError::Locale)?;
        let user_id = req_str("user_id", &raw.user_id)?;
        if !valid_user_id(user_id) {
            return Err(FieldError::UserId);
        }
        let ip = opt_str("ip", &raw.ip)?
            .map(|s| s.parse::<IpAddr>().map_err(|_| FieldError::Ip))
            .transpose()?;
        let friendly_name = opt_str("friendly_name", &raw.friendly_name)?;
        if let Some(f) = friendly_name
            && (f.chars().count() > MAX_FRIENDLY_NAME || f.chars().any(char::is_control))
        {
            return Err(FieldError::FriendlyName);
        }
        let expires_at = opt_str("expires_at", &raw.expires_at)?
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|_| FieldError::ExpiresAt)
            })
            .transpose()?;
        let vars = match vars {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(map)) => {
                if map.len() > MAX_VARS {
                    return Err(FieldError::TooManyVars(map.len()));
                }
                let mut vars = BTreeMap::new();
                for (k, v) in map {
                    if k.is_empty() || k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(FieldError::VarKey);
                    }
                    let serde_json::Value::String(v) = v else {
                        return Err(FieldError::VarNotAString);
                    };
                    if v.len() > MAX_VAR_VALUE {
                        return Err(FieldError::VarTooLong);
                    }
                    // Control characters would reach providers raw (a newline in a TwiML `<Say>`, an SMS
                    // header…), and the voice pause marker is made of them: a var must not forge a pause.
                    if v.chars().any(char::is_control) {
                        return Err(FieldError::VarControl(k));
                    }
                    vars.insert(k, v);
                }
                vars
            }
            Some(_) => return Err(FieldError::Vars),
        };
        Ok(Job {
            id: id.to_owned(),
            channel,
            to,
            code,
            action,
            locale,
            user_id: user_id.to_owned(),
            ip,
            friendly_name: friendly_name.map(str::to_owned),
            expires_at,
            vars,
            workflow,
        })
    }
}

/// A job id (docs/operations.md, "What a job may hold"): 1 to 128 printable ASCII characters, no spaces. It
/// is the `webhook-id` header, a store key and in every event and log line: nothing that a header cannot
/// carry as it is, nor a character that reorders or hides the text around it (U+202E).
pub(crate) fn valid_id(s: &str) -> bool {
    (1..=MAX_ID).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A user id: 1 to 256 characters, each printable ASCII (the space included) or a letter or digit of any
/// script (`auth0|josé`, `line|山田`). Control, format (bidi controls, zero-width characters), separator
/// and other invisible characters are refused: the id is printed in events and logs.
fn valid_user_id(s: &str) -> bool {
    (1..=MAX_USER_ID).contains(&s.chars().count())
        && s.chars()
            .all(|c| matches!(c, ' '..='~') || (!c.is_ascii() && c.is_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: serde_json::Value) -> Result<Job, InvalidJob> {
        Job::from_message(json.to_string().as_bytes(), Some("application/json"))
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({"id": "j1", "channel": "sms", "to": "+14155550123", "code": "482913", "user_id": "u1"})
    }

    #[test]
    fn minimal_job_gets_defaults() {
        let j = job(valid()).unwrap();
        assert_eq!(j.action, Action::SecondFactorAuthentication);
        assert!(j.locale.is_none());
        assert_eq!(j.to.country_label(), "1");
    }

    #[test]
    fn every_rule_is_enforced() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("id", serde_json::json!(""), "`id`"),
            ("id", serde_json::json!("x".repeat(129)), "`id`"),
            ("channel", serde_json::json!("fax"), "unknown channel"),
            ("to", serde_json::json!("4155550123"), "`to`"),
            ("to", serde_json::json!("+1234567"), "`to`"),
            ("to", serde_json::json!("+1234567890123456"), "`to`"),
            ("code", serde_json::json!("123"), "`code`"),
            ("code", serde_json::json!("12345678901"), "`code`"),
            ("code", serde_json::json!("12a456"), "`code`"),
            ("code", serde_json::json!(123456), "`code`"),
            ("action", serde_json::json!("login"), "`action`"),
            ("locale", serde_json::json!("es_AR!"), "`locale`"),
            ("user_id", serde_json::json!(""), "`user_id`"),
            ("ip", serde_json::json!("300.1.1.1"), "`ip`"),
            ("expires_at", serde_json::json!("tomorrow"), "`expires_at`"),
            ("vars", serde_json::json!({"a": 1}), "`vars`"),
            ("vars", serde_json::json!([1]), "`vars`"),
            ("vars", serde_json::json!({"brand": "Acme\u{7}"}), "control characters"),
            ("vars", serde_json::json!({"brand": "Acme\nInc"}), "control characters"),
            ("vars", serde_json::json!({"brand": "a\u{85}b"}), "control characters"),
            (
                "vars",
                serde_json::json!({"brand": crate::templates::PAUSE}),
                "control characters",
            ),
            (
                "friendly_name",
                serde_json::json!("Acme\u{1b}[31m"),
                "control characters",
            ),
            (
                "friendly_name",
                serde_json::json!(crate::templates::PAUSE),
                "control characters",
            ),
        ];
        for (field, value, needle) in cases {
            let mut j = valid();
            j[*field] = value.clone();
            let err = job(j).expect_err(field);
            assert!(err.reason.to_string().contains(needle), "{field}: {}", err.reason);
        }
        for missing in ["id", "channel", "to", "code", "user_id"] {
            let mut j = valid();
            j.as_object_mut().unwrap().remove(missing);
            let err = job(j).unwrap_err();
            assert!(
                err.reason.to_string().contains(&format!("`{missing}` is required")),
                "{}",
                err.reason
            );
        }
        let mut many = serde_json::Map::new();
        for i in 0..33 {
            many.insert(format!("k{i}"), "v".into());
        }
        let mut j = valid();
        j["vars"] = serde_json::Value::Object(many);
        assert!(job(j).unwrap_err().reason.to_string().contains("at most 32"));
    }

    /// What an id and a user id may hold (docs/operations.md, "What a job may hold"): a bidi control
    /// (U+202E) reversed the text after it in events and logs, and a non-ASCII id went raw into the
    /// `webhook-id` header.
    #[test]
    fn ids_hold_printable_text_only() {
        let long_ascii = "a".repeat(MAX_ID);
        let cases: &[(&str, &str, bool)] = &[
            ("id", "01JD3V7ZQ4T6Y0M2W8K5H9N1PB", true),
            ("id", "0f8fad5b-d9cb-469f-a165-70867728950e", true),
            ("id", "auth0|job:42/retry#1~x", true),
            ("id", "!", true),
            ("id", &long_ascii, true),
            ("id", &format!("{long_ascii}a"), false),
            ("id", "", false),
            ("id", "job 1", false),
            ("id", " job1", false),
            ("id", "job\t1", false),
            ("id", "job\u{7f}1", false),
            ("id", "job\u{202e}1gnp.exe", false),
            ("id", "job\u{2066}1", false),
            ("id", "job\u{200b}1", false),
            ("id", "job\u{feff}1", false),
            ("id", "jöb1", false),
            ("id", "job\u{a0}1", false),
            ("id", "job\r\nX-Injected: 1", false),
            ("user_id", "auth0|5f7c8ec7c33c6c004bbafe82", true),
            ("user_id", "samlp|Contoso|Jane Doe", true),
            ("user_id", "auth0|josé", true),
            ("user_id", "line|山田太郎", true),
            ("user_id", "oidc|Ελένη-٣", true),
            ("user_id", &"é".repeat(MAX_USER_ID), true),
            ("user_id", &"é".repeat(MAX_USER_ID + 1), false),
            ("user_id", "", false),
            ("user_id", "u\u{202e}1", false),
            ("user_id", "u\u{202a}1", false),
            ("user_id", "u\u{061c}1", false),
            ("user_id", "u\u{200f}1", false),
            ("user_id", "u\u{2069}1", false),
            ("user_id", "u\u{200d}1", false),
            ("user_id", "u\u{ad}1", false),
            ("user_id", "u\u{2028}1", false),
            ("user_id", "u\u{3000}1", false),
            ("user_id", "u\u{e000}1", false),
            ("user_id", "u\u{1b}[31m1", false),
            ("user_id", "u\n1", false),
            ("user_id", "u\u{85}1", false),
        ];
        for (field, value, accepted) in cases {
            let mut j = valid();
            j[*field] = (*value).into();
            match job(j) {
                Ok(parsed) => {
                    assert!(accepted, "{field} {value:?} was accepted");
                    let kept = if *field == "id" { parsed.id } else { parsed.user_id };
                    assert_eq!(kept, *value);
                }
                Err(e) => {
                    assert!(!accepted, "{field} {value:?} was refused: {}", e.reason);
                    assert!(e.reason.to_string().contains(&format!("`{field}`")), "{}", e.reason);
                    // The failure event does not carry the refused value either.
                    let kept = if *field == "id" { e.id } else { e.user_id };
                    assert_eq!(kept, None, "{field} {value:?}");
                }
            }
        }
        // The feedback queue's job ids follow the same rule.
        assert!(valid_id("01JD3V7ZQ4T6Y0M2W8K5H9N1PB") && !valid_id("01JD\u{202e}V7"));
    }

    /// Every string a template can print comes from a job: none may carry the voice pause marker.
    #[test]
    fn the_pause_marker_cannot_be_forged_by_any_field() {
        let forged = format!("Acme{}", crate::templates::PAUSE);
        for field in ["id", "user_id", "friendly_name", "locale"] {
            let mut j = valid();
            j[field] = forged.clone().into();
            assert!(job(j).is_err(), "{field}");
        }
        let mut j = valid();
        j["vars"] = serde_json::json!({ "brand": forged });
        let err = job(j).unwrap_err();
        assert!(err.reason.to_string().contains("control characters"), "{}", err.reason);
        assert!(
            !err.reason.to_string().contains('\u{1}'),
            "the reason does not echo the value"
        );
    }

    #[test]
    fn a_bad_field_is_named_but_its_value_never_echoed() {
        let long_locale = format!("en-{}", "a1b2c3d4".repeat(15 * 1024 / 8));
        let cases: &[(&str, &str)] = &[
            ("locale", "+14155550123"),
            ("locale", "482913"),
            ("locale", &long_locale),
            ("channel", "482913"),
            ("channel", "+14155550123"),
            ("channel", "jane.doe@example.com"),
            ("action", "4829"),
            ("action", "+14155550123"),
            ("ip", "+14155550123"),
            ("expires_at", "482913"),
        ];
        for (field, value) in cases {
            let mut j = valid();
            j[*field] = (*value).into();
            let reason = job(j).expect_err(field).reason.to_string();
            assert!(reason.contains(&format!("`{field}`")), "{field}: {reason}");
            assert!(!reason.contains(value), "{field}: the value was echoed: {reason}");
            assert!(reason.len() < 200, "{field}: {} bytes", reason.len());
            let digits = reason
                .replace("RFC 3339", "")
                .split(|c: char| !c.is_ascii_digit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(digits < 4, "{field}: a digit run that could be a code: {reason}");
        }
        let mut j = valid();
        j["vars"] = serde_json::json!({"482913": 482913});
        let reason = job(j).unwrap_err().reason.to_string();
        assert!(!reason.contains("482913"), "{reason}");
        let body = valid().to_string();
        let reason = Job::from_message(body.as_bytes(), Some("text/+14155550123"))
            .unwrap_err()
            .reason
            .to_string();
        assert!(!reason.contains("14155550123"), "{reason}");
    }

    #[test]
    fn email_needs_an_address() {
        let mut j = valid();
        j["channel"] = "email".into();
        assert!(job(j.clone()).is_err());
        j["to"] = "jane@example.com".into();
        let j = job(j).unwrap();
        assert_eq!(j.to.masked(), "j***@***.com");
        assert_eq!(j.to.country_label(), "none");
    }

    #[test]
    fn body_level_checks() {
        assert!(
            Job::from_message(b"not json", None)
                .unwrap_err()
                .reason
                .to_string()
                .contains("not JSON")
        );
        assert!(
            Job::from_message(b"[1]", None)
                .unwrap_err()
                .reason
                .to_string()
                .contains("object")
        );
        assert!(
            Job::from_message(b"  {\"id\": ", None)
                .unwrap_err()
                .reason
                .to_string()
                .contains("not JSON")
        );
        // A field given twice is ambiguous: which `to` did the sender mean?
        let twice = br#"{"id":"j1","channel":"sms","to":"+14155550123","to":"+14155550124","code":"123456"}"#;
        assert!(
            Job::from_message(twice, None)
                .unwrap_err()
                .reason
                .to_string()
                .contains("duplicate field `to`")
        );
        let body = valid().to_string();
        assert!(Job::from_message(body.as_bytes(), Some("text/plain")).is_err());
        assert!(Job::from_message(body.as_bytes(), Some("application/json; charset=utf-8")).is_ok());
        let big = vec![b' '; MAX_BODY + 1];
        assert!(
            Job::from_message(&big, None)
                .unwrap_err()
                .reason
                .to_string()
                .contains("bytes")
        );
    }

    #[test]
    fn invalid_job_keeps_readable_fields() {
        let mut j = valid();
        j["code"] = "x".into();
        let err = job(j).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("j1"));
        assert_eq!(err.channel, Some(Channel::Sms));
    }

    #[test]
    fn masks_hide_the_subscriber() {
        let p = PhoneNumber::parse("+14155550123").unwrap();
        assert_eq!(p.masked(), "+1415*****23");
        assert_eq!(format!("{p:?}"), "PhoneNumber(+1415*****23)");
        assert_eq!(PhoneNumber::parse("+2250712345678").unwrap().masked(), "+2250*******78");
        // The shortest numbers (Niue's 4-digit fixed lines) still hide their subscriber part.
        assert_eq!(PhoneNumber::parse("+6837012").unwrap().masked(), "+68***12");
        assert_eq!(format!("{:?}", OtpCode::parse("482913").unwrap()), "OtpCode(***)");
    }

    #[test]
    fn country_codes_from_metadata() {
        let cc = |s: &str| PhoneNumber::parse(s).unwrap().country_code();
        assert_eq!(cc("+14155550123"), Some(1));
        assert_eq!(cc("+447700900123"), Some(44));
        assert_eq!(cc("+2250700000000"), Some(225));
        assert_eq!(cc("+99912345678"), None);
    }

    /// Lengths are libphonenumber's possible lengths of the calling code, across all its regions; the old
    /// hand check (`+` and 8–15 digits) refused Niue's 4-digit fixed lines (7 digits with +683).
    #[test]
    fn numbers_are_refused_only_for_a_length_their_calling_code_cannot_have() {
        let cases: &[(&str, bool)] = &[
            ("+6837012", true),
            ("+6838884012", true),
            ("+68370123", false),
            ("+683701", false),
            ("+14155550123", true),
            ("+1415555012", false),
            ("+141555501234", false),
            ("+2250712345678", true),
            ("+22507123456", false),
            ("+447700900123", true),
            ("+44770090012", true),
            ("+4477009001234", false),
            ("+2905123", true),
            ("+290512", false),
            // +882 (non-geographic): lengths of every network under it.
            ("+882345678901", true),
            // Unknown calling codes keep E.164's shape.
            ("+99912345678", true),
            ("+9991234", false),
            ("+1234567890123456", false),
            ("+", false),
        ];
        for (number, accepted) in cases {
            assert_eq!(PhoneNumber::parse(number).is_ok(), *accepted, "{number}");
        }
        assert_eq!(PhoneNumber::parse("+1415555012"), Err(PhoneNumberError::Length));
    }

    /// A range the metadata does not list is still a number: the provider decides. It keeps the calling
    /// code's main region.
    #[test]
    fn a_range_not_in_the_metadata_is_accepted() {
        let region = |s: &str| PhoneNumber::parse(s).unwrap().region().map(|r| r.to_string());
        // +1 999 is not an area code (yet); +33 0… is no French range; +44 0… no British one.
        assert_eq!(region("+19995550123").as_deref(), Some("US"));
        assert_eq!(region("+33012345678").as_deref(), Some("FR"));
        assert_eq!(region("+440012345678").as_deref(), Some("GB"));
        assert_eq!(region("+76012345678").as_deref(), Some("RU"));
        assert_eq!(region("+882345678901"), None, "non-geographic");
        assert_eq!(region("+99912345678"), None, "unknown calling code");
    }

    #[test]
    fn regions_from_metadata() {
        let region = |s: &str| PhoneNumber::parse(s).unwrap().region().map(|r| r.to_string());
        let cases: &[(&str, &str)] = &[
            ("+12125550123", "US"),
            ("+14155550123", "US"),
            ("+18765550123", "JM"),
            ("+16585550123", "JM"),
            ("+14165550123", "CA"),
            ("+12425550123", "BS"),
            ("+17875550123", "PR"),
            ("+77012345678", "KZ"),
            ("+77272123456", "KZ"),
            ("+74951234567", "RU"),
            ("+79161234567", "RU"),
            ("+441481256789", "GG"),
            ("+447781123456", "GG"),
            ("+441534456789", "JE"),
            ("+441624756789", "IM"),
            ("+442071234567", "GB"),
            ("+447700900123", "GB"),
            ("+6837012", "NU"),
            ("+2250700000000", "CI"),
            ("+5926001234", "GY"),
        ];
        for (number, want) in cases {
            assert_eq!(region(number).as_deref(), Some(*want), "{number}");
        }
        let jm = PhoneNumber::parse("+18765550123").unwrap();
        assert_eq!(jm.calling_code().map(CallingCode::get), Some(1));
        assert_eq!(
            Recipient::Phone(jm).country_label(),
            "1",
            "the label stays the calling code"
        );
    }

    /// A recorded event is read back: each `country` label parses to the country that wrote it.
    #[test]
    fn country_labels_read_back() {
        for label in ["1", "44", "225", "unknown", "none"] {
            let country = Country::parse(label).unwrap();
            assert_eq!(country.to_string(), label);
            let json = serde_json::to_string(&country).unwrap();
            assert_eq!(serde_json::from_str::<Country>(&json).unwrap(), country);
        }
        assert_eq!(Country::parse("999"), None, "not an assigned calling code");
        for action in Action::ALL {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.as_str()));
            assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), action);
        }
    }

    #[test]
    fn locales_are_canonical_and_fall_back() {
        let l = Locale::parse("ES-ar").unwrap();
        assert_eq!(l.as_str(), "es-AR");
        assert_eq!(l.fallbacks().collect::<Vec<_>>(), ["es-AR", "es"]);
        let l = Locale::parse("zh-hant-tw").unwrap();
        assert_eq!(l.fallbacks().collect::<Vec<_>>(), ["zh-Hant-TW", "zh-Hant", "zh"]);
        assert!(Locale::parse("../etc").is_err());
        assert!(Locale::parse("en\0").is_err());
    }

    #[test]
    fn spoken_code() {
        assert_eq!(OtpCode::parse("482913").unwrap().spoken(), "4. 8. 2. 9. 1. 3");
    }

    /// The reasons are dead-letter reasons and event messages: their words are part of the interface.
    #[test]
    fn reasons_read_as_they_always_have() {
        let reason = |field: &str, value: serde_json::Value| {
            let mut j = valid();
            j[field] = value;
            job(j).unwrap_err().reason.to_string()
        };
        assert_eq!(
            reason("to", "14155550123".into()),
            "field `to` must start with `+` (E.164)"
        );
        assert_eq!(reason("code", "12".into()), "field `code` must be 4 to 10 digits");
        assert_eq!(
            reason("locale", "".into()),
            "field `locale`: is not a BCP 47 language tag"
        );
        assert_eq!(reason("id", 7.into()), "field `id` must be a string");
        assert_eq!(
            reason("vars", serde_json::json!({"k": "a\nb"})),
            "field `vars`: value of `k` contains control characters"
        );
        let mut j = valid();
        j.as_object_mut().unwrap().remove("user_id");
        assert_eq!(job(j).unwrap_err().reason.to_string(), "field `user_id` is required");
        assert_eq!(
            Job::from_message(b"[1]", None).unwrap_err().reason.to_string(),
            "body is not a JSON object"
        );
        assert_eq!(
            CallingCode::parse("999").unwrap_err().to_string(),
            "not an assigned country calling code"
        );
    }
}
