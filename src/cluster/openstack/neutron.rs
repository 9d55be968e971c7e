//! Neutron v2.0: networks by name, and floating IPs on a server's port.

use reqwest::Method;
use serde_json::{json, Value};

use super::error::OsError;
use super::http::{Api, Service};

fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The id of the network called `name`; with several, the project's own
/// (not shared) one wins.
pub async fn network_id(api: &Api, name: &str) -> Result<String, OsError> {
    let v = api
        .get(
            Service::Network,
            &format!("/v2.0/networks?name={}", query_value(name)),
        )
        .await?;
    let nets: Vec<&Value> = v["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["name"] == name)
        .collect();
    let pick = nets
        .iter()
        .find(|n| n["shared"] != true)
        .or_else(|| nets.first());
    pick.and_then(|n| n["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| OsError::other(format!("Neutron has no network named {name:?}")))
}

/// The ids of the server's ports.
async fn ports_of(api: &Api, server: &str) -> Result<Vec<String>, OsError> {
    let v = api
        .get(
            Service::Network,
            &format!("/v2.0/ports?device_id={}", query_value(server)),
        )
        .await?;
    Ok(v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect())
}

/// Allocates a floating IP on `pool_net` for the server's first port; its address.
pub async fn attach_floating_ip(
    api: &Api,
    pool_net: &str,
    server: &str,
    job: &str,
) -> Result<Option<String>, OsError> {
    let Some(port) = ports_of(api, server).await?.into_iter().next() else {
        return Ok(None);
    };
    let body = json!({"floatingip": {
        "floating_network_id": pool_net,
        "port_id": port,
        "description": format!("{}={job}", super::JOB_KEY),
    }});
    let a = api
        .call(
            Service::Network,
            Method::POST,
            "/v2.0/floatingips",
            Some(&body),
            false,
        )
        .await?;
    Ok(a.body["floatingip"]["floating_ip_address"]
        .as_str()
        .map(str::to_string))
}

/// Releases the floating IPs on the server's ports (before the server goes:
/// after, they would stay allocated and unattached).
pub async fn release_floating_ips(api: &Api, server: &str) -> Result<(), OsError> {
    for port in ports_of(api, server).await? {
        let v = api
            .get(
                Service::Network,
                &format!("/v2.0/floatingips?port_id={}", query_value(&port)),
            )
            .await?;
        for fip in v["floatingips"].as_array().into_iter().flatten() {
            if let Some(id) = fip["id"].as_str() {
                match api
                    .call(
                        Service::Network,
                        Method::DELETE,
                        &format!("/v2.0/floatingips/{id}"),
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
        }
    }
    Ok(())
}
