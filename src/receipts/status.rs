//! The status vocabulary of delivery receipts: Twilio's message and call statuses, which the custom
//! provider's receipts use too.

use crate::job::Channel;

/// A message's or call's status as a provider reports it. Closed: a status outside it is counted and
/// otherwise ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    // Messages (and `queued`, `failed`, `canceled` for calls too).
    Accepted,
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Read,
    Canceled,
    // Calls.
    Initiated,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
}

impl Status {
    pub const ALL: [Status; 16] = [
        Status::Accepted,
        Status::Scheduled,
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Delivered,
        Status::Undelivered,
        Status::Failed,
        Status::Read,
        Status::Canceled,
        Status::Initiated,
        Status::Ringing,
        Status::InProgress,
        Status::Completed,
        Status::Busy,
        Status::NoAnswer,
    ];

    /// Twilio's spelling (`in-progress`, `no-answer`). Twilio's `partially_delivered` (a long message some of
    /// whose parts were delivered, `message_enum_status` in twilio-oai) is final and is taken as
    /// `undelivered`: the recipient may lack the part with the code, so it is no proof of delivery.
    pub fn parse(text: &str) -> Option<Status> {
        if text == "partially_delivered" {
            return Some(Status::Undelivered);
        }
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Undelivered => "undelivered",
            Status::Failed => "failed",
            Status::Read => "read",
            Status::Canceled => "canceled",
            Status::Initiated => "initiated",
            Status::Ringing => "ringing",
            Status::InProgress => "in-progress",
            Status::Completed => "completed",
            Status::Busy => "busy",
            Status::NoAnswer => "no-answer",
        }
    }

    /// Where the status stands in its message's or call's life: a receipt never moves a job to a lower
    /// rank. Every final status has the same rank, so the first final one wins; `read` (a chat
    /// channel's read receipt) comes after `delivered`.
    pub fn rank(self) -> u8 {
        match self {
            Status::Accepted | Status::Scheduled => 1,
            Status::Queued => 2,
            Status::Sending | Status::Initiated => 3,
            Status::Sent | Status::Ringing => 4,
            Status::InProgress => 5,
            Status::Delivered
            | Status::Undelivered
            | Status::Failed
            | Status::Canceled
            | Status::Completed
            | Status::Busy
            | Status::NoAnswer => 6,
            Status::Read => 7,
        }
    }

    /// A final status ends the job's receipts: it is evented and counted, once.
    pub fn is_final(self) -> bool {
        self.rank() == 6
    }

    /// Whether the recipient got it: a delivered message or an answered call. Every other final status
    /// counts as unverified for the guard of docs/fraud-and-limits.md.
    pub fn is_delivered(self) -> bool {
        matches!(self, Status::Delivered | Status::Completed)
    }

    /// Whether a message (sms) or a call (voice) can have this status.
    pub fn fits(self, channel: Channel) -> bool {
        let shared = matches!(self, Status::Queued | Status::Failed | Status::Canceled);
        let sms = matches!(
            self,
            Status::Accepted
                | Status::Scheduled
                | Status::Sending
                | Status::Sent
                | Status::Delivered
                | Status::Undelivered
                | Status::Read
        );
        match channel {
            // WhatsApp messages have a message's statuses (Twilio's `read` among them).
            Channel::Sms | Channel::Whatsapp => shared || sms,
            Channel::Voice => shared || !sms,
            Channel::Email => false,
        }
    }
}

/// A status with the vocabulary it was reported in: Twilio says which (`MessageStatus` for a message,
/// `CallStatus` for a call); the custom provider's receipts do not. It moves only a message of a channel
/// that vocabulary is for and that can have the status: a call's `in-progress` for an SMS is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub status: Status,
    /// The channel whose vocabulary it came in; `None` when the callback does not say.
    pub vocabulary: Option<Channel>,
}

impl Reported {
    /// A `MessageStatus` (or `SmsStatus`).
    pub fn message(status: Status) -> Reported {
        Reported {
            status,
            vocabulary: Some(Channel::Sms),
        }
    }

    /// A `CallStatus`.
    pub fn call(status: Status) -> Reported {
        Reported {
            status,
            vocabulary: Some(Channel::Voice),
        }
    }

    /// A status whose callback does not say whose vocabulary it is (the custom provider's).
    pub fn unsaid(status: Status) -> Reported {
        Reported {
            status,
            vocabulary: None,
        }
    }

    /// Whether it may move a message sent on `channel`.
    pub fn applies_to(self, channel: Channel) -> bool {
        // A message's vocabulary (Twilio's `MessageStatus`) is a WhatsApp message's too.
        let vocabulary_of = |c: Channel| if c == Channel::Whatsapp { Channel::Sms } else { c };
        self.vocabulary.is_none_or(|v| v == vocabulary_of(channel)) && self.status.fits(channel)
    }

    /// The channels it may move, as `,sms,voice,` (what the Redis script matches the message's against).
    pub fn channels(self) -> String {
        let mut list = String::from(",");
        for channel in Channel::ALL.into_iter().filter(|c| self.applies_to(*c)) {
            list.push_str(channel.as_str());
            list.push(',');
        }
        list
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_the_final_ones_are_exactly_those_evented() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert!(s.fits(Channel::Sms) || s.fits(Channel::Voice), "{s}");
        }
        assert_eq!(Status::parse("Delivered"), None);
        // Final, and no proof that the code arrived (was None: never final, failed before).
        assert_eq!(Status::parse("partially_delivered"), Some(Status::Undelivered));
        assert_eq!(Status::parse("partially-delivered"), None);
        let finals: Vec<&str> = Status::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(Status::as_str)
            .collect();
        assert_eq!(
            finals,
            [
                "delivered",
                "undelivered",
                "failed",
                "canceled",
                "completed",
                "busy",
                "no-answer"
            ]
        );
        assert!(Status::Sent.rank() < Status::Delivered.rank());
        assert!(Status::Queued.rank() < Status::Sent.rank());
        assert!(Status::Ringing.rank() < Status::Completed.rank());
        assert!(!Status::Completed.fits(Channel::Sms));
        assert!(!Status::Delivered.fits(Channel::Voice));
        assert!(Status::Failed.fits(Channel::Voice) && Status::Failed.fits(Channel::Sms));
    }

    #[test]
    fn a_status_moves_only_a_message_of_its_vocabularys_channel() {
        let in_progress = Reported::call(Status::InProgress);
        assert!(in_progress.applies_to(Channel::Voice));
        assert!(!in_progress.applies_to(Channel::Sms));
        assert_eq!(in_progress.channels(), ",voice,");
        // `queued` and `failed` are in both vocabularies: each applies to its own channel only.
        assert!(!Reported::call(Status::Queued).applies_to(Channel::Sms));
        assert!(!Reported::message(Status::Failed).applies_to(Channel::Voice));
        // A message's vocabulary is a WhatsApp message's too (Twilio's WhatsApp StatusCallback).
        assert_eq!(Reported::message(Status::Failed).channels(), ",sms,whatsapp,");
        assert!(Reported::message(Status::Read).applies_to(Channel::Whatsapp));
        assert!(!Reported::call(Status::Completed).applies_to(Channel::Whatsapp));
        // A message's status reported as a call's fits no channel.
        assert_eq!(Reported::call(Status::Delivered).channels(), ",");
        // Unsaid: the channels that can have it.
        assert_eq!(Reported::unsaid(Status::InProgress).channels(), ",voice,");
        assert_eq!(Reported::unsaid(Status::Delivered).channels(), ",sms,whatsapp,");
        assert_eq!(Reported::unsaid(Status::Failed).channels(), ",sms,voice,whatsapp,");
        for s in Status::ALL {
            assert!(!Reported::unsaid(s).applies_to(Channel::Email), "{s}");
        }
    }
}
