//! Which provider chain a job goes through: the chain of the most specific `[routing.<channel>]` key naming
//! its number — a prefix longer than the calling code (`"1876"`), then a region (`"JM"`), then a calling code
//! (`"1"`) (docs/providers/README.md) — else the channel's `[channels]` chain.

use std::sync::Arc;

use crate::destinations::DestinationMap;
use crate::job::{Job, PerChannel, Recipient};
use crate::providers::Provider;

pub type Chain = Vec<Arc<dyn Provider>>;

#[derive(Default)]
pub struct Routes {
    default: PerChannel<Chain>,
    /// Destination → chain, per channel (email has none: an address has no country).
    by_destination: PerChannel<DestinationMap<Chain>>,
}

impl Routes {
    pub fn new(default: PerChannel<Chain>, by_destination: PerChannel<DestinationMap<Chain>>) -> Routes {
        Routes {
            default,
            by_destination,
        }
    }

    /// The chain for `job`: its destination's, else its channel's.
    pub fn chain(&self, job: &Job) -> &[Arc<dyn Provider>] {
        let routed = match &job.to {
            Recipient::Phone(number) => self.by_destination.get(job.channel).get(number),
            Recipient::Email(_) => None,
        };
        routed.unwrap_or_else(|| self.default.get(job.channel))
    }
}

impl From<PerChannel<Chain>> for Routes {
    /// Channel chains only, no routing by destination.
    fn from(default: PerChannel<Chain>) -> Routes {
        Routes {
            default,
            by_destination: PerChannel::default(),
        }
    }
}
