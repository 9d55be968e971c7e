//! Managing accounts and API tokens, shared by the web layer and the CLI
//! (`vmscan user …`, `vmscan token create`), so both apply the same rules.

use crate::domain::{now_millis, Role};
use crate::store::auth::{ApiToken, NewToken, NewUser, User, UserChange};
use crate::store::{DynStore, StoreError};

use super::{check_username, password, secret};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn check_password(pw: &str) -> Result<(), AccountError> {
    if pw.chars().count() < 12 {
        return Err(AccountError::Invalid(
            "password: at least 12 characters".into(),
        ));
    }
    if pw.len() > 1024 {
        return Err(AccountError::Invalid("password: at most 1024 bytes".into()));
    }
    Ok(())
}

async fn hash(pw: String) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| AccountError::Invalid(format!("hashing panicked: {e}")))?
        .map_err(|e| AccountError::Invalid(e.to_string()))
}

/// A new local user; `password` None makes a token-only account.
pub async fn add_local_user(
    store: &DynStore,
    name: &str,
    role: Role,
    password: Option<&str>,
    email: Option<String>,
    display_name: Option<String>,
) -> Result<User, AccountError> {
    check_username(name).map_err(AccountError::Invalid)?;
    if let Some(e) = &email {
        if !e.contains('@') || e.chars().any(char::is_whitespace) {
            return Err(AccountError::Invalid(format!(
                "email: {e:?} is not an email address"
            )));
        }
    }
    let password_hash = match password {
        Some(pw) => {
            check_password(pw)?;
            Some(hash(pw.to_string()).await?)
        }
        None => None,
    };
    store
        .insert_user(&NewUser {
            name: name.to_string(),
            display_name,
            email,
            role,
            source: "local".into(),
            password_hash,
            groups: Vec::new(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => AccountError::Conflict(m),
            other => other.into(),
        })
}

/// On first start with no users: `admin` with a random password, returned
/// so the daemon prints it once. `None` when there were users already.
pub async fn create_first_admin(store: &DynStore) -> Result<Option<String>, AccountError> {
    let pw = password::generate();
    let inserted = store
        .insert_first_user(&NewUser {
            name: "admin".into(),
            display_name: Some("Administrator".into()),
            email: None,
            role: Role::Admin,
            source: "local".into(),
            password_hash: Some(hash(pw.clone()).await?),
            groups: Vec::new(),
        })
        .await?;
    Ok(inserted.then_some(pw))
}

/// Sets a local user's password and ends their sessions.
pub async fn set_password(store: &DynStore, name: &str, pw: &str) -> Result<User, AccountError> {
    check_password(pw)?;
    let user = store
        .get_user(name)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("no user named {name:?}")))?;
    if user.source != "local" {
        return Err(AccountError::Invalid(format!(
            "{name} comes from the directory; change the password there"
        )));
    }
    let change = UserChange {
        password_hash: Some(hash(pw.to_string()).await?),
        ..Default::default()
    };
    let user = store
        .update_user(name, &change)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("no user named {name:?}")))?;
    store.delete_user_sessions(name).await?;
    Ok(user)
}

/// Changes a user's role or disabled flag; ends their sessions. Refuses to
/// leave vmscan without an enabled admin.
pub async fn change_user(
    store: &DynStore,
    name: &str,
    change: &UserChange,
) -> Result<User, AccountError> {
    let old = store
        .get_user(name)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("no user named {name:?}")))?;
    let loses_admin = old.role == Role::Admin
        && !old.disabled
        && (change.role.is_some_and(|r| r < Role::Admin) || change.disabled == Some(true));
    if loses_admin {
        let admins = store
            .list_users()
            .await?
            .into_iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count();
        if admins <= 1 {
            return Err(AccountError::Conflict(format!(
                "{name} is the last enabled admin; make another admin first"
            )));
        }
    }
    let user = store
        .update_user(name, change)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("no user named {name:?}")))?;
    if change.role.is_some() || change.disabled.is_some() || change.password_hash.is_some() {
        store.delete_user_sessions(name).await?;
    }
    Ok(user)
}

/// What a new token is for.
pub struct TokenRequest<'a> {
    pub user: &'a str,
    pub role: Option<Role>,
    pub name: &'a str,
    pub expires_days: Option<u32>,
    pub created_by: &'a str,
    /// The highest role the creator may hand out (their own role in force).
    pub ceiling: Role,
    /// `auth.max_token_days` (0: no limit).
    pub max_days: u32,
}

/// Issues an API token; the secret is returned once and only its digest is kept.
pub async fn issue_token(
    store: &DynStore,
    req: &TokenRequest<'_>,
) -> Result<(String, ApiToken), AccountError> {
    let user = store
        .get_user(req.user)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("no user named {:?}", req.user)))?;
    if user.disabled {
        return Err(AccountError::Invalid(format!("{} is disabled", user.name)));
    }
    let role = req.role.unwrap_or(user.role.min(req.ceiling));
    if role > user.role {
        return Err(AccountError::Invalid(format!(
            "role: {} has the {} role; a token cannot have more ({role})",
            user.name, user.role
        )));
    }
    if role > req.ceiling {
        return Err(AccountError::Invalid(format!(
            "role: you may hand out at most {} ({role} asked)",
            req.ceiling
        )));
    }
    let label = req.name.trim();
    if label.chars().count() > 100 || label.chars().any(char::is_control) {
        return Err(AccountError::Invalid(
            "name: at most 100 characters, no control characters".into(),
        ));
    }
    let days = match (req.expires_days, req.max_days) {
        (Some(0), _) => return Err(AccountError::Invalid("expires_days: at least 1".into())),
        (Some(d), m) if m > 0 && d > m => {
            return Err(AccountError::Invalid(format!(
                "expires_days: at most {m} (auth.max_token_days)"
            )))
        }
        (None, m) if m > 0 => Some(m),
        (d, _) => d,
    };
    let token = secret::new_token();
    let t = store
        .create_token(&NewToken {
            hash: secret::digest(&token),
            user: user.name.clone(),
            name: if label.is_empty() {
                "token".into()
            } else {
                label.to_string()
            },
            role,
            created_by: Some(req.created_by.to_string()),
            expires_at: days.map(|d| now_millis() + d as i64 * 86_400_000),
        })
        .await?;
    Ok((token, t))
}
