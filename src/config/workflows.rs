//! `[workflows.<name>]` (docs/workflows.md): the channels a job with `"workflow": "<name>"` tries in turn,
//! each after the one before went undelivered within its `wait`. Typed by serde (a channel is the closed
//! [`Channel`], a wait a [`HumanDuration`]); what types alone cannot say is checked by [`check`], naming
//! the key (`workflows.otp.steps[1].wait`, 0-based like the TOML array).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::HumanDuration;
use crate::job::{Channel, MAX_WORKFLOW_NAME as MAX_NAME, is_workflow_name as is_name};

/// The longest workflow name: it is an event field and a metric label.
/// Steps a workflow may have at most (one per channel attempt; the step number is a metric label).
pub const MAX_STEPS: usize = 8;
/// The longest wait of a step: a code is worth little after it, and the broker holds the wait.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The `[workflows]` section: each workflow by its name.
pub type Workflows = BTreeMap<String, Workflow>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub steps: Vec<Step>,
    #[serde(default)]
    pub until: Until,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub channel: Channel,
    /// How long herald waits for this step to reach the person before the next step; none on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<HumanDuration>,
}

/// What ends a workflow before its last step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// A final `delivered` receipt for the step's message.
    #[default]
    Delivered,
    /// `verified: true` feedback for the job.
    Verified,
}

impl Until {
    pub fn as_str(self) -> &'static str {
        match self {
            Until::Delivered => "delivered",
            Until::Verified => "verified",
        }
    }
}

impl Workflow {
    /// Step `n` (1-based, as events count them).
    pub fn step(&self, n: u32) -> Option<&Step> {
        let i = usize::try_from(n).ok()?.checked_sub(1)?;
        self.steps.get(i)
    }

    /// The number of steps, as events count them.
    pub fn len(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl Step {
    /// The wait after this step (`None` on the last step).
    pub fn wait(&self) -> Option<Duration> {
        self.wait.as_ref().map(|w| w.0)
    }
}

/// What serde cannot check: names, at least one step, a wait on every step but the last (a wait on the
/// last would wait for nothing: refused rather than ignored, so a step left out by mistake is seen).
pub(super) fn check(workflows: &Workflows) -> Result<(), ConfigError> {
    for (name, workflow) in workflows {
        if !is_name(name) {
            return Err(ConfigError::key(
                "workflows",
                format!("a workflow name must be 1 to {MAX_NAME} letters, digits, `_` or `-`"),
            ));
        }
        let key = format!("workflows.{name}.steps");
        if workflow.steps.is_empty() {
            return Err(ConfigError::key(&key, "needs at least one step"));
        }
        if workflow.steps.len() > MAX_STEPS {
            return Err(ConfigError::key(&key, format!("has more than {MAX_STEPS} steps")));
        }
        let last = workflow.steps.len() - 1;
        for (i, step) in workflow.steps.iter().enumerate() {
            let key = format!("{key}[{i}].wait");
            match (i == last, step.wait()) {
                (true, Some(_)) => {
                    return Err(ConfigError::key(
                        &key,
                        "the last step has no wait (nothing comes after it); remove it",
                    ));
                }
                (false, None) => {
                    return Err(ConfigError::key(
                        &key,
                        "required on every step but the last: how long the step has to reach the person",
                    ));
                }
                (false, Some(wait)) if wait < Duration::from_secs(1) || wait > MAX_WAIT => {
                    return Err(ConfigError::key(&key, "must be between 1s and 1h"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
/// How often a wait is looked at: a step's check comes back every [`hop`] of its wait, so that an undelivered
/// receipt moves the workflow on within this long rather than at the end of the wait.
pub const POLL: Duration = Duration::from_secs(5);

/// The check interval of a `wait`: the wait cut into equal hops of at most [`POLL`] (a 7 s wait: two of
/// 3.5 s), so the last hop ends on the wait.
pub fn hop(wait: Duration) -> Duration {
    let hops = wait.as_millis().div_ceil(POLL.as_millis()).max(1);
    Duration::from_millis((wait.as_millis() / hops) as u64)
}
