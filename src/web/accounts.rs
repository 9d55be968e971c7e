//! Accounts over HTTP: `GET /api/v1/me`, API tokens (`/api/v1/tokens` and
//! the `/tokens` page: one's own; admins everyone's) and users (`/api/v1/users`, admins).

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::api::parse_json;
use super::audit::record;
use super::auth::{Access, Denied, Identity};
use super::login::{check_form_csrf, form_field};
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiError, ApiResult, AppState};
use crate::domain::{fmt_millis, now_millis, Role};
use crate::identity::accounts::{self, AccountError, TokenRequest};
use crate::store::auth::{ApiToken, AuditAction, Outcome, User, UserChange};

pub fn routes(r: Routes) -> Routes {
    use Role::*;
    r.get("/api/v1/me", Access::Role(Viewer), me)
        .get("/api/v1/tokens", Access::Role(Viewer), list_tokens)
        .post("/api/v1/tokens", Access::Role(Viewer), create_token)
        .delete("/api/v1/tokens/{id}", Access::Role(Viewer), revoke_token)
        .get("/api/v1/users", Access::Role(Admin), list_users)
        .post("/api/v1/users", Access::Role(Admin), create_user)
        .patch("/api/v1/users/{name}", Access::Role(Admin), change_user)
        .get("/tokens", Access::Role(Viewer), tokens_page)
        .post("/tokens", Access::Role(Viewer), tokens_form)
        .post("/tokens/{id}/revoke", Access::Role(Viewer), revoke_form)
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(m) => ApiError::Unprocessable(m),
            AccountError::NotFound(m) => ApiError::NotFound(m),
            AccountError::Conflict(m) => ApiError::Conflict(m),
            AccountError::Store(s) => s.into(),
        }
    }
}

async fn me(Extension(me): Extension<Identity>) -> Json<serde_json::Value> {
    let via = match me.via {
        super::auth::Via::Session { .. } => "session",
        super::auth::Via::Token { .. } => "token",
    };
    Json(json!({
        "user": me.user,
        "display_name": me.display_name,
        "email": me.email,
        "role": me.role,
        "user_role": me.user_role,
        "groups": me.groups,
        "via": via,
    }))
}

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    all: Option<bool>,
}

async fn list_tokens(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let all = q.all.unwrap_or(false);
    if all && !me.may(Role::Admin) {
        return Err(Denied::needs(Role::Admin, &me).into());
    }
    let tokens = st
        .store
        .list_tokens((!all).then_some(me.user.as_str()))
        .await?;
    Ok(Json(json!({"tokens": tokens})))
}

#[derive(Debug, Deserialize)]
struct NewTokenBody {
    name: Option<String>,
    role: Option<String>,
    expires_days: Option<u32>,
    /// Admins only: a token for someone else.
    user: Option<String>,
}

async fn issue(st: &AppState, me: &Identity, b: NewTokenBody) -> ApiResult<(String, ApiToken)> {
    let user = b.user.clone().unwrap_or_else(|| me.user.clone());
    if user != me.user && !me.may(Role::Admin) {
        return Err(Denied::needs(Role::Admin, me).into());
    }
    let role = b
        .role
        .as_deref()
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.parse::<Role>())
        .transpose()
        .map_err(|e| ApiError::Unprocessable(format!("role: {e}")))?;
    let name = b.name.unwrap_or_default();
    let result = accounts::issue_token(
        &st.store,
        &TokenRequest {
            user: &user,
            role,
            name: &name,
            expires_days: b.expires_days,
            created_by: &me.user,
            ceiling: me.role,
            max_days: st.config.auth.max_token_days,
        },
    )
    .await;
    match result {
        Ok((secret, t)) => {
            let what = format!(
                "token {} ({}) for {}, role {}",
                t.id, t.name, t.user, t.role
            );
            record(
                st,
                me,
                AuditAction::TokenCreated,
                Some(format!("token:{}", t.id)),
                Outcome::Ok,
                Some(what),
            )
            .await;
            Ok((secret, t))
        }
        Err(e) => {
            record(
                st,
                me,
                AuditAction::TokenCreated,
                Some(format!("user:{user}")),
                Outcome::Refused,
                Some(e.to_string()),
            )
            .await;
            Err(e.into())
        }
    }
}

async fn create_token(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let b: NewTokenBody = parse_json(body, st.config.server.max_body_bytes)?;
    let (secret, t) = issue(&st, &me, b).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token": secret, "record": t, "note": "shown once: vmscan keeps only its hash"}),
        ),
    ))
}

async fn revoke(st: &AppState, me: &Identity, id: &str) -> ApiResult<ApiToken> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("token {id:?} not found (ids are numbers)")))?;
    let t = st
        .store
        .get_token(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("token {id} not found")))?;
    if t.user != me.user && !me.may(Role::Admin) {
        // Someone else's token is not even shown to exist.
        return Err(ApiError::NotFound(format!("token {id} not found")));
    }
    if !st.store.revoke_token(id).await? {
        return Err(ApiError::Conflict(format!(
            "token {id} was already revoked"
        )));
    }
    record(
        st,
        me,
        AuditAction::TokenRevoked,
        Some(format!("token:{id}")),
        Outcome::Ok,
        Some(format!("{} ({}) of {}", t.id, t.name, t.user)),
    )
    .await;
    Ok(st.store.get_token(id).await?.unwrap_or(t))
}

async fn revoke_token(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiToken>> {
    Ok(Json(revoke(&st, &me, &id).await?))
}

async fn list_users(State(st): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"users": st.store.list_users().await?})))
}

#[derive(Debug, Deserialize)]
struct NewUserBody {
    name: Option<String>,
    role: Option<String>,
    password: Option<String>,
    email: Option<String>,
    display_name: Option<String>,
}

async fn create_user(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let b: NewUserBody = parse_json(body, st.config.server.max_body_bytes)?;
    let name = b.name.unwrap_or_default();
    let role = b
        .role
        .unwrap_or_else(|| "viewer".into())
        .parse::<Role>()
        .map_err(|e| ApiError::Unprocessable(format!("role: {e}")))?;
    let user = accounts::add_local_user(
        &st.store,
        &name,
        role,
        b.password.as_deref(),
        b.email,
        b.display_name,
    )
    .await?;
    record(
        &st,
        &me,
        AuditAction::UserCreated,
        Some(format!("user:{}", user.name)),
        Outcome::Ok,
        Some(format!("local, role {}", user.role)),
    )
    .await;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Debug, Deserialize)]
struct UserChangeBody {
    role: Option<String>,
    disabled: Option<bool>,
    email: Option<String>,
    display_name: Option<String>,
    password: Option<String>,
}

async fn change_user(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<User>> {
    let b: UserChangeBody = parse_json(body, st.config.server.max_body_bytes)?;
    let role = b
        .role
        .map(|r| r.parse::<Role>())
        .transpose()
        .map_err(|e| ApiError::Unprocessable(format!("role: {e}")))?;
    if let Some(pw) = &b.password {
        accounts::set_password(&st.store, &name, pw).await?;
    }
    let change = UserChange {
        role,
        disabled: b.disabled,
        email: b.email.map(|e| Some(e).filter(|e| !e.is_empty())),
        display_name: b.display_name.map(|e| Some(e).filter(|e| !e.is_empty())),
        password_hash: None,
    };
    let user = accounts::change_user(&st.store, &name, &change).await?;
    let mut what = Vec::new();
    if let Some(r) = role {
        what.push(format!("role {r}"));
    }
    if let Some(d) = b.disabled {
        what.push(if d {
            "disabled".into()
        } else {
            "enabled".to_string()
        });
    }
    if b.password.is_some() {
        what.push("password set".into());
    }
    record(
        &st,
        &me,
        AuditAction::UserChanged,
        Some(format!("user:{name}")),
        Outcome::Ok,
        Some(what.join(", ")),
    )
    .await;
    Ok(Json(user))
}

pub struct TokenRow {
    pub t: ApiToken,
    pub created: String,
    pub expires: String,
    pub last_used: String,
    pub live: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "tokens.html")]
struct TokensPage {
    me: Viewer,
    tokens: Vec<TokenRow>,
    roles: Vec<&'static str>,
    new_token: Option<String>,
    error: Option<String>,
}

async fn render_tokens(
    st: &AppState,
    me: &Identity,
    new_token: Option<String>,
    error: Option<String>,
) -> ApiResult<Response> {
    let now = now_millis();
    let tokens = st.store.list_tokens(Some(&me.user)).await?;
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        TokensPage {
            me: Viewer::of(me),
            tokens: tokens
                .into_iter()
                .map(|t| TokenRow {
                    created: fmt_millis(t.created_at),
                    expires: t
                        .expires_at
                        .map(fmt_millis)
                        .unwrap_or_else(|| "never".into()),
                    last_used: t
                        .last_used_at
                        .map(fmt_millis)
                        .unwrap_or_else(|| "never".into()),
                    live: t.is_live(now),
                    t,
                })
                .collect(),
            roles: Role::ALL
                .iter()
                .filter(|r| **r <= me.role)
                .map(|r| r.as_str())
                .collect(),
            new_token,
            error,
        },
    )
        .into_response())
}

async fn tokens_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
) -> ApiResult<Response> {
    render_tokens(&st, &me, None, None).await
}

async fn tokens_form(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_form_csrf(&me, &body, &headers)?;
    let b = NewTokenBody {
        name: form_field(&body, "name"),
        role: form_field(&body, "role"),
        expires_days: match form_field(&body, "expires_days").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => match s.trim().parse() {
                Ok(n) => Some(n),
                Err(_) => {
                    return render_tokens(
                        &st,
                        &me,
                        None,
                        Some(format!("expires in days: {s:?} is not a number")),
                    )
                    .await
                }
            },
        },
        user: None,
    };
    match issue(&st, &me, b).await {
        Ok((secret, _)) => render_tokens(&st, &me, Some(secret), None).await,
        Err(e) => render_tokens(&st, &me, None, Some(e.to_string())).await,
    }
}

async fn revoke_form(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_form_csrf(&me, &body, &headers)?;
    revoke(&st, &me, &id).await?;
    Ok(Redirect::to("/tokens").into_response())
}
