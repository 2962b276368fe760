//! Which provider chain a job goes through: the chain of its destination's country calling code when
//! `[routing.<channel>]` has one (contract §6), else the channel's `[channels]` chain.

use std::collections::HashMap;
use std::sync::Arc;

use crate::job::{Job, PerChannel, Recipient};
use crate::providers::Provider;

pub type Chain = Vec<Arc<dyn Provider>>;

#[derive(Default)]
pub struct Routes {
    default: PerChannel<Chain>,
    /// Calling code → chain, per channel (email has none: an address has no country).
    by_country: PerChannel<HashMap<u16, Chain>>,
}

impl Routes {
    pub fn new(default: PerChannel<Chain>, by_country: PerChannel<HashMap<u16, Chain>>) -> Routes {
        Routes { default, by_country }
    }

    /// The chain for `job`: its country's, else its channel's.
    pub fn chain(&self, job: &Job) -> &[Arc<dyn Provider>] {
        let country = match &job.to {
            Recipient::Phone(number) => number.country_code(),
            Recipient::Email(_) => None,
        };
        country
            .and_then(|code| self.by_country.get(job.channel).get(&code))
            .unwrap_or_else(|| self.default.get(job.channel))
    }
}

impl From<PerChannel<Chain>> for Routes {
    /// Channel chains only, no routing by country.
    fn from(default: PerChannel<Chain>) -> Routes {
        Routes {
            default,
            by_country: PerChannel::default(),
        }
    }
}
