//! Who is asking, and may they: every request's identity (session cookie or
//! `Authorization: Bearer`), each route's rule, and the checks a browser
//! needs against cross-site requests (Origin/Host, CSRF, JSON-only bodies).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::domain::{now_millis, Role};
use crate::identity::secret;
use crate::store::auth::{AuditAction, AuditEntry, Outcome};

pub const SESSION_COOKIE: &str = "vmscan_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a request proved who it is.
#[derive(Clone, Debug)]
pub enum Via {
    Session { id_hash: String, csrf: String },
    Token { id: i64 },
}

/// The person behind a request, with the role in force for it (a token's
/// role, or the session's, never above the user's own).
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    pub user_role: Role,
    pub groups: Vec<String>,
    pub via: Via,
    pub address: Option<String>,
}

impl Identity {
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// The CSRF token pages embed for form posts (sessions only).
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf, .. } => csrf,
            Via::Token { .. } => "",
        }
    }

    pub fn name_for_people(&self) -> String {
        self.display_name
            .clone()
            .unwrap_or_else(|| self.user.clone())
    }
}

/// What a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks, the login page).
    Public,
    /// `/metrics`: open, or the configured bearer token.
    Metrics,
    /// A cluster pulling a job's image with the job's image key (`?key=`).
    ImageKey,
    /// An authenticated identity with at least this role.
    Role(Role),
}

impl Access {
    pub fn describe(&self) -> String {
        match self {
            Access::Public => "public".into(),
            Access::Metrics => "metrics token (open when unset)".into(),
            Access::ImageKey => "the job's image key".into(),
            Access::Role(r) => r.to_string(),
        }
    }
}

/// A refusal: 401 (no identity), 403 (not allowed), 415, 429.
#[derive(Debug)]
pub struct Denied {
    pub status: StatusCode,
    pub message: String,
    pub required_role: Option<Role>,
}

impl Denied {
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        Denied {
            status: StatusCode::UNAUTHORIZED,
            message: msg.into(),
            required_role: None,
        }
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Denied {
            status: StatusCode::FORBIDDEN,
            message: msg.into(),
            required_role: None,
        }
    }

    pub fn needs(role: Role, me: &Identity) -> Self {
        Denied {
            status: StatusCode::FORBIDDEN,
            message: format!("this needs the {role} role; {} has {}", me.user, me.role),
            required_role: Some(role),
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "status": self.status.as_u16()});
        if let Some(r) = self.required_role {
            body["required_role"] = json!(r.as_str());
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vmscan\""),
            );
        }
        resp
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<Result<String, ()>> {
    let v = headers.get(header::AUTHORIZATION)?;
    let v = v.to_str().map_err(|_| ());
    Some(v.and_then(|v| {
        let (scheme, token) = v.split_once(' ').ok_or(())?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            Ok(token.trim().to_string())
        } else {
            Err(())
        }
    }))
}

/// The identity a request carries; `Err` when it carries credentials that
/// are not (or no longer) good, `Ok(None)` when it carries none.
pub async fn resolve(
    st: &AppState,
    headers: &HeaderMap,
    address: Option<String>,
) -> Result<Option<Identity>, Denied> {
    let now = now_millis();
    if let Some(b) = bearer(headers) {
        let token =
            b.map_err(|()| Denied::unauthenticated("Authorization must be \"Bearer <token>\""))?;
        // The metrics token is no one's identity: `/metrics` checks it itself.
        if is_metrics_token(st, &token) {
            return Ok(None);
        }
        let Some(t) = st
            .store
            .token_by_hash(&secret::digest(&token))
            .await
            .map_err(internal)?
        else {
            return Err(Denied::unauthenticated("unknown API token"));
        };
        if t.revoked_at.is_some() {
            return Err(Denied::unauthenticated(format!(
                "API token {} ({}) was revoked",
                t.id, t.name
            )));
        }
        if !t.is_live(now) {
            return Err(Denied::unauthenticated(format!(
                "API token {} ({}) has expired",
                t.id, t.name
            )));
        }
        let user = active_user(st, &t.user).await?;
        // Writing on every request would make reads into writes; once a minute is enough.
        if t.last_used_at.is_none_or(|u| now - u > 60_000) {
            st.store.token_used(t.id, now).await.map_err(internal)?;
        }
        return Ok(Some(Identity {
            role: t.role.min(user.role),
            user_role: user.role,
            user: user.name,
            display_name: user.display_name,
            email: user.email,
            groups: user.groups,
            via: Via::Token { id: t.id },
            address,
        }));
    }
    let Some(sid) = cookie(headers, SESSION_COOKIE).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let id_hash = secret::digest(&sid);
    let Some(s) = st.store.get_session(&id_hash).await.map_err(internal)? else {
        return Err(Denied::unauthenticated(
            "your session has ended; log in again",
        ));
    };
    let idle_ms = st.config.auth.session_idle_secs as i64 * 1000;
    if now >= s.expires_at || now - s.last_seen_at > idle_ms {
        st.store.delete_session(&id_hash).await.map_err(internal)?;
        return Err(Denied::unauthenticated(
            "your session has expired; log in again",
        ));
    }
    let user = active_user(st, &s.user).await?;
    if now - s.last_seen_at > 30_000 {
        st.store
            .touch_session(&id_hash, now)
            .await
            .map_err(internal)?;
    }
    Ok(Some(Identity {
        role: s.role.min(user.role),
        user_role: user.role,
        user: user.name,
        display_name: user.display_name,
        email: user.email,
        groups: user.groups,
        via: Via::Session {
            id_hash,
            csrf: s.csrf,
        },
        address,
    }))
}

fn is_metrics_token(st: &AppState, token: &str) -> bool {
    use secrecy::ExposeSecret;
    st.config
        .auth
        .metrics_token
        .as_ref()
        .is_some_and(|m| secret::constant_time_eq(token.as_bytes(), m.expose_secret().as_bytes()))
}

async fn active_user(st: &AppState, name: &str) -> Result<crate::store::auth::User, Denied> {
    match st.store.get_user(name).await.map_err(internal)? {
        Some(u) if !u.disabled => Ok(u),
        Some(_) => Err(Denied::unauthenticated(format!(
            "the account {name} is disabled"
        ))),
        None => Err(Denied::unauthenticated(format!(
            "the account {name} no longer exists"
        ))),
    }
}

fn internal(e: crate::store::StoreError) -> Denied {
    tracing::error!(error = %e, "identity lookup failed");
    Denied {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "internal error while checking who you are".into(),
        required_role: None,
    }
}

pub fn client_address(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request's `Host`, lower-cased, without the port.
fn host_name(v: &str) -> String {
    let v = v.trim().to_ascii_lowercase();
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match v.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => v,
    }
}

/// Names the dashboard may be reached by. IP literals can never be a DNS
/// rebinding, so only names are checked.
fn host_allowed(st: &AppState, host: &str) -> bool {
    let name = host_name(host);
    if name.parse::<IpAddr>().is_ok() || name == "localhost" {
        return true;
    }
    let external = st
        .config
        .server
        .external_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    if external.as_deref() == Some(name.as_str()) {
        return true;
    }
    if nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            h == name || name.starts_with(&format!("{h}."))
        })
    {
        return true;
    }
    st.config
        .auth
        .allowed_hosts
        .iter()
        .any(|a| host_name(a) == name)
}

/// Checks every request before routing: who it is, and for state-changing
/// requests the browser-attack defences. Puts the [`Identity`] (if any) into
/// the request's extensions for the route rules and handlers.
pub async fn gate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let address = client_address(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    if is_unsafe(&method) {
        if let Err(d) = cross_site_checks(&st, &headers, &path) {
            audit_denied(&st, None, address.clone(), &method, &path, &d.message).await;
            return d.into_response();
        }
    }
    let identity = match resolve(&st, &headers, address.clone()).await {
        Ok(i) => i,
        // A stale cookie on a public route (the login page) is no identity.
        Err(d) if d.status == StatusCode::UNAUTHORIZED && bearer(&headers).is_none() => {
            req.extensions_mut().insert(StaleSession(d.message));
            None
        }
        Err(d) => return d.into_response(),
    };
    if let (Some(me), true) = (&identity, is_unsafe(&method)) {
        if let Via::Session { csrf, .. } = &me.via {
            // Form posts carry the token in their body; the handler checks it there.
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            let ok = sent.is_some_and(|s| secret::constant_time_eq(s.as_bytes(), csrf.as_bytes()));
            // Page form posts are checked by their handler (the `csrf` field).
            let page_form = form && !path.starts_with("/api/");
            if !ok && !page_form {
                let d = Denied::forbidden(
                    "missing or wrong CSRF token (send the X-CSRF-Token header of your session)",
                );
                audit_denied(&st, Some(&me.user), address, &method, &path, &d.message).await;
                return d.into_response();
            }
        }
    }
    if let Some(me) = identity {
        req.extensions_mut().insert(me);
    }
    next.run(req).await
}

/// Set when a request came with a session cookie that no longer works.
#[derive(Clone, Debug)]
pub struct StaleSession(pub String);

fn cross_site_checks(st: &AppState, headers: &HeaderMap, path: &str) -> Result<(), Denied> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && !host_allowed(st, host) {
        return Err(Denied::forbidden(format!(
            "Host {host:?} is not a name this vmscan is reached by (add it to auth.allowed_hosts)"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let same = url::Url::parse(origin).ok().is_some_and(|o| {
            let o_host = match (o.host_str(), o.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => String::new(),
            };
            // url drops a scheme's default port, as browsers' Host does.
            o_host.eq_ignore_ascii_case(host)
        });
        if !same {
            return Err(Denied::forbidden(format!(
                "cross-site request refused: Origin {origin} is not this site ({host})"
            )));
        }
    } else if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return Err(Denied::forbidden("cross-site request refused"));
    }
    if path.starts_with("/api/") && has_body(headers) {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Manifests may be YAML too; like JSON, a YAML type is not one a
        // cross-site form can send.
        let ok = match crate::manifest::Syntax::from_content_type(ct) {
            Some(crate::manifest::Syntax::Json) => true,
            Some(crate::manifest::Syntax::Yaml) => path == super::batches::CREATE_PATH,
            None => false,
        };
        if !ok {
            return Err(Denied {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: if path == super::batches::CREATE_PATH {
                    "a manifest is YAML or JSON: send Content-Type: application/yaml or application/json".into()
                } else {
                    "the API takes JSON only: send Content-Type: application/json".into()
                },
                required_role: None,
            });
        }
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    let len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

async fn audit_denied(
    st: &AppState,
    user: Option<&str>,
    address: Option<String>,
    method: &Method,
    path: &str,
    why: &str,
) {
    let entry = AuditEntry {
        actor: user.map(str::to_string),
        address,
        action: AuditAction::Denied,
        object: Some(format!("{method} {path}")),
        outcome: Outcome::Refused,
        detail: Some(why.to_string()),
    };
    if let Err(e) = st.store.append_audit(&entry).await {
        tracing::warn!(error = %e, "cannot write the audit trail");
    }
}

/// The per-route rule, run after [`gate`].
pub async fn require(access: Access, st: AppState, req: Request, next: Next) -> Response {
    match check(access, &st, &req) {
        Ok(()) => next.run(req).await,
        Err(d) => {
            let page = req.method() == Method::GET && !req.uri().path().starts_with("/api/");
            // Only a login can help: not for /metrics (its own bearer token).
            let login_helps = matches!(access, Access::Role(_));
            if page && login_helps && d.status == StatusCode::UNAUTHORIZED {
                // A browser gets the login form, coming back here afterwards.
                let next = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                let note = req.extensions().get::<StaleSession>().map(|s| s.0.clone());
                return super::login::login_page(StatusCode::UNAUTHORIZED, &next, note, None);
            }
            if d.status == StatusCode::FORBIDDEN {
                let me = req.extensions().get::<Identity>();
                audit_denied(
                    &st,
                    me.map(|m| m.user.as_str()),
                    client_address(&req),
                    req.method(),
                    req.uri().path(),
                    &d.message,
                )
                .await;
            }
            d.into_response()
        }
    }
}

fn check(access: Access, st: &AppState, req: &Request) -> Result<(), Denied> {
    match access {
        Access::Public | Access::ImageKey => Ok(()),
        Access::Metrics => {
            use secrecy::ExposeSecret;
            let Some(want) = &st.config.auth.metrics_token else {
                return Ok(());
            };
            match bearer(req.headers()) {
                Some(Ok(t))
                    if secret::constant_time_eq(t.as_bytes(), want.expose_secret().as_bytes()) =>
                {
                    Ok(())
                }
                _ => Err(Denied::unauthenticated(
                    "/metrics needs Authorization: Bearer <auth.metrics_token>",
                )),
            }
        }
        Access::Role(role) => {
            let Some(me) = req.extensions().get::<Identity>() else {
                let why = req
                    .extensions()
                    .get::<StaleSession>()
                    .map(|s| s.0.clone())
                    .unwrap_or_else(|| {
                        "log in first (a session cookie from /login, or Authorization: Bearer <API token>)"
                            .into()
                    });
                return Err(Denied::unauthenticated(why));
            };
            if me.may(role) {
                Ok(())
            } else {
                Err(Denied::needs(role, me))
            }
        }
    }
}

/// Headers on every response: no inline script, no framing, no sniffing.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // A handler may set a stricter policy of its own (the scan report's
    // inline style sheet by hash); every other response gets the site's.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
            ),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}
