//! Who is asking: login backends (local users, an LDAP/AD directory),
//! password hashing, and the random secrets behind sessions and API tokens.
//! The web layer turns a request into an [`Identity`]; this module never
//! sees HTTP.

pub mod accounts;
pub mod ldap;
pub mod local;
pub mod password;
pub mod secret;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::Serialize;

use crate::domain::Role;

pub use ldap::LdapBackend;
pub use local::LocalBackend;

/// A person as a login backend vouches for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    /// The login name, as vmscan records it (`requested_by`, audit).
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    /// Group DNs (directory) the account is in; empty for local users.
    pub groups: Vec<String>,
    /// `local` or `ldap`.
    pub source: &'static str,
}

/// Why a login was refused. The text of `BadCredentials` is all a client
/// sees for a wrong name, a wrong password or a disabled account alike; the
/// `reason` goes to the audit trail only.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    BadCredentials { reason: String },
    #[error("{username} is in no group that grants a vmscan role (groups: {groups})")]
    NoRole { username: String, groups: String },
    /// The directory did not answer: never a login, never "wrong password".
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    /// The directory answered something vmscan cannot use (a bad service
    /// account, a malformed entry).
    #[error("directory error: {0}")]
    Directory(String),
    #[error("user store: {0}")]
    Store(String),
}

impl LoginError {
    /// What the audit trail records.
    pub fn audit_reason(&self) -> String {
        match self {
            LoginError::BadCredentials { reason } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// Checks a user name and password against one source of accounts.
#[async_trait]
pub trait LoginBackend: Send + Sync {
    /// `local` or `ldap`.
    fn kind(&self) -> &'static str;
    async fn authenticate(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Account, LoginError>;
}

/// Login names: what a directory or `vmscan user add` may call a person.
/// Letters, digits and `. _ - @`, 1 to 64 characters.
pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err(format!(
            "user name {name:?} must be 1 to 64 characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "user name {name:?} contains {c:?}; use letters, digits and . _ - @"
        ));
    }
    Ok(())
}
