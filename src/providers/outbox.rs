//! Development provider: appends each rendered message to a JSON-lines file instead of sending it.
//! The file holds codes and full addresses by design; it is for a developer's own machine.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::{Provider, ProviderError, Receipt, Validity};
use crate::job::Job;
use crate::templates::{PAUSE, Rendered};

/// One line of the outbox file, written without building a JSON map first (keys in alphabetical order,
/// as they always were).
#[derive(Serialize)]
struct Line<'a> {
    action: &'a str,
    body: Cow<'a, str>,
    channel: &'a str,
    date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    job_id: &'a str,
    subject: Option<&'a str>,
    to: &'a str,
}

pub struct Outbox {
    file: File,
}

impl Outbox {
    pub fn open(path: &Path) -> std::io::Result<Outbox> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Outbox { file })
    }
}

#[async_trait::async_trait]
impl Provider for Outbox {
    fn name(&self) -> super::ProviderKind {
        super::ProviderKind::Outbox
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let (subject, body, html) = match message {
            Rendered::Sms { body } => (None, Cow::Borrowed(body.as_str()), None),
            // What a WhatsApp authentication template would carry: the code.
            Rendered::Whatsapp => (None, Cow::Borrowed(job.code.expose()), None),
            Rendered::Voice { text, .. } => (None, Cow::Owned(text.replace(PAUSE, " … ")), None),
            Rendered::Email { subject, text, html } => (
                Some(subject.as_str()),
                Cow::Borrowed(text.as_str()),
                Some(html.as_str()),
            ),
        };
        let line = Line {
            action: job.action.as_str(),
            body,
            channel: job.channel.as_str(),
            date: crate::clock::now_rfc3339(),
            html,
            job_id: &job.id,
            subject,
            to: job.to.expose(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| ProviderError::Permanent {
            message: format!("cannot encode outbox line: {e}"),
            provider_code: None,
        })?;
        bytes.push(b'\n');
        // One write(2) on an O_APPEND file: lines from concurrent deliveries never interleave.
        (&self.file).write_all(&bytes).map_err(|e| ProviderError::Transient {
            message: format!("cannot append to outbox: {e}"),
            provider_code: None,
            retry_after: None,
        })?;
        Ok(Receipt::sent(Some(format!("outbox-{}", job.id))))
    }
}
