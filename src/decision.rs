//! One job, one decision (docs/guarantees.md). What herald knows of one copy of a job — its parse, its entry in
//! the outcome store, what the broker says of this delivery, and how the delivery went — becomes a
//! [`Disposition`]: what that copy's transaction holds. No broker and no store here: the consumer gathers
//! the inputs and moves messages, [`crate::dispatch`] delivers, and the rules are tested from a table.

use std::time::Duration;

use crate::dispatch::{Answer, Answered};
use crate::events::{ErrorCode, Event, EventError, RecordedEvent};
use crate::job::{InvalidJob, Job, Locale};
use crate::privacy::scrub;
use crate::store::{Entry, Record};

/// What the broker says of this copy of a message: whether it is a redelivery, and how many deliveries
/// it has had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redelivery {
    /// The broker's redelivery flag: set only by the broker, never by a publisher.
    pub redelivered: bool,
    /// Deliveries of this message so far, this one included, as the broker counts them.
    pub deliveries: u64,
}

impl Redelivery {
    /// A copy's delivery count: the broker's `x-delivery-count` (earlier deliveries) on an actual
    /// redelivery; on a first delivery such a header can only be the publisher's.
    pub fn new(redelivered: bool, delivery_count_header: Option<u64>) -> Redelivery {
        let earlier = if redelivered {
            delivery_count_header.unwrap_or(0)
        } else {
            0
        };
        Redelivery {
            redelivered,
            deliveries: earlier.saturating_add(1),
        }
    }
}

/// What a copy's transaction holds.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// The job reached its outcome before: acknowledged, not sent. `reply` is for a caller waiting on
    /// `reply_to`; `herald.events` hears nothing.
    Duplicate { reply: Event },
    /// The broker's redelivery of a job whose outcome was recorded but whose transaction never committed:
    /// its recorded outcome is published. `recorded` is what the record says of itself, read as types.
    Republish { record: Record, recorded: RecordedEvent },
    /// Not an outcome: the job goes to the delay queue of `after`, and comes back as `next_attempt`.
    /// `reason` (scrubbed) is for the log.
    Retry {
        after: Duration,
        next_attempt: u32,
        reason: String,
    },
    /// The job's outcome: its event, recorded, and the `x-herald-error` reason when the job also goes to
    /// `herald.dead`.
    Final { event: Event, dead_reason: Option<String> },
    /// A message that is not a valid job: its failure event and `herald.dead`, not recorded (it has no
    /// id to trust).
    Rejected { event: Event, reason: String },
}

/// What comes next for a copy, before any delivery: settled from the store and the broker alone (its
/// [`Disposition`]), or deliver it as attempt `attempt`.
#[derive(Debug, Clone)]
pub enum Next {
    /// Boxed: a settled copy is the rare path, and this keeps the common one small.
    Settled(Box<Disposition>),
    Deliver {
        attempt: u32,
    },
}

/// How herald's queue dead-letters poison: `Some(limit)` on a quorum queue with a delivery limit.
pub type PoisonLimit = Option<u32>;

/// Before delivering `job`: `prior` is its entry in the outcome store (`None` when there is none or the
/// store could not be read: then it is delivered, unprotected).
pub fn before_delivery(
    job: &Job,
    prior: Option<Entry>,
    redelivery: Redelivery,
    poison: PoisonLimit,
    default_locale: &Locale,
) -> Next {
    let mut attempt = 1;
    match prior {
        // A job whose commit went through is acked and never redelivered. So a record whose commit mark
        // is missing means "finished" too, unless this is the broker's redelivery of the job: a replay
        // finding it is a duplicate (the event is out, or the original's redelivery publishes it), and a
        // lost mark never makes a second event.
        Some(Entry::Outcome(record)) if record.committed || !redelivery.redelivered => {
            return Next::Settled(Box::new(duplicate(job, default_locale)));
        }
        Some(Entry::Outcome(record)) => {
            if let Ok(recorded) = serde_json::from_str::<RecordedEvent>(&record.event) {
                return Next::Settled(Box::new(Disposition::Republish { record, recorded }));
            }
            tracing::warn!(job_id = %job.id, "unreadable outcome record; delivering again");
        }
        Some(Entry::Retrying { next_attempt }) => attempt = next_attempt.max(1),
        // The id of a workflow under way (docs/workflows.md) sent again without its `workflow`: never a
        // second send of its code.
        Some(Entry::Workflow(_)) => return Next::Settled(Box::new(duplicate(job, default_locale))),
        None => {}
    }
    if let Some(limit) = poison
        && limit > 1
        && redelivery.deliveries >= u64::from(limit)
    {
        // Every earlier delivery ended without an outcome (herald died on it): a poison job.
        let answered = Answered {
            answer: Answer::failed(
                ErrorCode::AttemptsExhausted,
                format!("delivered {} times without reaching an outcome", redelivery.deliveries),
            ),
            duration: Duration::ZERO,
        };
        return Next::Settled(Box::new(after_delivery(job, attempt, &answered, default_locale)));
    }
    Next::Deliver { attempt }
}

/// After attempt `attempt` of `job` was delivered.
pub fn after_delivery(job: &Job, attempt: u32, answered: &Answered, default_locale: &Locale) -> Disposition {
    let success = matches!(answered.answer, Answer::Sent { .. });
    let mut event = Event::for_job(job, default_locale, success);
    event.duration_ms = answered.duration.as_millis() as u64;
    event.attempt = attempt;
    match &answered.answer {
        Answer::Retry { after, message } => {
            return Disposition::Retry {
                after: *after,
                next_attempt: attempt.saturating_add(1),
                reason: scrub(message),
            };
        }
        Answer::Sent { provider, receipt } => {
            event.provider = Some(*provider);
            event.provider_message_id = receipt.message_id.clone();
        }
        Answer::Failed {
            code,
            message,
            provider,
            provider_code,
            scope,
        } => {
            event.provider = *provider;
            event.scope = *scope;
            event.error = Some(EventError {
                code: *code,
                message: scrub(message),
                provider_code: provider_code.clone(),
            });
        }
    }
    let dead_reason = answered.answer.dead_letter_reason().map(|r| scrub(&r));
    Disposition::Final { event, dead_reason }
}

/// A message that did not parse as a job.
pub fn rejected(invalid: &InvalidJob) -> Disposition {
    let event = Event::invalid(invalid);
    let reason = format!(
        "invalid_job: {}",
        event.error.as_ref().map_or("", |e| e.message.as_str())
    );
    Disposition::Rejected { event, reason }
}

fn duplicate(job: &Job, default_locale: &Locale) -> Disposition {
    let mut reply = Event::for_job(job, default_locale, false);
    reply.error = Some(EventError {
        code: ErrorCode::Duplicate,
        message: "this job id already reached an outcome; it was not sent again".into(),
        provider_code: None,
    });
    Disposition::Duplicate { reply }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ProviderKind, Receipt};

    fn job() -> Job {
        Job::from_json(br#"{"id":"j1","channel":"sms","to":"+14155550123","code":"482913","user_id":"u1"}"#).unwrap()
    }

    fn en() -> Locale {
        Locale::parse("en").unwrap()
    }

    fn record(committed: bool) -> Entry {
        Entry::Outcome(Record {
            event: r#"{"type":"gd_send_sms","channel":"sms"}"#.into(),
            dead_reason: None,
            committed,
        })
    }

    const FIRST: Redelivery = Redelivery {
        redelivered: false,
        deliveries: 1,
    };

    fn redelivered(deliveries: u64) -> Redelivery {
        Redelivery {
            redelivered: true,
            deliveries,
        }
    }

    /// What a step settles to, in a word, for the table.
    fn word(step: &Next) -> String {
        match step {
            Next::Deliver { attempt } => format!("deliver {attempt}"),
            Next::Settled(settled) => match settled.as_ref() {
                Disposition::Duplicate { reply } => {
                    assert_eq!(reply.error.as_ref().unwrap().code, ErrorCode::Duplicate);
                    "duplicate".into()
                }
                Disposition::Republish { recorded, .. } => {
                    assert_eq!(recorded.kind.as_str(), "gd_send_sms");
                    "republish".into()
                }
                Disposition::Final { event, dead_reason } => format!(
                    "final {} dead={}",
                    event.error.as_ref().map_or("sent", |e| e.code.as_str()),
                    dead_reason.is_some()
                ),
                other => format!("{other:?}"),
            },
        }
    }

    #[test]
    fn before_delivery_rules() {
        let unreadable = Entry::Outcome(Record {
            event: "{".into(),
            dead_reason: None,
            committed: false,
        });
        let cases: &[(&str, Option<Entry>, Redelivery, PoisonLimit, &str)] = &[
            ("fresh job", None, FIRST, Some(5), "deliver 1"),
            ("finished and marked", Some(record(true)), FIRST, Some(5), "duplicate"),
            (
                "finished, marked, redelivered",
                Some(record(true)),
                redelivered(2),
                Some(5),
                "duplicate",
            ),
            (
                "replay finding an unmarked record",
                Some(record(false)),
                FIRST,
                Some(5),
                "duplicate",
            ),
            (
                "redelivery of an unmarked record",
                Some(record(false)),
                redelivered(2),
                Some(5),
                "republish",
            ),
            (
                "unreadable record, redelivered",
                Some(unreadable),
                redelivered(2),
                Some(5),
                "deliver 1",
            ),
            (
                "retry coming back",
                Some(Entry::Retrying { next_attempt: 3 }),
                FIRST,
                Some(5),
                "deliver 3",
            ),
            (
                "retry entry of 0",
                Some(Entry::Retrying { next_attempt: 0 }),
                FIRST,
                Some(5),
                "deliver 1",
            ),
            (
                "poison at the limit",
                None,
                redelivered(5),
                Some(5),
                "final attempts_exhausted dead=true",
            ),
            ("below the limit", None, redelivered(4), Some(5), "deliver 1"),
            ("classic queue: no limit", None, redelivered(50), None, "deliver 1"),
            ("limit 1 means none", None, redelivered(50), Some(1), "deliver 1"),
            // A recorded outcome wins over the poison count: it is published, not failed again.
            (
                "poison with a record",
                Some(record(false)),
                redelivered(9),
                Some(5),
                "republish",
            ),
        ];
        for (name, prior, redelivery, poison, expected) in cases {
            let step = before_delivery(&job(), prior.clone(), *redelivery, *poison, &en());
            assert_eq!(word(&step), *expected, "{name}");
        }
    }

    #[test]
    fn a_publishers_delivery_count_is_ignored_on_a_first_delivery() {
        assert_eq!(Redelivery::new(false, Some(10)).deliveries, 1);
        assert_eq!(Redelivery::new(true, Some(4)).deliveries, 5);
        assert_eq!(Redelivery::new(true, None).deliveries, 1);
        assert_eq!(Redelivery::new(true, Some(u64::MAX)).deliveries, u64::MAX);
    }

    fn answered(answer: Answer) -> Answered {
        Answered {
            answer,
            duration: Duration::from_millis(142),
        }
    }

    #[test]
    fn after_delivery_rules() {
        let sent = after_delivery(
            &job(),
            2,
            &answered(Answer::Sent {
                provider: ProviderKind::Twilio,
                receipt: Receipt::sent(Some("SM1".into())),
            }),
            &en(),
        );
        let Disposition::Final { event, dead_reason } = sent else {
            panic!("sent is final")
        };
        assert_eq!(
            (event.kind.as_str(), event.attempt, event.duration_ms),
            ("gd_send_sms", 2, 142)
        );
        assert_eq!(
            (
                event.provider.map(ProviderKind::name),
                event.provider_message_id.as_deref()
            ),
            (Some("twilio"), Some("SM1"))
        );
        assert!(dead_reason.is_none());

        let cases: &[(Answer, &str, bool)] = &[
            (
                Answer::Failed {
                    code: ErrorCode::Throttled,
                    message: "over the user limit".into(),
                    provider: None,
                    provider_code: None,
                    scope: Some(crate::events::Scope::User),
                },
                "throttled",
                false,
            ),
            (Answer::failed(ErrorCode::Expired, "expired"), "expired", false),
            (
                Answer::failed(ErrorCode::BlockedDestination, "country"),
                "blocked_destination",
                false,
            ),
            (
                Answer::Failed {
                    code: ErrorCode::ProviderRejected,
                    message: "The 'To' number +14155550123 is not valid".into(),
                    provider: Some(ProviderKind::Twilio),
                    provider_code: crate::providers::ProviderCode::twilio(&serde_json::json!(21211)),
                    scope: None,
                },
                "provider_rejected",
                true,
            ),
            (
                Answer::failed(ErrorCode::AttemptsExhausted, "503"),
                "attempts_exhausted",
                true,
            ),
            (
                Answer::failed(ErrorCode::ProviderUnavailable, "none"),
                "provider_unavailable",
                true,
            ),
        ];
        for (outcome, code, dead) in cases {
            let Disposition::Final { event, dead_reason } =
                after_delivery(&job(), 1, &answered(outcome.clone()), &en())
            else {
                panic!("{code} is final")
            };
            let error = event.error.as_ref().unwrap();
            assert_eq!(error.code.as_str(), *code);
            assert_eq!(event.kind.as_str(), "gd_send_sms_failure");
            assert_eq!(dead_reason.is_some(), *dead, "{code}");
            // Free text from a provider never carries a number into the event or the dead letter.
            assert!(!error.message.contains("4155550123"));
            assert!(!dead_reason.unwrap_or_default().contains("4155550123"));
        }
        assert_eq!(
            after_delivery(&job(), 1, &answered(Answer::failed(ErrorCode::Throttled, "x")), &en()).event_scope(),
            None
        );
    }

    #[test]
    fn a_retry_is_not_an_outcome_and_its_attempt_never_wraps() {
        let retry = |attempt| {
            after_delivery(
                &job(),
                attempt,
                &answered(Answer::Retry {
                    after: Duration::from_secs(5),
                    message: "503".into(),
                }),
                &en(),
            )
        };
        assert!(
            matches!(retry(1), Disposition::Retry { next_attempt: 2, after, .. } if after == Duration::from_secs(5))
        );
        assert!(matches!(
            retry(u32::MAX),
            Disposition::Retry {
                next_attempt: u32::MAX,
                ..
            }
        ));
    }

    #[test]
    fn an_invalid_message_is_rejected_with_its_reason() {
        let invalid = Job::from_json(br#"{"id":"j1","channel":"fax"}"#).unwrap_err();
        let Disposition::Rejected { event, reason } = rejected(&invalid) else {
            panic!("rejected")
        };
        assert_eq!(event.error.unwrap().code, ErrorCode::InvalidJob);
        assert!(reason.starts_with("invalid_job: "), "{reason}");
    }

    impl Disposition {
        fn event_scope(&self) -> Option<crate::events::Scope> {
            match self {
                Disposition::Final { event, .. } => event.scope,
                _ => None,
            }
        }
    }
}
