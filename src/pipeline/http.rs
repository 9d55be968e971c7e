//! The HTTP client every fetching stage uses: timeouts, the network policy on
//! every connection, redirects followed here hop by hop (each hop checked),
//! and no proxy unless `fetch.proxy` names one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{redirect, StatusCode};
use url::Url;

use super::netpolicy::{Denied, NameError, NetPolicy};
use crate::config::FetchConfig;
use crate::domain::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect to {0}: only http:// and https:// are followed")]
    BadRedirect(String),
    #[error("redirect from {0} has no usable Location header")]
    BadLocation(String),
    #[error("{0}")]
    Resolve(String),
    #[error(transparent)]
    Request(reqwest::Error),
}

impl HttpError {
    /// A connection the policy resolver refused surfaces as a reqwest error; dig it out.
    fn from_reqwest(e: reqwest::Error) -> HttpError {
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            if let Some(d) = s.downcast_ref::<Denied>() {
                return HttpError::Denied(Denied {
                    host: d.host.clone(),
                    addr: d.addr,
                    why: d.why.clone(),
                });
            }
            src = s.source();
        }
        // reqwest's message names the URL, secrets and all; callers name it redacted.
        HttpError::Request(e.without_url())
    }

    /// Whether trying again later may help (network trouble, not policy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, HttpError::Request(_) | HttpError::Resolve(_))
    }
}

/// A reqwest client wrapped so that no request leaves without the policy check.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<NetPolicy>,
    proxied: bool,
    max_redirects: usize,
    resolve_timeout: Duration,
}

impl Fetcher {
    pub fn new(cfg: &FetchConfig, policy: Arc<NetPolicy>) -> Fetcher {
        let proxy = cfg.proxy.as_deref().and_then(|p| Url::parse(p).ok());
        let exempt = proxy
            .as_ref()
            .and_then(|u| u.host_str())
            .map(|h| h.trim_matches(['[', ']']).to_string());
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("vmscan/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .read_timeout(Duration::from_secs(cfg.read_timeout_secs))
            .dns_resolver(policy.resolver(exempt))
            // Followed in `get`, where every hop is checked before it is sent.
            .redirect(redirect::Policy::none());
        b = match &proxy {
            // An explicit proxy also turns off the system (environment) proxies.
            Some(p) => b.proxy(reqwest::Proxy::all(p.as_str()).expect("proxy URL was validated")),
            // HTTP_PROXY and friends could send the request (and its target) anywhere.
            None => b.no_proxy(),
        };
        Fetcher {
            client: b.build().expect("HTTP client configuration is valid"),
            policy,
            proxied: proxy.is_some(),
            max_redirects: cfg.max_redirects,
            resolve_timeout: Duration::from_secs(cfg.connect_timeout_secs.max(1)),
        }
    }

    /// GET `url` with `headers`, following redirects; every hop's destination
    /// is checked before anything is sent to it.
    pub async fn get(&self, url: &Url, headers: HeaderMap) -> Result<reqwest::Response, HttpError> {
        let mut url = url.clone();
        let mut hops = 0;
        loop {
            self.check_target(&url).await?;
            let resp = self
                .client
                .get(url.clone())
                .headers(headers.clone())
                .send()
                .await
                .map_err(HttpError::from_reqwest)?;
            if !matches!(
                resp.status(),
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            ) {
                return Ok(resp);
            }
            hops += 1;
            if hops > self.max_redirects {
                return Err(HttpError::TooManyRedirects(self.max_redirects));
            }
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| HttpError::BadLocation(redact_url(url.as_str())))?;
            url = next;
        }
    }

    async fn check_target(&self, url: &Url) -> Result<(), HttpError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::BadRedirect(redact_url(url.as_str())));
        }
        let host = url.host_str().unwrap_or("");
        if let Some(ip) = literal_ip(url) {
            return Ok(self.policy.check(host, ip)?);
        }
        // Direct connections are checked by the policy resolver as they connect.
        // Through a proxy the proxy resolves the name, so check it here.
        if self.proxied {
            let port = url.port_or_known_default().unwrap_or(80);
            let checked =
                tokio::time::timeout(self.resolve_timeout, self.policy.check_name(host, port));
            match checked.await {
                Err(_) => return Err(HttpError::Resolve(format!("resolving {host} timed out"))),
                Ok(Err(NameError::Denied(d))) => return Err(d.into()),
                Ok(Err(e)) => return Err(HttpError::Resolve(e.to_string())),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }
}

/// The address of a URL whose host is an IP literal (`http://2130706433/` is
/// one too: the URL parser normalises decimal, octal and hex IPv4).
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server that answers every request with `body` and counts connections.
    async fn answering(body: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, n)
    }

    fn fetcher(tweak: impl FnOnce(&mut FetchConfig)) -> Fetcher {
        let mut cfg = FetchConfig::default();
        tweak(&mut cfg);
        Fetcher::new(&cfg, Arc::new(NetPolicy::from_config(&cfg)))
    }

    #[tokio::test]
    async fn through_a_proxy_the_target_name_is_still_checked() {
        let (proxy, seen) = answering("via proxy").await;
        let f = fetcher(|c| c.proxy = Some(format!("http://{proxy}")));
        for target in [
            "http://localhost:9/x.img",
            "http://169.254.169.254/x",
            "http://[::1]:9/x",
        ] {
            let err = f
                .get(&target.parse().unwrap(), HeaderMap::new())
                .await
                .unwrap_err();
            assert!(matches!(err, HttpError::Denied(_)), "{target}: {err}");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the proxy");
        // An allowed target does go through the proxy (the proxy answers for it).
        let resp = f
            .get(
                &"http://192.168.255.254:9/x.img".parse().unwrap(),
                HeaderMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "via proxy");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    /// Run by `ignores_proxy_environment_variables` in a child process, whose
    /// environment names a proxy (changing our own would race other tests).
    #[tokio::test]
    #[ignore = "run by ignores_proxy_environment_variables"]
    async fn child_with_proxy_env() {
        let Ok(trap) = std::env::var("VMSCAN_TEST_PROXY_TRAP") else {
            return;
        };
        let (target, _) = answering("direct").await;
        let url: Url = format!("http://{target}/x.img").parse().unwrap();
        let plain = reqwest::Client::new()
            .get(url.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            plain.text().await.unwrap(),
            "via proxy",
            "the environment names {trap}"
        );
        let f = fetcher(|c| c.deny_cidrs.clear());
        let ours = f.get(&url, HeaderMap::new()).await.unwrap();
        assert_eq!(ours.text().await.unwrap(), "direct");
    }

    #[tokio::test]
    async fn ignores_proxy_environment_variables() {
        let (proxy, seen) = answering("via proxy").await;
        let exe = std::env::current_exe().unwrap();
        let proxy_url = format!("http://{proxy}");
        let out = tokio::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "pipeline::http::tests::child_with_proxy_env",
            ])
            .env("VMSCAN_TEST_PROXY_TRAP", &proxy_url)
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Only the plain client, the control, went through the proxy.
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}
