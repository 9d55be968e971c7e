//! Storage of who may do what: users, sessions, API tokens and the audit
//! trail. Its SQL lives here. Sessions and tokens are looked up by the
//! SHA-256 of their secret (`identity::secret::digest`), never the secret.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

use super::{PgStore, SqliteStore, StoreError, StoreResult};
use crate::domain::{now_millis, Millis, Role};

/// A person (or service account) vmscan knows.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub name: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    /// `local` or `ldap`.
    pub source: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    pub has_password: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_login_at: Option<Millis>,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    pub source: String,
    pub password_hash: Option<String>,
    pub groups: Vec<String>,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
    pub email: Option<Option<String>>,
    pub display_name: Option<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id_hash: String,
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub address: Option<String>,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub user: String,
    pub name: String,
    pub role: Role,
    pub created_by: Option<String>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub last_used_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl ApiToken {
    pub fn is_live(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

#[derive(Clone, Debug)]
pub struct NewToken {
    pub hash: String,
    pub user: String,
    pub name: String,
    pub role: Role,
    pub created_by: Option<String>,
    pub expires_at: Option<Millis>,
}

/// What happened, for the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Login,
    Logout,
    Submit,
    Cancel,
    Retry,
    TokenCreated,
    TokenRevoked,
    UserCreated,
    UserChanged,
    ImageDeleted,
    ImageRestored,
    ImagePromoted,
    ImageOwnerChanged,
    WatchCreated,
    WatchChanged,
    WatchDeleted,
    Denied,
}

impl AuditAction {
    pub const ALL: [AuditAction; 17] = [
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::Submit,
        AuditAction::Cancel,
        AuditAction::Retry,
        AuditAction::TokenCreated,
        AuditAction::TokenRevoked,
        AuditAction::UserCreated,
        AuditAction::UserChanged,
        AuditAction::ImageDeleted,
        AuditAction::ImageRestored,
        AuditAction::ImagePromoted,
        AuditAction::ImageOwnerChanged,
        AuditAction::WatchCreated,
        AuditAction::WatchChanged,
        AuditAction::WatchDeleted,
        AuditAction::Denied,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::Submit => "submit",
            AuditAction::Cancel => "cancel",
            AuditAction::Retry => "retry",
            AuditAction::TokenCreated => "token_created",
            AuditAction::TokenRevoked => "token_revoked",
            AuditAction::UserCreated => "user_created",
            AuditAction::UserChanged => "user_changed",
            AuditAction::ImageDeleted => "image_deleted",
            AuditAction::ImageRestored => "image_restored",
            AuditAction::ImagePromoted => "image_promoted",
            AuditAction::ImageOwnerChanged => "image_owner_changed",
            AuditAction::WatchCreated => "watch_created",
            AuditAction::WatchChanged => "watch_changed",
            AuditAction::WatchDeleted => "watch_deleted",
            AuditAction::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Not allowed, or bad credentials.
    Refused,
    /// vmscan could not do it (a directory down, an error).
    Failed,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "ok" => Outcome::Ok,
            "refused" => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }
}

/// One audit entry to write.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub actor: Option<String>,
    pub address: Option<String>,
    pub action: AuditAction,
    pub object: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// An audit entry as stored.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub ts: Millis,
    pub actor: Option<String>,
    pub address: Option<String>,
    pub action: String,
    pub object: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    pub outcome: Option<Outcome>,
    /// Object, exact (a job id, an image record, a user).
    pub object: Option<String>,
    pub since: Option<Millis>,
    /// Keyset paging: entries older than this id.
    pub before: Option<i64>,
    pub limit: i64,
}

/// Who may do what, stored.
#[async_trait]
pub trait AuthStore: Send + Sync {
    async fn get_user(&self, name: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// A new user; `Conflict` if the name is taken.
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User>;
    /// Inserts `user` only while there is no user at all (the first admin);
    /// whether this call inserted it. Safe with many replicas starting at once.
    async fn insert_first_user(&self, user: &NewUser) -> StoreResult<bool>;
    /// A directory user as the directory described them at this login.
    async fn upsert_directory_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn update_user(&self, name: &str, change: &UserChange) -> StoreResult<Option<User>>;
    async fn record_login(&self, name: &str) -> StoreResult<()>;

    async fn create_session(&self, s: &Session) -> StoreResult<()>;
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>>;
    async fn touch_session(&self, id_hash: &str, now: Millis) -> StoreResult<()>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Ends every session of a user (password change, disabled, role change).
    async fn delete_user_sessions(&self, user: &str) -> StoreResult<u64>;

    async fn create_token(&self, t: &NewToken) -> StoreResult<ApiToken>;
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<ApiToken>>;
    async fn get_token(&self, id: i64) -> StoreResult<Option<ApiToken>>;
    /// `user`: that user's tokens; `None`: everyone's. Newest first.
    async fn list_tokens(&self, user: Option<&str>) -> StoreResult<Vec<ApiToken>>;
    /// Whether the token was live and is now revoked.
    async fn revoke_token(&self, id: i64) -> StoreResult<bool>;
    async fn token_used(&self, id: i64, now: Millis) -> StoreResult<()>;

    /// The shared secret `name`: `fresh` if none was stored yet, else the stored one.
    async fn server_secret(&self, name: &str, fresh: &str) -> StoreResult<String>;

    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()>;
    /// Newest first.
    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Failed logins since `since` for a user name or a client address.
    async fn failed_logins(
        &self,
        user: Option<&str>,
        address: Option<&str>,
        since: Millis,
    ) -> StoreResult<i64>;
}

const USER_COLS: &str =
    "name, display_name, email, role, source, password_hash, groups, disabled, \
     created_at, updated_at, last_login_at";

macro_rules! user_cols {
    () => {
        "name, display_name, email, role, source, password_hash, groups, disabled, \
         created_at, updated_at, last_login_at"
    };
}

const GET_USER: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE name = $1");

const INSERT_USER: &str = concat!(
    "INSERT INTO users (name, display_name, email, role, source, password_hash, groups, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (name) DO NOTHING RETURNING ",
    user_cols!()
);

const INSERT_FIRST_USER: &str =
    "INSERT INTO users (name, display_name, email, role, source, password_hash, groups, created_at, updated_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8 WHERE NOT EXISTS (SELECT 1 FROM users) \
     ON CONFLICT (name) DO NOTHING";

const UPSERT_DIRECTORY_USER: &str = concat!(
    "INSERT INTO users (name, display_name, email, role, source, password_hash, groups, created_at, updated_at, last_login_at) \
     VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $7, $7) \
     ON CONFLICT (name) DO UPDATE SET display_name = excluded.display_name, email = excluded.email, \
     role = excluded.role, source = excluded.source, groups = excluded.groups, updated_at = excluded.updated_at, \
     last_login_at = excluded.last_login_at RETURNING ",
    user_cols!()
);

const UPDATE_USER: &str =
    "UPDATE users SET role = $2, disabled = $3, password_hash = $4, email = $5, \
     display_name = $6, updated_at = $7 WHERE name = $1";

const RECORD_LOGIN: &str = "UPDATE users SET last_login_at = $2 WHERE name = $1";

const CREATE_SESSION: &str = "INSERT INTO sessions (id_hash, user_name, role, csrf, address, created_at, last_seen_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const GET_SESSION: &str =
    "SELECT id_hash, user_name, role, csrf, address, created_at, last_seen_at, expires_at \
     FROM sessions WHERE id_hash = $1";

const TOUCH_SESSION: &str = "UPDATE sessions SET last_seen_at = $2 WHERE id_hash = $1";

const DELETE_SESSION: &str = "DELETE FROM sessions WHERE id_hash = $1";

const DELETE_USER_SESSIONS: &str = "DELETE FROM sessions WHERE user_name = $1";

macro_rules! token_cols {
    () => {
        "id, user_name, name, role, created_by, created_at, expires_at, last_used_at, revoked_at"
    };
}

const CREATE_TOKEN: &str = concat!(
    "INSERT INTO api_tokens (token_hash, user_name, name, role, created_by, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
    token_cols!()
);

const TOKEN_BY_HASH: &str = concat!(
    "SELECT ",
    token_cols!(),
    " FROM api_tokens WHERE token_hash = $1"
);

const GET_TOKEN: &str = concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE id = $1");

const TOKENS_OF: &str = concat!(
    "SELECT ",
    token_cols!(),
    " FROM api_tokens WHERE user_name = $1 ORDER BY id DESC"
);

const ALL_TOKENS: &str = concat!(
    "SELECT ",
    token_cols!(),
    " FROM api_tokens ORDER BY id DESC"
);

const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

const TOKEN_USED: &str = "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1";

const PUT_SECRET: &str =
    "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

const GET_SECRET: &str = "SELECT value FROM server_secrets WHERE name = $1";

const APPEND_AUDIT: &str =
    "INSERT INTO audit_log (ts, actor, address, action, object, outcome, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

const AUDIT_COLS: &str = "id, ts, actor, address, action, object, outcome, detail";

#[derive(sqlx::FromRow)]
struct UserRow {
    name: String,
    display_name: Option<String>,
    email: Option<String>,
    role: String,
    source: String,
    password_hash: Option<String>,
    groups: String,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
    last_login_at: Option<i64>,
}

fn role(s: &str) -> StoreResult<Role> {
    s.parse()
        .map_err(|e: crate::domain::RoleError| StoreError::Corrupt(e.to_string()))
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> StoreResult<User> {
        Ok(User {
            role: role(&r.role)?,
            groups: serde_json::from_str(&r.groups).unwrap_or_default(),
            has_password: r.password_hash.is_some(),
            name: r.name,
            display_name: r.display_name,
            email: r.email,
            source: r.source,
            disabled: r.disabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_login_at: r.last_login_at,
            password_hash: r.password_hash,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id_hash: String,
    user_name: String,
    role: String,
    csrf: String,
    address: Option<String>,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> StoreResult<Session> {
        Ok(Session {
            role: role(&r.role)?,
            id_hash: r.id_hash,
            user: r.user_name,
            csrf: r.csrf,
            address: r.address,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            expires_at: r.expires_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    user_name: String,
    name: String,
    role: String,
    created_by: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> StoreResult<ApiToken> {
        Ok(ApiToken {
            role: role(&r.role)?,
            id: r.id,
            user: r.user_name,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    ts: i64,
    actor: Option<String>,
    address: Option<String>,
    action: String,
    object: Option<String>,
    outcome: String,
    detail: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> AuditRecord {
        AuditRecord {
            id: r.id,
            ts: r.ts,
            actor: r.actor,
            address: r.address,
            action: r.action,
            object: r.object,
            outcome: Outcome::parse(&r.outcome),
            detail: r.detail,
        }
    }
}

fn groups_json(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".into())
}

macro_rules! auth_impl {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl AuthStore for $store {
            async fn get_user(&self, name: &str) -> StoreResult<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(GET_USER)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(User::try_from).transpose()
            }

            async fn list_users(&self) -> StoreResult<Vec<User>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT ");
                q.push(USER_COLS).push(" FROM users ORDER BY name");
                let rows: Vec<UserRow> = q.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter().map(User::try_from).collect()
            }

            async fn insert_user(&self, u: &NewUser) -> StoreResult<User> {
                let row: Option<UserRow> = sqlx::query_as(INSERT_USER)
                    .bind(&u.name)
                    .bind(&u.display_name)
                    .bind(&u.email)
                    .bind(u.role.as_str())
                    .bind(&u.source)
                    .bind(&u.password_hash)
                    .bind(groups_json(&u.groups))
                    .bind(now_millis())
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => User::try_from(r),
                    None => Err(StoreError::Conflict(format!(
                        "a user named {:?} already exists",
                        u.name
                    ))),
                }
            }

            async fn insert_first_user(&self, u: &NewUser) -> StoreResult<bool> {
                let done = sqlx::query(INSERT_FIRST_USER)
                    .bind(&u.name)
                    .bind(&u.display_name)
                    .bind(&u.email)
                    .bind(u.role.as_str())
                    .bind(&u.source)
                    .bind(&u.password_hash)
                    .bind(groups_json(&u.groups))
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn upsert_directory_user(&self, u: &NewUser) -> StoreResult<User> {
                let row: UserRow = sqlx::query_as(UPSERT_DIRECTORY_USER)
                    .bind(&u.name)
                    .bind(&u.display_name)
                    .bind(&u.email)
                    .bind(u.role.as_str())
                    .bind(&u.source)
                    .bind(groups_json(&u.groups))
                    .bind(now_millis())
                    .fetch_one(&self.pool)
                    .await?;
                User::try_from(row)
            }

            async fn update_user(&self, name: &str, c: &UserChange) -> StoreResult<Option<User>> {
                let Some(old) = self.get_user(name).await? else {
                    return Ok(None);
                };
                sqlx::query(UPDATE_USER)
                    .bind(name)
                    .bind(c.role.unwrap_or(old.role).as_str())
                    .bind(c.disabled.unwrap_or(old.disabled))
                    .bind(c.password_hash.clone().or(old.password_hash))
                    .bind(c.email.clone().unwrap_or(old.email))
                    .bind(c.display_name.clone().unwrap_or(old.display_name))
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                self.get_user(name).await
            }

            async fn record_login(&self, name: &str) -> StoreResult<()> {
                sqlx::query(RECORD_LOGIN)
                    .bind(name)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_session(&self, s: &Session) -> StoreResult<()> {
                sqlx::query(CREATE_SESSION)
                    .bind(&s.id_hash)
                    .bind(&s.user)
                    .bind(s.role.as_str())
                    .bind(&s.csrf)
                    .bind(&s.address)
                    .bind(s.created_at)
                    .bind(s.last_seen_at)
                    .bind(s.expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
                let row: Option<SessionRow> = sqlx::query_as(GET_SESSION)
                    .bind(id_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Session::try_from).transpose()
            }

            async fn touch_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
                sqlx::query(TOUCH_SESSION)
                    .bind(id_hash)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
                sqlx::query(DELETE_SESSION)
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_user_sessions(&self, user: &str) -> StoreResult<u64> {
                let done = sqlx::query(DELETE_USER_SESSIONS)
                    .bind(user)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn create_token(&self, t: &NewToken) -> StoreResult<ApiToken> {
                let row: TokenRow = sqlx::query_as(CREATE_TOKEN)
                    .bind(&t.hash)
                    .bind(&t.user)
                    .bind(&t.name)
                    .bind(t.role.as_str())
                    .bind(&t.created_by)
                    .bind(now_millis())
                    .bind(t.expires_at)
                    .fetch_one(&self.pool)
                    .await?;
                ApiToken::try_from(row)
            }

            async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<ApiToken>> {
                let row: Option<TokenRow> = sqlx::query_as(TOKEN_BY_HASH)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(ApiToken::try_from).transpose()
            }

            async fn get_token(&self, id: i64) -> StoreResult<Option<ApiToken>> {
                let row: Option<TokenRow> = sqlx::query_as(GET_TOKEN)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(ApiToken::try_from).transpose()
            }

            async fn list_tokens(&self, user: Option<&str>) -> StoreResult<Vec<ApiToken>> {
                let rows: Vec<TokenRow> = match user {
                    Some(u) => {
                        sqlx::query_as(TOKENS_OF)
                            .bind(u)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query_as(ALL_TOKENS).fetch_all(&self.pool).await?,
                };
                rows.into_iter().map(ApiToken::try_from).collect()
            }

            async fn revoke_token(&self, id: i64) -> StoreResult<bool> {
                let done = sqlx::query(REVOKE_TOKEN)
                    .bind(id)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn token_used(&self, id: i64, now: Millis) -> StoreResult<()> {
                sqlx::query(TOKEN_USED)
                    .bind(id)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn server_secret(&self, name: &str, fresh: &str) -> StoreResult<String> {
                sqlx::query(PUT_SECRET)
                    .bind(name)
                    .bind(fresh)
                    .execute(&self.pool)
                    .await?;
                let (v,): (String,) = sqlx::query_as(GET_SECRET)
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(v)
            }

            async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
                sqlx::query(APPEND_AUDIT)
                    .bind(now_millis())
                    .bind(&e.actor)
                    .bind(&e.address)
                    .bind(e.action.as_str())
                    .bind(&e.object)
                    .bind(e.outcome.as_str())
                    .bind(&e.detail)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT ");
                q.push(AUDIT_COLS).push(" FROM audit_log WHERE 1 = 1");
                if let Some(a) = &f.actor {
                    q.push(" AND actor = ").push_bind(a.clone());
                }
                if let Some(a) = f.action {
                    q.push(" AND action = ").push_bind(a.as_str());
                }
                if let Some(o) = f.outcome {
                    q.push(" AND outcome = ").push_bind(o.as_str());
                }
                if let Some(o) = &f.object {
                    q.push(" AND object = ").push_bind(o.clone());
                }
                if let Some(s) = f.since {
                    q.push(" AND ts >= ").push_bind(s);
                }
                if let Some(b) = f.before {
                    q.push(" AND id < ").push_bind(b);
                }
                q.push(" ORDER BY id DESC LIMIT ")
                    .push_bind(f.limit.clamp(1, 1000));
                let rows: Vec<AuditRow> = q.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(AuditRecord::from).collect())
            }

            async fn failed_logins(
                &self,
                user: Option<&str>,
                address: Option<&str>,
                since: Millis,
            ) -> StoreResult<i64> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT COUNT(*) FROM audit_log WHERE action = 'login' AND outcome <> 'ok' AND ts >= ",
                );
                q.push_bind(since);
                if let Some(u) = user {
                    q.push(" AND actor = ").push_bind(u.to_string());
                }
                if let Some(a) = address {
                    q.push(" AND address = ").push_bind(a.to_string());
                }
                let (n,): (i64,) = q.build_query_as().fetch_one(&self.pool).await?;
                Ok(n)
            }
        }
    };
}

auth_impl!(SqliteStore, sqlx::Sqlite);
auth_impl!(PgStore, sqlx::Postgres);
