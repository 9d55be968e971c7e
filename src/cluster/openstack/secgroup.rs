//! The per-job Neutron security group (`security_group = "per-job"`): ingress
//! only to the guest's SSH/WinRM port from vmscan's address, egress only to
//! the job's destinations, each as one /32 (or /128) and port.
//!
//! Neutron networking API v2.0 reference (docs.openstack.org/api-ref/network/v2):
//! `POST /v2.0/security-groups` creates the group *with* two default egress
//! rules (IPv4 and IPv6, any protocol, any address: "Security groups and
//! security group rules", and since 2023.2 the templates under
//! `/v2.0/default-security-group-rules` with `used_in_non_default_sg`); they
//! are deleted with `DELETE /v2.0/security-group-rules/{id}`, then the
//! allowed rules are added with `POST /v2.0/security-group-rules`.
//! `DELETE /v2.0/security-groups/{id}` answers 409 while a port still uses it.

use std::net::IpAddr;

use reqwest::Method;
use serde_json::{json, Value};

use super::error::OsError;
use super::http::{Api, Service};
use crate::cluster::egress::Destination;

/// One rule vmscan adds: direction, port and the single remote address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub ingress: bool,
    pub port: u16,
    /// A CIDR: vmscan's address for ingress, a destination's /32 or /128.
    pub remote: String,
}

impl Rule {
    fn ethertype(&self) -> &'static str {
        if self.remote.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        }
    }
}

/// The rules for a guest reachable on `shell_port` from `shell_from` and
/// allowed to `egress` (already resolved).
pub fn rules(shell_from: &str, shell_port: u16, egress: &[(IpAddr, u16)]) -> Vec<Rule> {
    let mut r = vec![Rule {
        ingress: true,
        port: shell_port,
        remote: shell_from.to_string(),
    }];
    for (ip, port) in egress {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        r.push(Rule {
            ingress: false,
            port: *port,
            remote: format!("{ip}/{bits}"),
        });
    }
    r.dedup();
    r
}

/// Resolves each destination on vmscan's host: Neutron filters addresses, not names.
pub async fn resolve(dests: &[Destination]) -> Result<Vec<(IpAddr, u16)>, OsError> {
    let mut out = Vec::new();
    for d in dests {
        let addrs = tokio::net::lookup_host((d.host.as_str(), d.port))
            .await
            .map_err(|e| {
                OsError::other(format!("cannot resolve {d} for the security group: {e}"))
            })?;
        for a in addrs {
            out.push((a.ip(), a.port()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Creates the group `name` with exactly `rules`; its id.
pub async fn create(api: &Api, name: &str, job: &str, rules: &[Rule]) -> Result<String, OsError> {
    let body = json!({"security_group": {
        "name": name,
        "description": format!("{}={job}", super::JOB_KEY),
    }});
    let a = api
        .call(
            Service::Network,
            Method::POST,
            "/v2.0/security-groups",
            Some(&body),
            false,
        )
        .await?;
    let id = a.body["security_group"]["id"]
        .as_str()
        .ok_or_else(|| OsError::other("Neutron answered a security group without an id"))?
        .to_string();
    // Neutron's default rules allow all egress: remove whatever it put in.
    let existing = api
        .get(
            Service::Network,
            &format!(
                "/v2.0/security-group-rules?security_group_id={}",
                query_value(&id)
            ),
        )
        .await?;
    for rule in existing["security_group_rules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(rid) = rule["id"].as_str() {
            api.call(
                Service::Network,
                Method::DELETE,
                &format!("/v2.0/security-group-rules/{rid}"),
                None,
                false,
            )
            .await?;
        }
    }
    for r in rules {
        let body = json!({"security_group_rule": {
            "security_group_id": id,
            "direction": if r.ingress { "ingress" } else { "egress" },
            "ethertype": r.ethertype(),
            "protocol": "tcp",
            "port_range_min": r.port,
            "port_range_max": r.port,
            "remote_ip_prefix": r.remote,
        }});
        api.call(
            Service::Network,
            Method::POST,
            "/v2.0/security-group-rules",
            Some(&body),
            false,
        )
        .await?;
    }
    Ok(id)
}

/// Deletes every group called `name` (missing: done). Run after the server
/// is gone; a port still holding the group answers 409, retried by `call`.
pub async fn delete_named(api: &Api, name: &str) -> Result<(), OsError> {
    let v = api
        .get(
            Service::Network,
            &format!("/v2.0/security-groups?name={}", query_value(name)),
        )
        .await?;
    let ids: Vec<String> = v["security_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["name"] == name)
        .filter_map(|g| g["id"].as_str().map(str::to_string))
        .collect();
    for id in ids {
        match api
            .call(
                Service::Network,
                Method::DELETE,
                &format!("/v2.0/security-groups/{id}"),
                None,
                true,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The group's rules as the job page shows them.
pub fn describe(name: &str, rules: &[Rule]) -> Value {
    let egress: Vec<String> = rules
        .iter()
        .filter(|r| !r.ingress)
        .map(|r| format!("{} tcp/{}", r.remote, r.port))
        .collect();
    let ingress: Vec<String> = rules
        .iter()
        .filter(|r| r.ingress)
        .map(|r| format!("{} tcp/{}", r.remote, r.port))
        .collect();
    json!({"name": name, "ingress": ingress, "egress": egress})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_allow_the_shell_from_vmscan_and_each_destination_as_one_address() {
        let r = rules(
            "192.0.2.10/32",
            22,
            &[
                ("203.0.113.5".parse().unwrap(), 443),
                ("2001:db8::5".parse().unwrap(), 443),
            ],
        );
        assert_eq!(r.len(), 3);
        assert!(r[0].ingress && r[0].port == 22 && r[0].remote == "192.0.2.10/32");
        assert_eq!(r[1].remote, "203.0.113.5/32");
        assert_eq!(r[1].ethertype(), "IPv4");
        assert_eq!(r[2].remote, "2001:db8::5/128");
        assert_eq!(r[2].ethertype(), "IPv6");
    }
}
