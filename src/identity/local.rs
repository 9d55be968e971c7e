//! The embedded login backend: users in vmscan's own database with
//! Argon2id password hashes (`vmscan user add`, `vmscan user passwd`).

use std::sync::OnceLock;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::{password, Account, LoginBackend, LoginError};
use crate::store::DynStore;

pub struct LocalBackend {
    store: DynStore,
}

impl LocalBackend {
    pub fn new(store: DynStore) -> Self {
        LocalBackend { store }
    }
}

/// A hash to verify against when the user does not exist, so a wrong name
/// costs as long as a wrong password and names cannot be probed by timing.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| password::hash(&password::generate()).unwrap_or_default())
}

async fn verify(pw: String, phc: String) -> Result<bool, LoginError> {
    tokio::task::spawn_blocking(move || password::verify(&pw, &phc))
        .await
        .map_err(|e| LoginError::Store(format!("password check panicked: {e}")))?
        .map_err(|e| LoginError::Store(e.to_string()))
}

#[async_trait]
impl LoginBackend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn authenticate(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Account, LoginError> {
        let pw = password.expose_secret().to_string();
        let user = self
            .store
            .get_user(username)
            .await
            .map_err(|e| LoginError::Store(e.to_string()))?;
        let Some(user) = user.filter(|u| u.source == "local") else {
            let _ = verify(pw, decoy_hash().to_string()).await;
            return Err(LoginError::BadCredentials {
                reason: "no such local user".into(),
            });
        };
        let Some(phc) = user.password_hash.clone() else {
            let _ = verify(pw, decoy_hash().to_string()).await;
            return Err(LoginError::BadCredentials {
                reason: "the user has no password (token-only account)".into(),
            });
        };
        if pw.is_empty() || !verify(pw, phc).await? {
            return Err(LoginError::BadCredentials {
                reason: "wrong password".into(),
            });
        }
        if user.disabled {
            return Err(LoginError::BadCredentials {
                reason: "the account is disabled".into(),
            });
        }
        Ok(Account {
            username: user.name,
            display_name: user.display_name,
            email: user.email,
            role: user.role,
            groups: user.groups,
            source: "local",
        })
    }
}
