//! Logging in and out: the login page, `POST /login` (a form, or JSON for
//! scripts) with per-user and per-address rate limits, and `POST /logout`.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::audit::record_as;
use super::auth::{client_address, Access, Identity, Via, SESSION_COOKIE};
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiError, ApiResult, AppState};
use crate::config::CookieSecure;
use crate::domain::{now_millis, Role};
use crate::identity::{secret, LoginError};
use crate::store::auth::{AuditAction, NewUser, Outcome, Session};

pub fn routes(r: Routes) -> Routes {
    r.get("/login", Access::Public, get_login)
        .post("/login", Access::Public, post_login)
        .post("/logout", Access::Role(Role::Viewer), post_logout)
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    me: Viewer,
    next: String,
    note: Option<String>,
    error: Option<String>,
    username: String,
    backend: &'static str,
}

/// Where to go after login: only a path on this site.
fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    if ok && !next.starts_with("/login") {
        next.to_string()
    } else {
        "/".into()
    }
}

pub fn login_page(
    status: StatusCode,
    next: &str,
    note: Option<String>,
    error: Option<String>,
) -> Response {
    render(status, next, note, error, String::new(), "")
}

fn render(
    status: StatusCode,
    next: &str,
    note: Option<String>,
    error: Option<String>,
    username: String,
    backend: &'static str,
) -> Response {
    let page = LoginPage {
        me: Viewer::default(),
        next: safe_next(next),
        note,
        error,
        username,
        backend,
    };
    (status, page).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn get_login(
    State(st): State<AppState>,
    me: Option<Extension<Identity>>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = q.next.unwrap_or_else(|| "/".into());
    if me.is_some() {
        return Redirect::to(&safe_next(&next)).into_response();
    }
    render(
        StatusCode::OK,
        &next,
        None,
        None,
        String::new(),
        st.login.kind(),
    )
}

#[derive(Debug, Deserialize)]
struct Credentials {
    username: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn secure_cookie(st: &AppState, headers: &HeaderMap) -> bool {
    match st.config.auth.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => {
            st.config
                .server
                .external_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
                || headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        }
    }
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let mut c =
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A refused login, as a form page or a JSON error.
fn refuse(
    json: bool,
    status: StatusCode,
    msg: String,
    next: &str,
    username: &str,
    backend: &'static str,
) -> Response {
    if json {
        (
            status,
            Json(json!({"error": msg, "status": status.as_u16()})),
        )
            .into_response()
    } else {
        render(status, next, None, Some(msg), username.to_string(), backend)
    }
}

async fn post_login(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let address = client_address(&req);
    let headers = req.headers().clone();
    let json = is_json(&headers);
    let body: Bytes = axum::body::to_bytes(req.into_body(), st.config.server.max_body_bytes)
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
    let creds: Credentials = if json {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    } else {
        serde_urlencoded_form(&body)?
    };
    let backend = st.login.kind();
    let next = creds.next.clone().unwrap_or_else(|| "/".into());
    let username = creds.username.unwrap_or_default().trim().to_string();
    let password = creds.password.unwrap_or_default();
    if username.is_empty() || password.is_empty() {
        return Ok(refuse(
            json,
            StatusCode::BAD_REQUEST,
            "enter your user name and password".into(),
            &next,
            &username,
            backend,
        ));
    }
    // Rate limits, counted from the audit trail so every replica agrees.
    let cfg = &st.config.auth;
    let since = now_millis() - cfg.login_window_secs as i64 * 1000;
    let by_user = st.store.failed_logins(Some(&username), None, since).await?;
    let by_addr = match &address {
        Some(a) => st.store.failed_logins(None, Some(a), since).await?,
        None => 0,
    };
    let max = cfg.max_failed_logins as i64;
    if by_user >= max || by_addr >= max * 4 {
        let what = if by_user >= max {
            format!("for {username}")
        } else {
            "from your address".to_string()
        };
        let msg = format!(
            "too many failed logins {what}; try again in {} minutes",
            cfg.login_window_secs.div_ceil(60)
        );
        record_as(
            &st,
            Some(username.clone()),
            address,
            AuditAction::Login,
            None,
            Outcome::Refused,
            Some(format!("rate limited: {msg}")),
        )
        .await;
        let mut resp = refuse(
            json,
            StatusCode::TOO_MANY_REQUESTS,
            msg,
            &next,
            &username,
            backend,
        );
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(cfg.login_window_secs),
        );
        return Ok(resp);
    }
    let account = match st
        .login
        .authenticate(&username, &SecretString::from(password))
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let (status, outcome) = match &e {
                LoginError::BadCredentials { .. } => (StatusCode::UNAUTHORIZED, Outcome::Refused),
                LoginError::NoRole { .. } => (StatusCode::FORBIDDEN, Outcome::Refused),
                LoginError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, Outcome::Failed),
                LoginError::Directory(_) => (StatusCode::BAD_GATEWAY, Outcome::Failed),
                LoginError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, Outcome::Failed),
            };
            tracing::warn!(user = %username, address = ?address, reason = %e.audit_reason(), "login refused");
            record_as(
                &st,
                Some(username.clone()),
                address,
                AuditAction::Login,
                None,
                outcome,
                Some(format!("{backend}: {}", e.audit_reason())),
            )
            .await;
            return Ok(refuse(
                json,
                status,
                e.to_string(),
                &next,
                &username,
                backend,
            ));
        }
    };
    // Directory users are copied in at each login: their mail, name, groups and role.
    let user = if account.source == "local" {
        st.store.record_login(&account.username).await?;
        st.store.get_user(&account.username).await?
    } else {
        Some(
            st.store
                .upsert_directory_user(&NewUser {
                    name: account.username.clone(),
                    display_name: account.display_name.clone(),
                    email: account.email.clone(),
                    role: account.role,
                    source: account.source.into(),
                    password_hash: None,
                    groups: account.groups.clone(),
                })
                .await?,
        )
    };
    let Some(user) = user.filter(|u| !u.disabled) else {
        record_as(
            &st,
            Some(username.clone()),
            address,
            AuditAction::Login,
            None,
            Outcome::Refused,
            Some("disabled in vmscan".into()),
        )
        .await;
        return Ok(refuse(
            json,
            StatusCode::UNAUTHORIZED,
            "wrong user name or password".into(),
            &next,
            &username,
            backend,
        ));
    };
    let sid = secret::random_id();
    let now = now_millis();
    let session = Session {
        id_hash: secret::digest(&sid),
        user: user.name.clone(),
        role: account.role.min(user.role),
        csrf: secret::random_id(),
        address: address.clone(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + cfg.session_max_secs as i64 * 1000,
    };
    st.store.create_session(&session).await?;
    record_as(
        &st,
        Some(user.name.clone()),
        address,
        AuditAction::Login,
        None,
        Outcome::Ok,
        Some(format!("{backend}, role {}", session.role)),
    )
    .await;
    let cookie = session_cookie(&sid, cfg.session_max_secs, secure_cookie(&st, &headers));
    let mut resp = if json {
        Json(json!({
            "user": user.name,
            "display_name": user.display_name,
            "email": user.email,
            "role": session.role,
            "csrf_token": session.csrf,
            "expires_at": crate::domain::fmt_millis(session.expires_at),
        }))
        .into_response()
    } else {
        Redirect::to(&safe_next(&next)).into_response()
    };
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

fn serde_urlencoded_form(body: &[u8]) -> ApiResult<Credentials> {
    let mut c = Credentials {
        username: None,
        password: None,
        next: None,
    };
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "username" => c.username = Some(v.into_owned()),
            "password" => c.password = Some(v.into_owned()),
            "next" => c.next = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(c)
}

/// A form field from a urlencoded body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Form posts from pages carry the session's CSRF token as a `csrf` field.
pub fn check_form_csrf(me: &Identity, body: &[u8], headers: &HeaderMap) -> ApiResult<()> {
    let Via::Session { csrf, .. } = &me.via else {
        return Ok(());
    };
    let sent = form_field(body, "csrf").or_else(|| {
        headers
            .get(super::auth::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    if sent.is_some_and(|s| secret::constant_time_eq(s.as_bytes(), csrf.as_bytes())) {
        Ok(())
    } else {
        Err(super::auth::Denied::forbidden("missing or wrong CSRF token; reload the page").into())
    }
}

async fn post_logout(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_form_csrf(&me, &body, &headers)?;
    if let Via::Session { id_hash, .. } = &me.via {
        st.store.delete_session(id_hash).await?;
    }
    super::audit::record(&st, &me, AuditAction::Logout, None, Outcome::Ok, None).await;
    let mut resp = if is_json(&headers)
        || !headers.contains_key(header::CONTENT_TYPE) && form_field(&body, "csrf").is_none()
    {
        Json(json!({"message": "logged out"})).into_response()
    } else {
        Redirect::to("/login").into_response()
    };
    resp.headers_mut().append(
        header::SET_COOKIE,
        session_cookie("", 0, secure_cookie(&st, &headers)),
    );
    Ok(resp)
}
