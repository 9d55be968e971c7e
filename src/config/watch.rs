//! `[watch]`: watched image sources (checked on a schedule, scanned when they change).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Whether this process may run the watch scheduler. Only one replica
    /// runs it at a time (a lease in the database); the others stand by.
    pub scheduler: bool,
    /// The shortest check interval a watch may ask for.
    pub min_interval_secs: u64,
    /// The interval of a watch that names none.
    pub default_interval_secs: u64,
    /// How often the scheduler looks for due watches.
    pub poll_ms: u64,
    /// How long the scheduler's lease holds without renewal.
    pub lease_secs: u64,
    /// The largest listing, pointer or SUMS file read (bytes).
    pub max_document_bytes: usize,
    /// Watches one user may own.
    pub max_per_user: i64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            scheduler: true,
            min_interval_secs: 300,
            default_interval_secs: 3600,
            poll_ms: 5000,
            lease_secs: 30,
            max_document_bytes: 4 * 1024 * 1024,
            max_per_user: 50,
        }
    }
}
