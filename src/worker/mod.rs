//! Workers: claim jobs from the store, hold and renew their leases, run the
//! pipeline, and give work back cleanly on shutdown.

pub mod events;
mod heartbeat;
pub mod janitor;
mod pool;
mod runner;
pub mod workdir;

pub use pool::{worker_name, WorkerPool, WorkerPoolHandle};
pub use runner::{run_claimed, RunEnv};
