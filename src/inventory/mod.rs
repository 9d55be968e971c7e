//! Inventory systems: has the license-tracking back end seen this VM yet?
//! Flexera One is the production system; stages only see the trait.

mod flexera_one;

use async_trait::async_trait;

pub use flexera_one::{FlexeraOne, FlexeraOneConfig};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{system}: cannot get an access token: {reason}")]
    Token { system: String, reason: String },
    #[error("{system}: {status} from {url}: {body}")]
    Status {
        system: String,
        status: u16,
        url: String,
        body: String,
    },
    #[error("{system}: cannot reach {url}: {reason}")]
    Connect {
        system: String,
        url: String,
        reason: String,
    },
    #[error("{system}: unexpected answer from {url}: {reason}")]
    Shape {
        system: String,
        url: String,
        reason: String,
    },
}

impl InventoryError {
    /// Network trouble and server errors are worth another try later.
    pub fn is_retryable(&self) -> bool {
        match self {
            InventoryError::Status { status, .. } => *status >= 500 || *status == 429,
            InventoryError::Connect { .. } => true,
            _ => false,
        }
    }
}

/// One inventory row that matched.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InventoryHit {
    pub computer_name: String,
    pub row: serde_json::Value,
}

#[async_trait]
pub trait InventoryClient: Send + Sync {
    fn name(&self) -> String;
    /// The rows reporting `hostname`, empty when it is not in inventory yet.
    async fn find_computer(&self, hostname: &str) -> Result<Vec<InventoryHit>, InventoryError>;
}
