//! Where a scan guest may connect to: the destinations (host:port) a job
//! needs, and, on a restricted guest network, the address the guest uses
//! for each of them.
//!
//! A guest on QEMU's `restrict=on` network cannot use a destination's real
//! address: every packet leaving the guest is dropped unless a `guestfwd`
//! rule catches it. So each destination gets its own guest-side address,
//! `10.0.2.100 + i` with the destination's own port, and QEMU forwards that
//! address (and nothing else) to the real host:port. vmscan then rewrites
//! the URLs it hands to the guest (the agent's upload/download locations in
//! the rollout response or MSI properties) with [`GuestNetwork::rewrite_url`];
//! the profile keeps the agent's real URLs. Only the host part changes, so a
//! TLS client in the guest sees a certificate for the real name on an IP
//! address: Flexera's default response turns certificate checks off.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The first guest-side address handed out; slirp's own services sit at .2/.3.
const FIRST_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// 10.0.2.100 to 10.0.2.199: slirp's DHCP pool starts at .15, far below.
pub const MAX_ROUTES: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("{0:?} is not host:port (e.g. beacon.example.com:443)")]
    NotHostPort(String),
    #[error("{0:?} is not an http(s) URL with a host")]
    NotUrl(String),
    #[error("{0} destinations: the guest network has room for {MAX_ROUTES}")]
    TooMany(usize),
}

/// A host (name or IP) and TCP port the guest needs to reach.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

/// Host names and addresses only: these end up inside QEMU's option syntax.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
}

impl Destination {
    /// The host and port an http(s) URL connects to (the scheme's port if none).
    pub fn from_url(u: &str) -> Result<Destination, EgressError> {
        let parsed = url::Url::parse(u).map_err(|_| EgressError::NotUrl(u.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EgressError::NotUrl(u.into()));
        }
        let host = match parsed.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(EgressError::NotUrl(u.into())),
        };
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| EgressError::NotUrl(u.into()))?;
        if !plain_host(&host) {
            return Err(EgressError::NotUrl(u.into()));
        }
        Ok(Destination { host, port })
    }
}

impl FromStr for Destination {
    type Err = EgressError;

    /// `host:port` or `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EgressError::NotHostPort(s.into());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || !plain_host(host) || (host.contains(':') && !s.starts_with('[')) {
            return Err(bad());
        }
        Ok(Destination {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One destination and the guest-side address forwarded to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    pub dest: Destination,
    pub guest_addr: Ipv4Addr,
}

/// What a VM's network lets the guest reach, recorded in the VM's detail
/// (`guest_network`) for the job page and for the stages that talk to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// True: everything not in `routes` is unreachable from the guest.
    pub restricted: bool,
    pub routes: Vec<GuestRoute>,
}

impl GuestNetwork {
    /// A restricted network with one guest address per distinct destination.
    pub fn restricted(dests: &[Destination]) -> Result<GuestNetwork, EgressError> {
        let mut unique: Vec<Destination> = dests.to_vec();
        unique.sort();
        unique.dedup();
        if unique.len() > MAX_ROUTES {
            return Err(EgressError::TooMany(unique.len()));
        }
        let first = u32::from(FIRST_GUEST_ADDR);
        let routes = unique
            .into_iter()
            .zip(0u32..)
            .map(|(dest, i)| GuestRoute {
                dest,
                guest_addr: Ipv4Addr::from(first + i),
            })
            .collect();
        Ok(GuestNetwork {
            restricted: true,
            routes,
        })
    }

    /// `url` as the guest must use it: the host of a routed destination
    /// replaced by its guest address; anything else unchanged.
    pub fn rewrite_url(&self, u: &str) -> String {
        let Ok(dest) = Destination::from_url(u) else {
            return u.to_string();
        };
        let Some(route) = self.routes.iter().find(|r| r.dest == dest) else {
            return u.to_string();
        };
        let Ok(mut parsed) = url::Url::parse(u) else {
            return u.to_string();
        };
        if parsed
            .set_host(Some(&route.guest_addr.to_string()))
            .is_err()
        {
            return u.to_string();
        }
        // set_host keeps an explicit port; a default one stays implied, which is the same port.
        parsed.to_string()
    }

    /// The job page line: "guest network: restricted; may reach a:1 (as 10.0.2.100:1)".
    pub fn describe(&self) -> String {
        if !self.restricted {
            return "guest network: not restricted by vmscan (the cluster's network must isolate it)"
                .into();
        }
        if self.routes.is_empty() {
            return "guest network: restricted; may reach nothing but the forwarded login port"
                .into();
        }
        let list: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{} (as {}:{})", r.dest, r.guest_addr, r.dest.port))
            .collect();
        format!("guest network: restricted; may reach {}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        s.parse().unwrap()
    }

    #[test]
    fn destinations_come_from_urls_and_host_port_pairs() {
        assert_eq!(
            Destination::from_url("https://beacon.example.com/ManageSoftRL").unwrap(),
            d("beacon.example.com:443")
        );
        assert_eq!(
            Destination::from_url("http://127.0.0.1:8443/up").unwrap(),
            d("127.0.0.1:8443")
        );
        assert_eq!(d("[fd00::1]:80").host, "fd00::1");
        assert_eq!(d("[fd00::1]:80").to_string(), "[fd00::1]:80");
        for bad in [
            "beacon",
            "beacon:0",
            "beacon:x",
            "a,b:80",
            "fd00::1:80",
            ":80",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
        for bad in ["ftp://a/x", "/var/tmp/agent.sh", "https://"] {
            assert!(Destination::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_destination_gets_its_own_guest_address_and_urls_are_rewritten() {
        let net = GuestNetwork::restricted(&[
            d("beacon.example.com:443"),
            d("127.0.0.1:8443"),
            d("beacon.example.com:443"),
        ])
        .unwrap();
        assert_eq!(net.routes.len(), 2);
        assert_eq!(net.routes[0].dest, d("127.0.0.1:8443"));
        assert_eq!(net.routes[0].guest_addr, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(net.routes[1].guest_addr, Ipv4Addr::new(10, 0, 2, 101));
        assert_eq!(
            net.rewrite_url("http://127.0.0.1:8443/ManageSoftRL?x=1"),
            "http://10.0.2.100:8443/ManageSoftRL?x=1"
        );
        assert_eq!(
            net.rewrite_url("https://beacon.example.com/RL"),
            "https://10.0.2.101/RL"
        );
        // Not a routed destination (other port): left alone, so it fails in the guest.
        assert_eq!(
            net.rewrite_url("http://127.0.0.1:9999/x"),
            "http://127.0.0.1:9999/x"
        );
        assert_eq!(
            net.describe(),
            "guest network: restricted; may reach 127.0.0.1:8443 (as 10.0.2.100:8443), \
             beacon.example.com:443 (as 10.0.2.101:443)"
        );
        let many: Vec<Destination> = (1..=101).map(|p| d(&format!("h:{p}"))).collect();
        assert_eq!(
            GuestNetwork::restricted(&many),
            Err(EgressError::TooMany(101))
        );
    }
}
