//! A copy of a workflow job (docs/workflows.md): the original, a replay, a redelivery or its check, all
//! decided alike by [`workflow::next`] from herald's records, then planned like any job's copy with the
//! workflow's record and its check added to the step's transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Consumer;
use super::claims::Claim;
use super::delivery::Inbound;
use super::plan::{self, Plan, Step, WorkflowCount};
use super::uncommitted::{GaugeGuard, Uncommitted};
use crate::clock;
use crate::config::workflows::Workflow;
use crate::decision::{self, Disposition, Next};
use crate::dispatch::Answer;
use crate::job::Job;
use crate::reply::ReplyTo;
use crate::store::{Entry, Record, WorkflowEntry};
use crate::workflow::{self, LastStep, Move, Seen, WORKFLOW_EVENT, WorkflowEvent};

/// The check token a copy carries, if any: compared with herald's record, never trusted on its own.
fn carried_check(inbound: &Inbound) -> Option<&str> {
    match inbound
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(crate::broker::CHECK_HEADER)?
    {
        lapin::types::AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    }
}

/// What a recorded `gd_send_workflow` says of itself, to count it when it is republished.
#[derive(serde::Deserialize)]
struct RecordedEnd {
    workflow: String,
    result: workflow::WorkflowResult,
}

impl Consumer {
    /// `job` is step 1 of `flow` ([`workflow::resolve`]); its id is claimed (`claim`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn handle_workflow(
        &self,
        inbound: &Inbound,
        job: Job,
        flow: &Workflow,
        reply_to: Option<ReplyTo>,
        claim: Claim,
        gauge: GaugeGuard,
        shutdown: &CancellationToken,
    ) -> Option<Uncommitted> {
        let id = job.id.clone();
        let name = job.workflow.as_ref().map(|w| w.name.clone()).unwrap_or_default();
        let get = |key: String| {
            let store = self.store.clone();
            async move { store.get(&key).await }
        };
        let state = tokio::select! {
            state = self.held_for_store(&id, || get(id.clone())) => state,
            _ = shutdown.cancelled() => return None,
        };
        let (last, chain) = match state {
            Some(Entry::Outcome(record)) => {
                let plan = self.ended(inbound, &id, record);
                return Some(Uncommitted::start(plan, &self.store, Some(claim), gauge));
            }
            Some(Entry::Workflow(w)) => {
                let chain = match &w {
                    WorkflowEntry::Step { check, .. } => check.clone(),
                    _ => String::new(),
                };
                (LastStep::of(&w), chain)
            }
            Some(Entry::Retrying { .. }) | None => (None, String::new()),
        };
        let (receipt, verified) = match last {
            None => (None, false),
            Some(last) => {
                let receipt_key = workflow::receipt_key(&id, last.step);
                let verified_key = workflow::verified_key(&id);
                let (receipt, verified) = tokio::select! {
                    both = async {
                        let receipt = self.held_for_store(&id, || get(receipt_key.clone())).await;
                        let verified = self.held_for_store(&id, || get(verified_key.clone())).await;
                        (receipt, verified)
                    } => both,
                    _ = shutdown.cancelled() => return None,
                };
                let receipt = match receipt {
                    Some(Entry::Workflow(WorkflowEntry::Receipt { delivered })) => Some(delivered),
                    _ => None,
                };
                (
                    receipt,
                    matches!(verified, Some(Entry::Workflow(WorkflowEntry::Verified))),
                )
            }
        };
        let seen = Seen {
            last,
            receipt,
            verified,
            now_ms: clock::unix_millis(),
            expires_at_ms: job.expires_at.map(|at| at.timestamp_millis().max(0) as u64),
        };
        let step = match workflow::next(flow, seen) {
            Move::NotYet => {
                // The step's own check chain comes back again after a hop; any other copy (a replay, a
                // forged check, a check of an older chain) is only acked.
                let hop = last
                    .and_then(|l| flow.step(l.step))
                    .and_then(|s| s.wait())
                    .map(workflow::hop);
                let plan = match hop {
                    Some(hop) if !chain.is_empty() && carried_check(inbound) == Some(chain.as_str()) => Plan {
                        id: None,
                        steps: vec![
                            Step::Publish(plan::check_publish(
                                self.queues(),
                                &inbound.properties,
                                &inbound.body,
                                hop,
                                &chain,
                            )),
                            Step::Ack(inbound.delivery_tag),
                        ],
                    },
                    _ => {
                        tracing::info!(job_id = %id, workflow = %name, "workflow copy before its step is due acknowledged");
                        Plan::acknowledge(inbound.delivery_tag)
                    }
                };
                return Some(Uncommitted::start(plan, &self.store, Some(claim), gauge));
            }
            Move::End(ending) => {
                let event = WorkflowEvent::new(&job, &name, ending);
                let plan = self.end_plan(inbound, &id, &name, ending.result.as_str(), event.to_json());
                return Some(Uncommitted::start(plan, &self.store, Some(claim), gauge));
            }
            Move::Send { step } => step,
        };
        let job = workflow::at_step(job, flow, step);
        let key = workflow::step_key(&id, step);
        let prior = tokio::select! {
            prior = self.held_for_store(&id, || get(key.clone())) => prior,
            _ = shutdown.cancelled() => return None,
        };
        let disposition = match decision::before_delivery(
            &job,
            prior,
            inbound.redelivery,
            self.poison_limit(),
            &self.default_locale,
        ) {
            Next::Settled(disposition) => *disposition,
            Next::Deliver { attempt } => {
                let sending = self.receipts.as_ref().and_then(|r| r.sending(&job.id));
                let answered = self.dispatcher.deliver(&job, attempt).await;
                if let (Some(receipts), Answer::Sent { provider, receipt }) = (&self.receipts, &answered.answer) {
                    receipts.sent(&job, *provider, receipt);
                }
                drop(sending);
                decision::after_delivery(&job, attempt, &answered, &self.default_locale)
            }
        };
        // A step that fails for good is not the job's end while a step follows: it is not dead-lettered.
        let disposition = match disposition {
            Disposition::Final {
                event,
                dead_reason: Some(_),
            } if step < flow.len() => Disposition::Final {
                event,
                dead_reason: None,
            },
            disposition => disposition,
        };
        // Only step 1 answers the job's reply_to (docs/workflows.md).
        let reply_to = reply_to.filter(|_| step == 1);
        let outcome = match &disposition {
            Disposition::Final { event, .. } => Some(event.error.as_ref().map(|e| e.code)),
            Disposition::Republish { recorded, .. } => Some(recorded.error.as_ref().map(|e| e.code)),
            Disposition::Duplicate { .. } => {
                // The step's outcome is out while the workflow's record is older: nothing to add.
                tracing::info!(job_id = %id, step, "workflow step already reached its outcome; acknowledged");
                return Some(Uncommitted::start(
                    Plan::acknowledge(inbound.delivery_tag),
                    &self.store,
                    Some(claim),
                    gauge,
                ));
            }
            Disposition::Retry { .. } | Disposition::Rejected { .. } => None,
        };
        let mut plan = plan::of_ids(
            disposition,
            inbound,
            Some(&key),
            Some(&id),
            reply_to.as_ref(),
            self.queues(),
        );
        if let Some(error) = outcome {
            let failed = error.is_some();
            let sent = last.map_or(0, |l| l.sent) + u32::from(!failed);
            let record = LastStep {
                step,
                at_ms: clock::unix_millis(),
                failed,
                sent,
            };
            // At once after a failed step or the last one; else after the first hop of the step's wait.
            let after = match flow.step(step).and_then(|s| s.wait()) {
                Some(wait) if !failed => workflow::hop(wait),
                _ => Duration::ZERO,
            };
            let chain = ulid::Ulid::generate().to_string();
            plan.insert_before_ack(Step::RecordWorkflow(
                id.clone(),
                Entry::Workflow(record.entry(chain.clone())),
            ));
            plan.insert_before_ack(Step::Publish(plan::check_publish(
                self.queues(),
                &inbound.properties,
                &inbound.body,
                after,
                &chain,
            )));
            plan.steps.push(Step::CountWorkflow(WorkflowCount::Step {
                workflow: name,
                step,
                channel: job.channel,
                outcome: error.map_or("sent", |e| e.as_str()),
            }));
        }
        Some(Uncommitted::start(plan, &self.store, Some(claim), gauge))
    }

    /// The workflow ended before: a duplicate, or the redelivery of an end whose commit never came.
    fn ended(&self, inbound: &Inbound, id: &str, record: Record) -> Plan {
        if record.committed || !inbound.redelivery.redelivered {
            return Plan::acknowledge(inbound.delivery_tag);
        }
        let Ok(end) = serde_json::from_str::<RecordedEnd>(&record.event) else {
            tracing::warn!(job_id = %id, "unreadable workflow record; acknowledged");
            return Plan::acknowledge(inbound.delivery_tag);
        };
        let mut plan = self.end_plan(
            inbound,
            id,
            &end.workflow,
            end.result.as_str(),
            record.event.into_bytes(),
        );
        // Not written again: the record is what is republished.
        plan.steps.retain(|s| !matches!(s, Step::Record(_)));
        plan
    }

    /// The end: its record, its event, the ack, then its line, counts and mark.
    fn end_plan(&self, inbound: &Inbound, id: &str, name: &str, result: &'static str, json: Vec<u8>) -> Plan {
        let json = Arc::new(json);
        let record = Record {
            event: String::from_utf8_lossy(&json).into_owned(),
            dead_reason: None,
            committed: false,
        };
        Plan {
            id: Some(id.to_owned()),
            steps: vec![
                Step::Record(Entry::Outcome(record)),
                Step::Publish(plan::event_publish(self.queues(), WORKFLOW_EVENT, Some(id), &json)),
                Step::Ack(inbound.delivery_tag),
                Step::CountWorkflow(WorkflowCount::End {
                    workflow: name.to_owned(),
                    result,
                    json,
                }),
                Step::MarkCommitted,
            ],
        }
    }
}
