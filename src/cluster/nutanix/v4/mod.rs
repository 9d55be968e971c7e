//! Prism Central v4 (the APIs Nutanix now recommends; v3 is legacy): the
//! HTTP client with ETag/If-Match and idempotency keys, task polling, and
//! the cluster provider on clustermgmt, networking, vmm and prism.

mod client;
mod images;
mod infra;
mod provider;
mod tasks;
mod vms;

pub use client::{app_message, error_message, new_request_id, odata_str, Read, V4Client};
pub use provider::V4Provider;
pub use tasks::{entity_of, Task, TaskStatus};

use reqwest::{Method, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum V4Error {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Http {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    /// A 404 without a v4 body: this Prism Central does not serve the API.
    #[error("Prism Central does not serve {path} (the v4 APIs are GA from pc.2024.3): set api_version = \"v3\" for this Prism Central")]
    NotServed { path: String },
    #[error("{method} {path}: {reason}")]
    Transport {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Certificate(String),
    #[error("task {ext_id} ({operation}) {status}: {detail}")]
    TaskFailed {
        ext_id: String,
        operation: String,
        status: String,
        detail: String,
    },
    #[error("task {ext_id} still {status} after {secs} s")]
    TaskTimeout {
        ext_id: String,
        status: String,
        secs: u64,
    },
    #[error("{0}")]
    Protocol(String),
    /// A cluster, subnet or category named in the configuration is not there
    /// (or not once).
    #[error("{0}")]
    Missing(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl V4Error {
    /// 5xx, 429, dropped connections and slow tasks may pass later.
    pub fn is_retryable(&self) -> bool {
        match self {
            V4Error::Http { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            V4Error::Transport { .. } | V4Error::TaskTimeout { .. } => true,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, V4Error::Http { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}
