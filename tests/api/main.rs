//! The foundation's integration tests: one binary, run against SQLite and
//! (under scripts/test.sh) PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod dashboard;
mod fetch;
mod http_api;
mod insights;
mod inventory;
mod limits;
mod reliability;
mod runner;
mod store_suite;
mod watches;
