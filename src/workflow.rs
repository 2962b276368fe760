//! Workflows (docs/workflows.md): one code over several channels in turn, each step after the last went
//! undelivered within its wait. The wait is a delayed copy of the job in the broker ("the check"); every
//! copy of a workflow job (the original, a replay, a redelivery, a check) is decided the same way, from
//! herald's own records only ([`next`]): what the message says beyond the job id decides nothing, so a
//! forged or early check does nothing.
//!
//! The store keys (a job id has no spaces, so none of these is ever a publisher's job id):
//! - `<id>`: the workflow's [`WorkflowEntry::Step`] (the last step that reached its outcome), and once it
//!   ended, its `gd_send_workflow` event as an outcome record (a replay is then a duplicate);
//! - `<id> #<n>`: step `n`'s outcome record, like a job's (docs/guarantees.md applies per step);
//! - `<id> #<n> receipt`: step `n`'s final delivery receipt; `<id> verified`: `verified: true` feedback.

use serde::Serialize;

pub use crate::config::workflows::{POLL, hop};
use crate::config::workflows::{Until, Workflow, Workflows};
use crate::job::{Channel, InvalidJob, Job, JobError, Recipient, WorkflowError};
use crate::receipts::{FinalReceipt, ReceiptSink};
use crate::store::{Entry, Store, WorkflowEntry};

/// The event type of a workflow's end, also its routing key on `herald.events`.
pub const WORKFLOW_EVENT: &str = "gd_send_workflow";

pub fn step_key(job_id: &str, step: u32) -> String {
    format!("{job_id} #{step}")
}

pub fn receipt_key(job_id: &str, step: u32) -> String {
    format!("{job_id} #{step} receipt")
}

pub fn verified_key(job_id: &str) -> String {
    format!("{job_id} verified")
}

/// The workflow `job` names, checked against the job: every step's channel fits `to`. On success the job
/// is its step 1 (its channel the first step's).
pub fn resolve(mut job: Job, workflows: &Workflows) -> Result<(Job, &Workflow), Box<InvalidJob>> {
    let Some(asked) = &job.workflow else {
        return Err(Box::new(InvalidJob::refused(
            job,
            JobError::Workflow(WorkflowError::Unknown),
        )));
    };
    let found = workflows.get(&asked.name);
    let problem = match found {
        None => Some(WorkflowError::Unknown),
        Some(w)
            if asked
                .named_channel
                .is_some_and(|c| Some(c) != w.step(1).map(|s| s.channel)) =>
        {
            Some(WorkflowError::NotFirstStep)
        }
        Some(w) => (1..=w.len()).find_map(|n| {
            let channel = w.step(n)?.channel;
            (!fits(channel, &job.to)).then_some(WorkflowError::DoesNotFit { step: n, channel })
        }),
    };
    match (problem, found) {
        (None, Some(workflow)) => {
            job = at_step(job, workflow, 1);
            Ok((job, workflow))
        }
        (problem, found) => {
            // The failure event names the workflow's first channel, not the kind of `to` the job was read as.
            let first = found.and_then(|w| w.step(1)).map(|s| s.channel);
            let mut invalid = InvalidJob::refused(job, JobError::Workflow(problem.unwrap_or(WorkflowError::Unknown)));
            invalid.channel = first.or(invalid.channel);
            Err(Box::new(invalid))
        }
    }
}

/// `job` as step `step` of `workflow`: that step's channel.
pub fn at_step(mut job: Job, workflow: &Workflow, step: u32) -> Job {
    if let Some(s) = workflow.step(step) {
        job.channel = s.channel;
    }
    if let Some(w) = &mut job.workflow {
        w.step = step;
    }
    job
}

fn fits(channel: Channel, to: &Recipient) -> bool {
    match channel {
        Channel::Sms | Channel::Voice | Channel::Whatsapp => matches!(to, Recipient::Phone(_)),
        Channel::Email => matches!(to, Recipient::Email(_)),
    }
}

/// Where a workflow stands, from the store: its last step's outcome, that step's receipt, the feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The last step that reached its outcome (`None`: none yet, step 1 comes).
    pub last: Option<LastStep>,
    /// That step's final receipt: `Some(true)` delivered, `Some(false)` undelivered or failed.
    pub receipt: Option<bool>,
    /// `verified: true` feedback came for the job.
    pub verified: bool,
    pub now_ms: u64,
    /// The job's `expires_at`, in ms since the epoch.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastStep {
    pub step: u32,
    pub at_ms: u64,
    pub failed: bool,
    /// Steps sent so far (not failed).
    pub sent: u32,
}

impl LastStep {
    pub fn of(entry: &WorkflowEntry) -> Option<LastStep> {
        match *entry {
            WorkflowEntry::Step {
                step,
                at_ms,
                failed,
                sent,
                ..
            } => Some(LastStep {
                step,
                at_ms,
                failed,
                sent,
            }),
            WorkflowEntry::Receipt { .. } | WorkflowEntry::Verified => None,
        }
    }

    /// Its record, with the token of its check chain.
    pub fn entry(self, check: String) -> WorkflowEntry {
        WorkflowEntry::Step {
            step: self.step,
            at_ms: self.at_ms,
            failed: self.failed,
            sent: self.sent,
            check,
        }
    }
}

/// What a copy of a workflow job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Send step `step` (its own outcome record says whether it is a first attempt, a retry or done).
    Send {
        step: u32,
    },
    /// Too early for anything (a replay, a redelivery or a forged check during a wait): acked, nothing
    /// else. The real check is in the broker.
    NotYet,
    End(Ending),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub result: WorkflowResult,
    /// The step's channel that reached the person, else the last step's sent (or tried).
    pub channel: Channel,
    /// Steps sent.
    pub steps: u32,
}

/// `result` of `gd_send_workflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowResult {
    /// A step's message got a delivered receipt (`until = "delivered"`).
    Delivered,
    /// `verified: true` feedback came.
    Verified,
    /// The last step was sent; herald waits for nothing after it.
    Sent,
    /// The last step failed.
    Failed,
    /// A next step was due after the job's `expires_at`.
    Expired,
}

impl WorkflowResult {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowResult::Delivered => "delivered",
            WorkflowResult::Verified => "verified",
            WorkflowResult::Sent => "sent",
            WorkflowResult::Failed => "failed",
            WorkflowResult::Expired => "expired",
        }
    }
}

/// The decision, from herald's own records alone.
pub fn next(workflow: &Workflow, seen: Seen) -> Move {
    let Some(last) = seen.last else {
        return Move::Send { step: 1 };
    };
    let Some(step) = workflow.step(last.step) else {
        // A record of a step this workflow no longer has (its config shrank): it ends here.
        return Move::End(Ending {
            result: WorkflowResult::Sent,
            channel: workflow.steps.last().map_or(Channel::Sms, |s| s.channel),
            steps: last.sent,
        });
    };
    let end = |result| {
        Move::End(Ending {
            result,
            channel: step.channel,
            steps: last.sent,
        })
    };
    if seen.verified {
        return end(WorkflowResult::Verified);
    }
    if seen.receipt == Some(true) && workflow.until == Until::Delivered && !last.failed {
        return end(WorkflowResult::Delivered);
    }
    let waited = step
        .wait()
        .is_none_or(|wait| seen.now_ms >= last.at_ms.saturating_add(wait.as_millis() as u64));
    if !(last.failed || seen.receipt == Some(false) || waited) {
        return Move::NotYet;
    }
    if last.step >= workflow.len() {
        return end(if last.failed {
            WorkflowResult::Failed
        } else {
            WorkflowResult::Sent
        });
    }
    if seen.expires_at_ms.is_some_and(|at| seen.now_ms >= at) {
        return end(WorkflowResult::Expired);
    }
    Move::Send { step: last.step + 1 }
}

/// The `gd_send_workflow` event (docs/jobs-and-events.md): masked like every event.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowEvent {
    pub date: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub description: &'static str,
    pub job_id: String,
    pub user_id: String,
    pub workflow: String,
    pub result: WorkflowResult,
    pub steps: u32,
    pub channel: Channel,
}

impl WorkflowEvent {
    pub fn new(job: &Job, workflow: &str, ending: Ending) -> WorkflowEvent {
        WorkflowEvent {
            date: crate::clock::now_rfc3339(),
            kind: WORKFLOW_EVENT,
            description: match ending.result {
                WorkflowResult::Delivered => "Workflow ended: code delivered",
                WorkflowResult::Verified => "Workflow ended: code verified",
                WorkflowResult::Sent => "Workflow ended: last step sent",
                WorkflowResult::Failed => "Workflow ended: last step failed",
                WorkflowResult::Expired => "Workflow ended: code expired",
            },
            job_id: job.id.clone(),
            user_id: crate::events::public_user_id(&job.user_id),
            workflow: workflow.to_owned(),
            result: ending.result,
            steps: ending.steps,
            channel: ending.channel,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Final receipts of workflow steps, kept for their checks (`<id> #<n> receipt`). Written in a task of its
/// own: a receipt whose write fails is only a step that waits its whole wait.
pub struct ReceiptsToWorkflows(pub std::sync::Arc<Store>);

impl ReceiptSink for ReceiptsToWorkflows {
    fn final_receipt(&self, receipt: &FinalReceipt) {
        let Some(step) = receipt.step else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let entry = Entry::Workflow(WorkflowEntry::Receipt {
            delivered: receipt.status.is_delivered(),
        });
        let put = self.0.put(&receipt_key(&receipt.job_id, step), entry);
        let job_id = receipt.job_id.clone();
        runtime.spawn(async move {
            if let Err(e) = put.await {
                tracing::warn!(%job_id, step, error = %e, "workflow step's receipt not recorded; the step waits its wait");
            }
        });
    }
}

/// After `verified: true` feedback for `job_id`: remembered for its workflow's checks, if it is a
/// workflow's job (one read for any other job id, no write).
pub async fn verified(store: &Store, job_id: &str) -> Result<(), crate::store::StoreError> {
    if let Some(Entry::Workflow(_)) = store.get(job_id).await? {
        store
            .put(&verified_key(job_id), Entry::Workflow(WorkflowEntry::Verified))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::HumanDuration;
    use crate::config::workflows::Step;
    use std::time::Duration;

    fn otp(until: Until) -> Workflow {
        let step = |channel, wait: Option<u64>| Step {
            channel,
            wait: wait.map(|s| HumanDuration(Duration::from_secs(s))),
        };
        Workflow {
            steps: vec![
                step(Channel::Whatsapp, Some(30)),
                step(Channel::Sms, Some(45)),
                step(Channel::Voice, None),
            ],
            until,
        }
    }

    fn last(step: u32, failed: bool) -> Option<LastStep> {
        Some(LastStep {
            step,
            at_ms: 1_000_000,
            failed,
            sent: step - u32::from(failed),
        })
    }

    fn seen(last: Option<LastStep>, after_s: u64) -> Seen {
        Seen {
            last,
            receipt: None,
            verified: false,
            now_ms: 1_000_000 + after_s * 1000,
            expires_at_ms: None,
        }
    }

    fn word(m: Move) -> String {
        match m {
            Move::Send { step } => format!("send {step}"),
            Move::NotYet => "not yet".into(),
            Move::End(e) => format!("end {} {} {}", e.result.as_str(), e.channel.as_str(), e.steps),
        }
    }

    #[test]
    fn every_copy_is_decided_from_herald_s_records() {
        let delivered = |mut s: Seen| {
            s.receipt = Some(true);
            s
        };
        let undelivered = |mut s: Seen| {
            s.receipt = Some(false);
            s
        };
        let verified = |mut s: Seen| {
            s.verified = true;
            s
        };
        let expiring = |mut s: Seen| {
            s.expires_at_ms = Some(s.now_ms);
            s
        };
        let cases: Vec<(&str, Until, Seen, &str)> = vec![
            ("nothing yet: step 1", Until::Delivered, seen(None, 0), "send 1"),
            (
                "during the wait: a replay or a forged check",
                Until::Delivered,
                seen(last(1, false), 29),
                "not yet",
            ),
            (
                "the wait ran out undelivered",
                Until::Delivered,
                seen(last(1, false), 30),
                "send 2",
            ),
            (
                "delivered within the wait",
                Until::Delivered,
                delivered(seen(last(1, false), 30)),
                "end delivered whatsapp 1",
            ),
            (
                "delivered, but until verified",
                Until::Verified,
                delivered(seen(last(1, false), 30)),
                "send 2",
            ),
            (
                "delivered, until verified, early",
                Until::Verified,
                delivered(seen(last(1, false), 3)),
                "not yet",
            ),
            (
                "verified at any step",
                Until::Verified,
                verified(seen(last(2, false), 1)),
                "end verified sms 2",
            ),
            (
                "verified ends an until-delivered one too",
                Until::Delivered,
                verified(seen(last(1, false), 1)),
                "end verified whatsapp 1",
            ),
            (
                "a failed step moves on at once",
                Until::Delivered,
                seen(last(1, true), 0),
                "send 2",
            ),
            (
                "an undelivered receipt moves on at once",
                Until::Delivered,
                undelivered(seen(last(1, false), 1)),
                "send 2",
            ),
            (
                "the last step sent: nothing to wait for",
                Until::Delivered,
                seen(last(3, false), 0),
                "end sent voice 3",
            ),
            (
                "the last step failed",
                Until::Delivered,
                seen(last(3, true), 0),
                "end failed voice 2",
            ),
            (
                "the last step, delivered already",
                Until::Delivered,
                delivered(seen(last(3, false), 0)),
                "end delivered voice 3",
            ),
            (
                "no step after expires_at",
                Until::Delivered,
                expiring(seen(last(1, false), 30)),
                "end expired whatsapp 1",
            ),
            (
                "expiry does not cut a wait short",
                Until::Delivered,
                expiring(seen(last(1, false), 10)),
                "not yet",
            ),
            (
                "a step the config no longer has",
                Until::Delivered,
                seen(last(9, false), 0),
                "end sent voice 9",
            ),
        ];
        for (name, until, seen, expected) in cases {
            assert_eq!(word(next(&otp(until), seen)), expected, "{name}");
        }
    }

    fn job(body: &str) -> Job {
        Job::from_json(body.as_bytes()).unwrap()
    }

    #[test]
    fn a_wait_is_looked_at_in_equal_hops_of_at_most_the_poll() {
        let s = Duration::from_secs;
        assert_eq!(hop(s(1)), s(1));
        assert_eq!(hop(s(5)), s(5));
        assert_eq!(hop(Duration::from_millis(7000)), Duration::from_millis(3500));
        assert_eq!(hop(s(30)), s(5));
        assert_eq!(hop(s(45)), s(5));
        assert_eq!(hop(s(3600)), s(5));
    }

    #[test]
    fn a_workflow_job_fits_every_step_or_is_invalid() {
        let workflows: Workflows = [("otp".to_owned(), otp(Until::Delivered))].into();
        let phone = r#"{"id":"j1","workflow":"otp","to":"+14155550123","code":"482913","user_id":"u1"}"#;
        let (step1, _) = resolve(job(phone), &workflows).unwrap();
        assert_eq!(step1.channel, Channel::Whatsapp);
        assert_eq!(step1.workflow.as_ref().map(|w| w.step), Some(1));
        let first =
            r#"{"id":"j1","workflow":"otp","channel":"whatsapp","to":"+14155550123","code":"482913","user_id":"u1"}"#;
        assert!(resolve(job(first), &workflows).is_ok());
        let cases = [
            (
                r#"{"id":"j1","workflow":"nope","to":"+14155550123","code":"482913","user_id":"u1"}"#,
                "field `workflow` names no configured workflow",
            ),
            (
                r#"{"id":"j1","workflow":"otp","channel":"sms","to":"+14155550123","code":"482913","user_id":"u1"}"#,
                "field `channel` is not the first step's channel of the workflow",
            ),
            (
                r#"{"id":"j1","workflow":"otp","to":"a@example.com","code":"482913","user_id":"u1"}"#,
                "step 1 of the workflow is whatsapp, which field `to` does not fit",
            ),
        ];
        for (body, said) in cases {
            let invalid = resolve(job(body), &workflows).unwrap_err();
            assert_eq!(invalid.reason.to_string(), said);
            assert_eq!(invalid.id.as_deref(), Some("j1"));
            assert_eq!(
                invalid.channel,
                Some(if body.contains("nope") {
                    Channel::Sms
                } else {
                    Channel::Whatsapp
                })
            );
        }
        // Without `workflow`, `channel` is required as before; a bad name is refused at parse.
        let none = Job::from_json(br#"{"id":"j1","to":"+14155550123","code":"482913","user_id":"u1"}"#).unwrap_err();
        assert_eq!(none.reason.to_string(), "field `channel` is required");
        let bad = Job::from_json(br#"{"id":"j1","workflow":"a b","to":"+14155550123","code":"482913","user_id":"u1"}"#)
            .unwrap_err();
        assert_eq!(
            bad.reason.to_string(),
            "field `workflow` must be 1 to 64 letters, digits, `_` or `-`"
        );
    }
}
