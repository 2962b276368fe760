//! A provider that answers from a script, for tests of what herald decides (like lettre's stub
//! transport): no network, and it remembers which jobs it was given.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::job::Job;
use crate::providers::{Provider, ProviderError, ProviderKind, Receipt, Validity};
use crate::sync::lock;
use crate::templates::Rendered;

/// Answers each call with the next scripted result, then with the last one again.
pub struct StubProvider {
    name: ProviderKind,
    script: Mutex<VecDeque<Result<Receipt, ProviderError>>>,
    calls: Mutex<Vec<String>>,
}

impl StubProvider {
    pub fn new(name: ProviderKind, script: Vec<Result<Receipt, ProviderError>>) -> StubProvider {
        StubProvider {
            name,
            script: Mutex::new(script.into()),
            calls: Mutex::default(),
        }
    }

    /// The ids of the jobs sent so far, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl Provider for StubProvider {
    fn name(&self) -> ProviderKind {
        self.name
    }

    async fn send(&self, job: &Job, _message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        lock(&self.calls).push(job.id.clone());
        let mut script = lock(&self.script);
        match script.len() {
            0 => Ok(Receipt::default()),
            1 => script[0].clone(),
            _ => script.pop_front().unwrap_or_else(|| Ok(Receipt::default())),
        }
    }
}
