//! The HTTP client every fetching stage uses: timeouts, the network policy on
//! every connection, and redirects re-checked hop by hop.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::redirect;

use super::netpolicy::NetPolicy;
use crate::config::FetchConfig;

pub fn client(cfg: &FetchConfig, policy: &Arc<NetPolicy>) -> reqwest::Client {
    let max = cfg.max_redirects;
    let hop_policy = policy.clone();
    reqwest::Client::builder()
        .user_agent(concat!("vmscan/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
        .read_timeout(Duration::from_secs(cfg.read_timeout_secs))
        .dns_resolver(policy.resolver())
        .redirect(redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= max {
                return attempt.error(format!("more than {max} redirects"));
            }
            let url = attempt.url();
            if !matches!(url.scheme(), "http" | "https") {
                let msg = format!("redirect to unsupported scheme: {url}");
                return attempt.error(msg);
            }
            // Names go through the policy resolver; literal addresses must be checked here.
            if let Some(ip) = literal_ip(url) {
                if let Err(d) = hop_policy.check(url.host_str().unwrap_or(""), ip) {
                    return attempt.error(d);
                }
            }
            attempt.follow()
        }))
        .build()
        .expect("HTTP client configuration is valid")
}

/// The address of a URL whose host is an IP literal.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}
