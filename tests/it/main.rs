//! herald's integration tests, one binary (`cargo test --test it`, or `cargo test --test it <module>` for
//! one area): a module per area, the helpers compiled once. `tests/broker_restart.rs` is a binary of its
//! own, as it stops the shared broker. README's "Tests" section says what each area needs.

mod helpers;

mod admin;
mod alerts;
mod alerts_live;
mod bad_input;
mod bookkeeping;
mod cli;
mod consumer;
mod crash;
mod delivery;
mod deploy;
mod feedback_hostile;
mod feedback_redis_outage;
mod fraud_guard;
mod guarantees;
mod guard_attacks;
mod guard_explain;
mod guard_replicas;
mod helpers_cleanup;
mod logging;
mod mfa_example;
mod provider_meta;
mod provider_sns_plivo;
mod provider_twilio;
mod provider_vonage_infobip;
mod providers;
mod public_http;
mod pumping;
mod receipts;
mod receipts_meta;
mod receipts_providers;
mod reply_to;
mod retries;
mod routing;
mod smtp;
mod sns_privacy;
mod store;
mod store_outage;
mod throttle;
mod two_channels;
mod webhook;
mod whatsapp;
mod workflows;
