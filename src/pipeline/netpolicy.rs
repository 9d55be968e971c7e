//! Which network destinations vmscan may fetch from (SSRF guard). Checked on
//! the resolved address of every connection, so redirects and DNS tricks
//! cannot reach a denied range.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::FetchConfig;

#[derive(Clone, Debug)]
pub struct NetPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
#[error("destination {host} ({addr}) is not allowed by the network policy ({why})")]
pub struct Denied {
    pub host: String,
    pub addr: IpAddr,
    pub why: String,
}

impl NetPolicy {
    pub fn from_config(cfg: &FetchConfig) -> Self {
        let parse = |v: &Vec<String>| v.iter().filter_map(|c| c.parse().ok()).collect();
        NetPolicy {
            deny: parse(&cfg.deny_cidrs),
            allow: parse(&cfg.allow_cidrs),
        }
    }

    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Denied> {
        // An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        if let Some(net) = self.deny.iter().find(|n| n.contains(&addr)) {
            return Err(Denied {
                host: host.to_string(),
                addr,
                why: format!("{net} is denied"),
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&addr)) {
            return Err(Denied {
                host: host.to_string(),
                addr,
                why: "not in the allowed ranges".into(),
            });
        }
        Ok(())
    }

    /// A resolver for reqwest that drops denied addresses and fails if none is left.
    pub fn resolver(self: &Arc<Self>) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver {
            policy: self.clone(),
        })
    }
}

pub struct PolicyResolver {
    policy: Arc<NetPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut last_denied = None;
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(d) => {
                        last_denied = Some(d);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                if let Some(d) = last_denied {
                    return Err(Box::new(d) as Box<dyn std::error::Error + Send + Sync>);
                }
                return Err(format!("{host}: no address found").into());
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_metadata_ranges_by_default() {
        let p = NetPolicy::from_config(&FetchConfig::default());
        assert!(p.check("x", "169.254.169.254".parse().unwrap()).is_err());
        assert!(p
            .check("x", "::ffff:169.254.169.254".parse().unwrap())
            .is_err());
        assert!(p.check("x", "fd00:ec2::254".parse().unwrap()).is_err());
        assert!(p.check("x", "fe80::1".parse().unwrap()).is_err());
        assert!(p.check("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("x", "10.1.2.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn allow_list_restricts_everything_else() {
        let cfg = FetchConfig {
            allow_cidrs: vec!["10.0.0.0/8".into()],
            ..FetchConfig::default()
        };
        let p = NetPolicy::from_config(&cfg);
        assert!(p.check("x", "10.9.9.9".parse().unwrap()).is_ok());
        assert!(p.check("x", "192.0.2.1".parse().unwrap()).is_err());
    }
}
