//! One vCenter session over `/sdk`: login with the service account, calls
//! with retries for busy faults and lost connections (back-off as for the
//! other providers), one re-login on `NotAuthenticated`, property reads and
//! task waits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, OnceCell};

use super::soap::{envelope, Fault, MoRef, VsError};
use super::xml::{el, escape, Element};
use super::VsphereConfig;
use crate::cluster::tls::{certificate_rejected, client_builder, CERTIFICATE_HINT};

/// The managers vmscan uses, from `RetrieveServiceContent`.
#[derive(Clone, Debug)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    pub ovf_manager: MoRef,
    /// "VMware vCenter Server 6.5.0 build-…", for the job page.
    pub about: String,
}

/// The session cookie, numbered so that a re-login replaces only the
/// session that failed.
#[derive(Clone)]
struct Session {
    cookie: SecretString,
    generation: u64,
}

/// One object's properties from the property collector.
#[derive(Clone, Debug)]
pub struct ObjectContent {
    pub obj: MoRef,
    pub props: BTreeMap<String, Element>,
}

impl ObjectContent {
    pub fn text(&self, path: &str) -> String {
        self.props
            .get(path)
            .map(|v| v.text.trim().to_string())
            .unwrap_or_default()
    }

    pub fn moref(&self, path: &str) -> Option<MoRef> {
        self.props.get(path).and_then(MoRef::from_element)
    }
}

pub struct Client {
    pub cfg: Arc<VsphereConfig>,
    pub http: reqwest::Client,
    /// `https://vcenter/sdk`
    pub sdk: url::Url,
    content: OnceCell<ServiceContent>,
    session: Mutex<Option<Session>>,
    generation: AtomicU64,
    logins: AtomicU64,
}

/// The SDK URL of a configured `url` (`/sdk` added when missing).
pub fn sdk_url(raw: &str) -> Result<url::Url, String> {
    let mut u = url::Url::parse(raw.trim()).map_err(|e| format!("url {raw:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("url {raw:?}: not an http(s) URL"));
    }
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if !u.path().trim_end_matches('/').ends_with("/sdk") {
        let p = format!("{}/sdk", u.path().trim_end_matches('/'));
        u.set_path(&p);
    }
    Ok(u)
}

/// The text of a reqwest error with its causes.
fn describe(e: &reqwest::Error) -> String {
    let head = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    crate::domain::with_causes(head, e)
}

impl Client {
    pub fn new(cfg: Arc<VsphereConfig>) -> Result<Client, String> {
        let sdk = sdk_url(&cfg.url)?;
        let http = client_builder(cfg.request_secs, cfg.verify_tls, cfg.ca_bundle.as_deref())
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client {
            cfg,
            http,
            sdk,
            content: OnceCell::new(),
            session: Mutex::new(None),
            generation: AtomicU64::new(0),
            logins: AtomicU64::new(0),
        })
    }

    /// Logins so far (tests see the re-login).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Waits before try `attempt + 1`: `retry_backoff_ms` doubling, at most 30 s.
    pub async fn backoff(&self, attempt: u32) {
        let ms = self
            .cfg
            .retry_backoff_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(10))
            .min(30_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// One POST to `/sdk`: the `…Response` element, or the SOAP fault.
    async fn post(
        &self,
        op: &str,
        this: &MoRef,
        args: &str,
        cookie: Option<&SecretString>,
    ) -> Result<(Element, Option<String>), VsError> {
        let mut rb = self
            .http
            .post(self.sdk.clone())
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .timeout(Duration::from_secs(self.cfg.request_secs.max(1)))
            .body(envelope(op, this, args));
        if let Some(c) = cookie {
            rb = rb.header(reqwest::header::COOKIE, c.expose_secret());
        }
        let r = rb.send().await.map_err(|e| {
            let rejected = certificate_rejected(&e);
            VsError::Transport {
                method: op.to_string(),
                message: if rejected {
                    format!("{}; {CERTIFICATE_HINT}", describe(&e))
                } else {
                    describe(&e)
                },
                retry: !rejected,
            }
        })?;
        let status = r.status();
        let set_cookie = r
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session="))
            .map(|v| v.split(';').next().unwrap_or(v).to_string());
        let text = crate::bounded_body::text(r, crate::bounded_body::API_BODY_LIMIT)
            .await
            .map_err(|e| VsError::Transport {
                method: op.to_string(),
                retry: matches!(e, crate::bounded_body::BodyError::Transport(_)),
                message: e.to_string(),
            })?;
        let parsed = Element::parse(&text);
        let body = parsed.as_ref().ok().and_then(|e| e.child("Body"));
        if let Some(f) = body.and_then(|b| b.child("Fault")) {
            return Err(VsError::Fault {
                method: op.to_string(),
                fault: Fault::from_soap(f),
            });
        }
        match body.and_then(|b| b.children.first()) {
            Some(resp) if status.is_success() => Ok((resp.clone(), set_cookie)),
            _ => Err(VsError::Http {
                method: op.to_string(),
                status: status.as_u16(),
                message: text.chars().take(200).collect(),
            }),
        }
    }

    /// `post` with retries of busy faults, lost connections and 5xx.
    async fn post_retrying(
        &self,
        op: &str,
        this: &MoRef,
        args: &str,
        cookie: Option<&SecretString>,
    ) -> Result<(Element, Option<String>), VsError> {
        let max = self.cfg.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.post(op, this, args, cookie).await {
                Err(e) if e.retryable() && attempt < max => {
                    tracing::warn!("vSphere {op}: {e} (try {attempt}/{max})");
                    self.backoff(attempt).await;
                }
                other => return other,
            }
        }
    }

    pub async fn content(&self) -> Result<&ServiceContent, VsError> {
        self.content
            .get_or_try_init(|| async {
                let (r, _) = self
                    .post_retrying(
                        "RetrieveServiceContent",
                        &MoRef::new("ServiceInstance", "ServiceInstance"),
                        "",
                        None,
                    )
                    .await?;
                let v = r
                    .child("returnval")
                    .ok_or_else(|| VsError::Other("RetrieveServiceContent: no returnval".into()))?;
                let mo = |name: &str| {
                    v.child(name).and_then(MoRef::from_element).ok_or_else(|| {
                        VsError::Other(format!(
                            "RetrieveServiceContent: no {name} (not a vCenter?)"
                        ))
                    })
                };
                Ok(ServiceContent {
                    root_folder: mo("rootFolder")?,
                    property_collector: mo("propertyCollector")?,
                    view_manager: mo("viewManager")?,
                    session_manager: mo("sessionManager")?,
                    ovf_manager: mo("ovfManager")?,
                    about: v.text_at("about/fullName"),
                })
            })
            .await
    }

    /// The current session, logging in when there is none.
    async fn session(&self) -> Result<Session, VsError> {
        let mut s = self.session.lock().await;
        if let Some(s) = &*s {
            return Ok(s.clone());
        }
        let sm = self.content().await?.session_manager.clone();
        let password = self
            .cfg
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .unwrap_or_default();
        let args = format!(
            "{}{}",
            el("userName", &self.cfg.username),
            el("password", &password)
        );
        // Login is retried for lost connections only: InvalidLogin is final.
        let (_, cookie) = self.post_retrying("Login", &sm, &args, None).await?;
        let cookie = cookie.ok_or_else(|| {
            VsError::Other("Login: vCenter sent no vmware_soap_session cookie".into())
        })?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            cookie: SecretString::from(cookie),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        tracing::info!(user = %self.cfg.username, "vSphere session opened");
        *s = Some(session.clone());
        Ok(session)
    }

    /// The session cookie (for NFC uploads, which vCenter authenticates by it).
    pub async fn cookie(&self) -> Result<SecretString, VsError> {
        Ok(self.session().await?.cookie)
    }

    /// Calls `op` on `this` in the session: the `…Response` element.
    pub async fn call(&self, op: &str, this: &MoRef, args: &str) -> Result<Element, VsError> {
        let mut relogged = false;
        loop {
            let s = self.session().await?;
            match self.post_retrying(op, this, args, Some(&s.cookie)).await {
                Err(VsError::Fault { fault, .. })
                    if fault.kind == "NotAuthenticated" && !relogged =>
                {
                    // The session expired or was terminated: one new login.
                    tracing::info!("vSphere {op}: session no longer valid; logging in again");
                    relogged = true;
                    let mut cur = self.session.lock().await;
                    if cur.as_ref().map(|c| c.generation) == Some(s.generation) {
                        *cur = None;
                    }
                }
                other => return other.map(|(e, _)| e),
            }
        }
    }

    /// Ends the session (best effort).
    pub async fn logout(&self) {
        let Some(s) = self.session.lock().await.take() else {
            return;
        };
        if let Ok(c) = self.content().await {
            let sm = c.session_manager.clone();
            if let Err(e) = self.post("Logout", &sm, "", Some(&s.cookie)).await {
                tracing::debug!("vSphere Logout: {e}");
            }
        }
    }

    /// `RetrievePropertiesEx` (and its continuations) for `spec`, the inside
    /// of a `PropertyFilterSpec`.
    pub async fn retrieve(&self, spec: &str) -> Result<Vec<ObjectContent>, VsError> {
        let pc = self.content().await?.property_collector.clone();
        let mut out = Vec::new();
        let mut r = self
            .call(
                "RetrievePropertiesEx",
                &pc,
                &format!(
                    "<specSet>{spec}</specSet><options><maxObjects>500</maxObjects></options>"
                ),
            )
            .await?;
        // Bounded, in case a server keeps handing out tokens.
        for _ in 0..10_000 {
            let Some(ret) = r.child("returnval") else {
                break;
            };
            for o in ret.children("objects") {
                let Some(obj) = o.child("obj").and_then(MoRef::from_element) else {
                    continue;
                };
                if let Some(f) = o.children("missingSet").find_map(|m| m.child("fault")) {
                    // The object vanished between listing and reading.
                    if Fault::from_localized(f).kind == "ManagedObjectNotFound" {
                        continue;
                    }
                }
                let props = o
                    .children("propSet")
                    .filter_map(|p| Some((p.text_at("name"), p.child("val")?.clone())))
                    .collect();
                out.push(ObjectContent { obj, props });
            }
            let token = ret.text_at("token");
            if token.is_empty() {
                break;
            }
            r = self
                .call("ContinueRetrievePropertiesEx", &pc, &el("token", &token))
                .await?;
        }
        Ok(out)
    }

    /// The properties `paths` of one object; `ManagedObjectNotFound` when it is gone.
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent, VsError> {
        let spec = format!(
            "<propSet>{}{}</propSet><objectSet>{}<skip>false</skip></objectSet>",
            el("type", &obj.kind),
            paths.iter().map(|p| el("pathSet", p)).collect::<String>(),
            obj.el("obj")
        );
        let mut all = self.retrieve(&spec).await?;
        match all.pop() {
            Some(o) => Ok(o),
            None => Err(VsError::Fault {
                method: "RetrievePropertiesEx".into(),
                fault: Fault {
                    kind: "ManagedObjectNotFound".into(),
                    message: format!("{obj} no longer exists"),
                },
            }),
        }
    }

    /// Every object of `kind` below `container` (a container view), with `paths`.
    pub async fn find_all(
        &self,
        container: &MoRef,
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>, VsError> {
        let vm = self.content().await?.view_manager.clone();
        let r = self
            .call(
                "CreateContainerView",
                &vm,
                &format!(
                    "{}{}<recursive>true</recursive>",
                    container.el("container"),
                    el("type", kind)
                ),
            )
            .await?;
        let view = r
            .child("returnval")
            .and_then(MoRef::from_element)
            .ok_or_else(|| VsError::Other("CreateContainerView: no view".into()))?;
        let spec = format!(
            concat!(
                "<propSet>{}{}</propSet><objectSet>{}<skip>true</skip>",
                r#"<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>"#,
                "</objectSet>"
            ),
            el("type", kind),
            paths.iter().map(|p| el("pathSet", p)).collect::<String>(),
            view.el("obj"),
        );
        let found = self.retrieve(&spec).await;
        if let Err(e) = self.call("DestroyView", &view, "").await {
            tracing::debug!("vSphere DestroyView: {e}");
        }
        found
    }

    /// Waits for a task to end: its result on `success`, its fault on `error`.
    pub async fn wait_task(&self, task: &MoRef, what: &str) -> Result<Option<Element>, VsError> {
        let start = Instant::now();
        let limit = Duration::from_secs(self.cfg.task_timeout_secs.max(1));
        loop {
            let info = self.properties(task, &["info"]).await?;
            let Some(i) = info.props.get("info") else {
                return Err(VsError::Other(format!("{what}: task {task} has no info")));
            };
            match i.text_at("state").as_str() {
                "success" => return Ok(i.child("result").cloned()),
                "error" => {
                    let fault = i
                        .child("error")
                        .map(Fault::from_localized)
                        .unwrap_or_else(|| Fault {
                            kind: "unknown".into(),
                            message: String::new(),
                        });
                    return Err(VsError::Task {
                        what: what.to_string(),
                        fault,
                    });
                }
                _ => {}
            }
            if start.elapsed() > limit {
                return Err(VsError::TaskTimeout {
                    what: what.to_string(),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms.max(10))).await;
        }
    }

    /// Calls a `…_Task` method and waits for the task.
    pub async fn run_task(
        &self,
        op: &str,
        this: &MoRef,
        args: &str,
        what: &str,
    ) -> Result<Option<Element>, VsError> {
        let r = self.call(op, this, args).await?;
        let task = r
            .child("returnval")
            .and_then(MoRef::from_element)
            .ok_or_else(|| VsError::Other(format!("{op}: no task in the answer")))?;
        self.wait_task(&task, what).await
    }

    /// `TerminateSession` of every other session (tests use it to expire
    /// a provider's session the way vCenter does).
    pub async fn terminate_other_sessions(&self) -> Result<usize, VsError> {
        let sm = self.content().await?.session_manager.clone();
        let me = self.properties(&sm, &["currentSession"]).await?;
        let mine = me
            .props
            .get("currentSession")
            .map(|s| s.text_at("key"))
            .unwrap_or_default();
        let all = self.properties(&sm, &["sessionList"]).await?;
        let others: Vec<String> = all
            .props
            .get("sessionList")
            .map(|l| {
                l.children
                    .iter()
                    .map(|s| s.text_at("key"))
                    .filter(|k| !k.is_empty() && *k != mine)
                    .collect()
            })
            .unwrap_or_default();
        if !others.is_empty() {
            let ids: String = others
                .iter()
                .map(|k| format!("<sessionId>{}</sessionId>", escape(k)))
                .collect();
            self.call("TerminateSession", &sm, &ids).await?;
        }
        Ok(others.len())
    }
}

#[cfg(test)]
mod tests {
    //! Retry rules against a scripted `/sdk`. Its envelopes have the shape
    //! of vcsim's (the InvalidLogin answer recorded in soap.rs) with fault
    //! names from the vim25 WSDL (`TaskInProgressFault`, `NoPermissionFault`),
    //! which vcsim never raises by itself.
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#;
    const TAIL: &str = "</soapenv:Body></soapenv:Envelope>";

    fn fault(kind: &str, msg: &str) -> String {
        format!(
            r#"{HEAD}<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{msg}</faultstring><detail><{kind}Fault xmlns="urn:vim25" xsi:type="{kind}"></{kind}Fault></detail></soapenv:Fault>{TAIL}"#
        )
    }

    /// Answers the session calls; `CreateContainerView` fails with `first`
    /// `busy_times` times, then succeeds. Counts its calls.
    async fn sdk(first: &'static str, busy_times: usize) -> (String, Arc<AtomicUsize>) {
        let views = Arc::new(AtomicUsize::new(0));
        let n = views.clone();
        let app = axum::Router::new().route(
            "/sdk",
            axum::routing::post(move |body: String| {
                let n = n.clone();
                async move {
                    let ok = |inner: String| {
                        (
                            axum::http::StatusCode::OK,
                            [("set-cookie", "vmware_soap_session=\"abc\"; Path=/")],
                            format!("{HEAD}{inner}{TAIL}"),
                        )
                    };
                    if body.contains("<RetrieveServiceContent") {
                        return ok(r#"<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><viewManager type="ViewManager">ViewManager</viewManager><sessionManager type="SessionManager">SessionManager</sessionManager><ovfManager type="OvfManager">OvfManager</ovfManager></returnval></RetrieveServiceContentResponse>"#.into());
                    }
                    if body.contains("<Login") {
                        return ok(r#"<LoginResponse xmlns="urn:vim25"><returnval><key>k</key></returnval></LoginResponse>"#.into());
                    }
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    if i < busy_times {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            [("set-cookie", "x=y")],
                            fault(first, "busy or refused"),
                        );
                    }
                    ok(r#"<CreateContainerViewResponse xmlns="urn:vim25"><returnval type="ContainerView">session[k]view-1</returnval></CreateContainerViewResponse>"#.into())
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sdk", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (url, views)
    }

    fn client(url: &str) -> Client {
        let cfg = VsphereConfig {
            url: url.into(),
            username: "u".into(),
            password: Some("p".to_string().into()),
            max_attempts: 4,
            retry_backoff_ms: 1,
            ..VsphereConfig::default()
        };
        Client::new(Arc::new(cfg)).unwrap()
    }

    async fn create_view(c: &Client) -> Result<Element, VsError> {
        c.call(
            "CreateContainerView",
            &MoRef::new("ViewManager", "ViewManager"),
            "",
        )
        .await
    }

    #[tokio::test]
    async fn a_busy_fault_is_retried_until_the_call_succeeds() {
        let (url, calls) = sdk("TaskInProgress", 2).await;
        let c = client(&url);
        create_view(&c).await.expect("third try succeeds");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(c.logins(), 1);
    }

    #[tokio::test]
    async fn no_permission_is_never_retried() {
        let (url, calls) = sdk("NoPermission", 10).await;
        let c = client(&url);
        let e = create_view(&c).await.expect_err("refused");
        assert_eq!(e.fault_kind(), Some("NoPermission"));
        assert!(!e.retryable());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn not_authenticated_logs_in_once_more_and_no_further() {
        let (url, calls) = sdk("NotAuthenticated", 10).await;
        let c = client(&url);
        let e = create_view(&c).await.expect_err("still not authenticated");
        assert_eq!(e.fault_kind(), Some("NotAuthenticated"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the call, and once after a new login"
        );
        assert_eq!(c.logins(), 2);
    }
}
