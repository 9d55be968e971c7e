//! Which network destinations vmscan may fetch from (SSRF guard). Checked on
//! the resolved address of every connection, so redirects and DNS tricks
//! cannot reach a denied range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::FetchConfig;

/// Denied whatever `fetch.deny_cidrs` and `fetch.allow_cidrs` say: nothing a
/// submitter pastes should reach these (unspecified, link-local, cloud
/// metadata, multicast, broadcast, reserved). Loopback is not here but in the
/// default `deny_cidrs`, so tests can re-allow it explicitly.
pub const BUILTIN_DENY: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",     // link-local, incl. 169.254.169.254 (AWS, GCP, OpenStack)
    "168.63.129.16/32",   // Azure wire server
    "100.100.100.200/32", // Alibaba metadata
    "192.0.0.0/24",       // IETF protocol assignments
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4", // reserved, incl. 255.255.255.255
    "::/128",
    "fe80::/10",
    "fec0::/10",
    "fd00:ec2::254/128", // AWS metadata over IPv6
    "ff00::/8",
    "100::/64",
    "2001:db8::/32",
];

#[derive(Clone, Debug)]
pub struct NetPolicy {
    builtin: Vec<IpNet>,
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    allow_hosts: Vec<String>,
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
        let parse = |v: &[String]| v.iter().filter_map(|c| c.parse().ok()).collect();
        NetPolicy {
            builtin: BUILTIN_DENY.iter().map(|c| c.parse().unwrap()).collect(),
            deny: parse(&cfg.deny_cidrs),
            allow: parse(&cfg.allow_cidrs),
            allow_hosts: cfg
                .allow_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Denied> {
        let deny = |addr: IpAddr, why: String| Denied {
            host: host.to_string(),
            addr,
            why,
        };
        // Mapped and compatible addresses are IPv4 connections: judge them as such.
        let addr = match addr {
            IpAddr::V6(v6) => v4_in_disguise(v6).map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        let denied_by = |a: &IpAddr| {
            self.builtin
                .iter()
                .chain(&self.deny)
                .find(|n| n.contains(a))
                .map(|n| format!("{n} is denied"))
        };
        if let Some(why) = denied_by(&addr) {
            return Err(deny(addr, why));
        }
        // NAT64, 6to4 and Teredo reach an IPv4 host through a relay.
        if let IpAddr::V6(v6) = addr {
            for (form, v4) in embedded_v4(v6) {
                if let Some(why) = denied_by(&IpAddr::V4(v4)) {
                    return Err(deny(addr, format!("{form} form of {v4}; {why}")));
                }
            }
        }
        if self.allow.is_empty() && self.allow_hosts.is_empty() {
            return Ok(());
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = self.allow_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => name.ends_with(&format!(".{suffix}")),
            None => *h == name,
        });
        if host_ok || self.allow.iter().any(|n| n.contains(&addr)) {
            return Ok(());
        }
        Err(deny(
            addr,
            "not in fetch.allow_cidrs or fetch.allow_hosts".into(),
        ))
    }

    /// A resolver for reqwest that drops denied addresses and fails if none is left.
    /// `exempt` (the configured proxy's name) is resolved without the policy.
    pub fn resolver(self: &Arc<Self>, exempt: Option<String>) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver {
            policy: self.clone(),
            exempt,
        })
    }

    /// Resolves `host` and checks every address (all must pass: a proxy, not
    /// we, picks which one it connects to).
    pub async fn check_name(&self, host: &str, port: u16) -> Result<(), NameError> {
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| NameError::Resolve(host.to_string(), e.to_string()))?;
        let mut any = false;
        for a in addrs {
            any = true;
            self.check(host, a.ip())?;
        }
        if !any {
            return Err(NameError::Resolve(host.to_string(), "no address".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
}

/// `::ffff:a.b.c.d` (mapped), `::ffff:0:a.b.c.d` (translated) and `::a.b.c.d`
/// (compatible, deprecated but still routed by some stacks).
fn v4_in_disguise(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    // `::` and `::1` are themselves, not IPv4 0.0.0.0 / 0.0.0.1.
    let compatible = s[..6] == [0; 6] && u32::from(low) > 1;
    (translated || compatible).then_some(low)
}

/// IPv4 addresses carried inside an IPv6 address, with the form's name.
fn embedded_v4(v6: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    let mut out = Vec::new();
    // 64:ff9b::/96 (RFC 6052) and the local-use 64:ff9b:1::/48 (RFC 8215).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        out.push(("NAT64", v4(s[6], s[7])));
    }
    if s[0] == 0x2002 {
        out.push(("6to4", v4(s[1], s[2])));
    }
    // Teredo: the server in clear, the client's address inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(("Teredo", v4(s[2], s[3])));
        out.push(("Teredo", v4(!s[6], !s[7])));
    }
    out
}

pub struct PolicyResolver {
    policy: Arc<NetPolicy>,
    exempt: Option<String>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        let exempt = self
            .exempt
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if exempt {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
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

    fn policy(tweak: impl FnOnce(&mut FetchConfig)) -> NetPolicy {
        let mut cfg = FetchConfig::default();
        tweak(&mut cfg);
        NetPolicy::from_config(&cfg)
    }

    fn denied(p: &NetPolicy, addr: &str) -> bool {
        p.check("x", addr.parse().unwrap()).is_err()
    }

    #[test]
    fn denies_metadata_loopback_and_their_ipv6_disguises_by_default() {
        let p = policy(|_| {});
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "168.63.129.16",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:127.0.0.1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
        ] {
            assert!(denied(&p, a), "{a} should be denied");
        }
    }

    #[test]
    fn private_ranges_and_public_addresses_stay_allowed() {
        let p = policy(|_| {});
        for a in [
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.10",
            "100.64.0.1",
            "8.8.8.8",
            "fd12:3456::1",
            "2606:4700::1111",
            "::ffff:10.0.0.5",
            "2002:0a00:0001::",
            "64:ff9b::808:808",
        ] {
            assert!(!denied(&p, a), "{a} should be allowed");
        }
    }

    #[test]
    fn loopback_comes_back_only_by_leaving_it_out_of_deny_cidrs() {
        let p = policy(|c| c.deny_cidrs = vec![]);
        assert!(!denied(&p, "127.0.0.1"));
        assert!(!denied(&p, "::ffff:127.0.0.1"));
        assert!(!denied(&p, "::1"));
        // The built-in list stays, whatever allow_cidrs says.
        let p = policy(|c| {
            c.deny_cidrs = vec![];
            c.allow_cidrs = vec!["0.0.0.0/0".into(), "::/0".into()];
        });
        for a in [
            "169.254.169.254",
            "0.0.0.0",
            "::",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
        ] {
            assert!(denied(&p, a), "{a} should stay denied");
        }
        assert!(!denied(&p, "127.0.0.1"));
    }

    #[test]
    fn allow_lists_narrow_to_cidrs_or_host_names() {
        let p = policy(|c| c.allow_cidrs = vec!["10.0.0.0/8".into()]);
        assert!(!denied(&p, "10.9.9.9"));
        assert!(denied(&p, "192.168.0.1"));
        let p = policy(|c| c.allow_hosts = vec!["filer.example".into(), "*.images.example".into()]);
        let ip: IpAddr = "192.168.0.1".parse().unwrap();
        assert!(p.check("filer.example", ip).is_ok());
        assert!(p.check("FILER.example.", ip).is_ok());
        assert!(p.check("eu.images.example", ip).is_ok());
        assert!(p.check("images.example.evil", ip).is_err());
        assert!(p.check("other.example", ip).is_err());
        // A host name on the list does not open a denied address.
        assert!(p
            .check("filer.example", "169.254.169.254".parse().unwrap())
            .is_err());
    }
}
