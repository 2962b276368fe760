//! The most a rendered message may hold, per channel and part (docs/operations.md, "How long a message may
//! be"): what the providers take. A render writes into a bounded buffer and stops as soon as it passes the
//! bound, so a template whose output multiplies with a job's vars never builds the oversized message.

use std::fmt;
use std::io;

use handlebars::{Context, Handlebars, RenderError};

use super::{Part, Rendered};
use crate::job::{Channel, Locale};

/// Twilio's limit on a message `Body` (the strictest of the SMS providers herald speaks to).
pub const MAX_SMS_CHARS: usize = crate::sms::TWILIO_MAX_CHARS;
/// Twilio's limit on a call's `Twiml` parameter; herald's TwiML says the text twice, so this bounds the
/// text at a little under 2,000 characters.
pub const MAX_TWIML_CHARS: usize = 4000;
/// RFC 5322's limit on a header line: a longer subject is folded by some mailers and refused by others.
pub const MAX_SUBJECT_CHARS: usize = 998;
/// The text and the HTML part each: ample for a message that carries a code, well under every mail
/// provider's message size limit (SES: 10 MB, SMTP servers commonly 10 to 25 MB).
pub const MAX_EMAIL_PART_BYTES: usize = 256 * 1024;

/// The limit of one part, and how it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Characters of the trimmed body.
    Sms,
    /// Characters of the TwiML the trimmed text becomes for Twilio.
    Twiml,
    /// Characters of the trimmed subject.
    Subject,
    /// Bytes (UTF-8) of the part.
    EmailPart,
}

impl Cap {
    pub fn of(channel: Channel, part: Part) -> Cap {
        match (channel, part) {
            // A WhatsApp message has no part herald renders; its code is 10 digits at most.
            (Channel::Sms | Channel::Whatsapp, _) => Cap::Sms,
            (Channel::Voice, _) => Cap::Twiml,
            (Channel::Email, Part::Subject) => Cap::Subject,
            (Channel::Email, _) => Cap::EmailPart,
        }
    }

    pub fn limit(self) -> usize {
        match self {
            Cap::Sms => MAX_SMS_CHARS,
            Cap::Twiml => MAX_TWIML_CHARS,
            Cap::Subject => MAX_SUBJECT_CHARS,
            Cap::EmailPart => MAX_EMAIL_PART_BYTES,
        }
    }

    /// Bytes a render may write before it is stopped: no longer output can be under the limit once it is
    /// trimmed (a character is at most 4 bytes; the TwiML holds the text).
    fn bound(self) -> usize {
        match self {
            Cap::Sms | Cap::Twiml | Cap::Subject => 4 * self.limit(),
            Cap::EmailPart => self.limit(),
        }
    }

    /// The size of a part's final text in this cap's unit; `language` is the voice text's (the others'
    /// sizes do not depend on it).
    pub fn measure(self, text: &str, language: &Locale) -> usize {
        match self {
            Cap::Sms | Cap::Subject => text.chars().count(),
            Cap::Twiml => super::twiml::twiml_length_bound(text, language),
            Cap::EmailPart => text.len(),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Cap::EmailPart => "bytes",
            _ => "characters",
        }
    }
}

impl fmt::Display for Cap {
    /// "the 1600 characters an SMS may have": what a message over the cap is told.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Cap::Sms => "an SMS may have (Twilio's limit)",
            Cap::Twiml => "a call's TwiML may have (Twilio's limit)",
            Cap::Subject => "an email subject may have",
            Cap::EmailPart => "an email part may have",
        };
        write!(f, "the {} {} {what}", self.limit(), self.unit())
    }
}

/// A rendered part over its cap, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrun {
    pub cap: Cap,
    /// Measured in the cap's unit; `None`: the render was stopped at its bound, before it was done.
    pub size: Option<usize>,
}

impl Overrun {
    /// Orders overruns: a stopped render is larger than any measured one.
    pub fn size(self) -> usize {
        self.size.unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some(n) => write!(f, "renders {n} {}, more than {}", self.cap.unit(), self.cap),
            None => write!(
                f,
                "renders more than {} (the render was stopped at {} bytes)",
                self.cap,
                self.cap.bound()
            ),
        }
    }
}

/// Why a bounded render gave no text.
#[derive(Debug)]
pub enum Failed {
    /// The output passed the cap's bound: the render was stopped there.
    Stopped,
    Render(RenderError),
}

/// Renders `name` into a buffer of at most `cap`'s bound.
pub fn render(hb: &Handlebars<'_>, name: &str, ctx: &Context, cap: Cap) -> Result<String, Failed> {
    let mut out = Bounded {
        buf: Vec::new(),
        bound: cap.bound(),
        stopped: false,
    };
    match hb.render_with_context_to_write(name, ctx, &mut out) {
        Ok(()) => {}
        Err(_) if out.stopped => return Err(Failed::Stopped),
        Err(e) => return Err(Failed::Render(e)),
    }
    // Handlebars writes whole `str`s, and the buffer takes each whole or not at all.
    String::from_utf8(out.buf).map_err(|e| Failed::Render(RenderError::from(e)))
}

/// A writer that refuses what would take it past `bound` bytes.
struct Bounded {
    buf: Vec<u8>,
    bound: usize,
    stopped: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.bound {
            self.stopped = true;
            return Err(io::Error::other("the rendered text is over its bound"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `text`, a part's final text, is over `cap`.
pub fn over(cap: Cap, text: &str, language: &Locale) -> Option<Overrun> {
    let size = cap.measure(text, language);
    (size > cap.limit()).then_some(Overrun { cap, size: Some(size) })
}

/// The first part of a message that is over its cap. `any` is a locale for the parts whose size has none.
pub fn oversized(rendered: &Rendered, any: &Locale) -> Option<(Part, Overrun)> {
    match rendered {
        Rendered::Sms { body } => over(Cap::Sms, body, any).map(|o| (Part::Body, o)),
        Rendered::Whatsapp => None,
        Rendered::Voice { text, language } => over(Cap::Twiml, text, language).map(|o| (Part::Body, o)),
        Rendered::Email { subject, text, html } => [(Part::Subject, subject), (Part::Text, text), (Part::Html, html)]
            .into_iter()
            .find_map(|(part, t)| over(Cap::of(Channel::Email, part), t, any).map(|o| (part, o))),
    }
}
