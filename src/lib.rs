//! herald: delivers one-time codes that an MFA server publishes to RabbitMQ, by SMS, voice, email or
//! webhook, and reports one outcome event per job.
//!
//! The data path, top-down: [`consumer`] takes a message → [`job`] parses it → [`store`] says what herald
//! recorded of its id → [`decision`] settles it or asks for a delivery, which [`dispatch`] makes (past
//! [`throttle`] and the [`fraud`] guard, rendered with [`templates`], sent by a [`providers`] chain) →
//! [`decision`] turns its answer into a disposition → the consumer commits its transaction → [`events`]
//! reports the outcome, counted in [`metrics`], and [`reply`] answers its `reply_to`. Beside it, [`feedback`]
//! feeds verified codes to the guard.

pub mod app;
pub mod audit;
mod bench;
pub mod broker;
pub mod cli;
mod clock;
pub mod config;
pub mod consumer;
pub mod decision;
pub mod destinations;
pub mod dispatch;
pub mod events;
pub mod feedback;
pub mod fraud;
pub mod http;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod numbering;
mod privacy;
pub mod providers;
pub mod receipts;
pub mod reply;
pub mod retry;
pub mod routing;
pub mod sms;
pub mod store;
mod sync;
pub mod templates;
pub mod throttle;
pub mod workflow;
