//! vmscan: proves VM template images are picked up by license tracking before
//! release. A job is stored durably, claimed by a worker and run through the
//! pipeline stages; the web layer shows it all.

pub mod app;
pub mod artifacts;
pub mod batches;
pub mod bounded_body;
pub mod cli;
mod cli_accounts;
mod cli_batch;
mod cli_watch;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod identity;
pub mod insights;
pub mod inventory;
pub mod manifest;
pub mod notify;
pub mod pipeline;
pub mod remote;
pub mod report;
pub mod store;
pub mod submit;
pub mod tls;
pub mod watch;
pub mod web;
pub mod worker;
