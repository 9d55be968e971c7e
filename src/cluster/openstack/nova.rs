//! Nova v2.1: flavors by name, servers created with the job's user-data and
//! tag, polled to ACTIVE or ERROR, their addresses, console and deletion.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use super::error::OsError;
use super::http::{Api, Service};
use super::JOB_KEY;

/// A server as Nova shows it.
#[derive(Clone, Debug)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    pub task_state: Option<String>,
    pub fault: Option<String>,
    pub job: Option<String>,
    pub addresses: Value,
}

impl Server {
    fn of(v: &Value) -> Server {
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        Server {
            id: s("id").unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            task_state: s("OS-EXT-STS:task_state"),
            fault: v["fault"]["message"]
                .as_str()
                .map(str::to_string)
                .filter(|m| !m.is_empty()),
            job: v["metadata"][JOB_KEY].as_str().map(str::to_string),
            addresses: v["addresses"].clone(),
        }
    }

    /// A floating IPv4 address, if the server has one.
    pub fn floating(&self) -> Option<String> {
        self.addresses
            .as_object()?
            .values()
            .flat_map(|l| l.as_array().cloned().unwrap_or_default())
            .find(|a| a["OS-EXT-IPS:type"] == "floating" && a["version"].as_u64().unwrap_or(4) == 4)
            .and_then(|a| a["addr"].as_str().map(str::to_string))
    }

    /// The first IPv4 address, floating ones first; on `network` when given.
    pub fn address(&self, network: &str) -> Option<String> {
        let nets = self.addresses.as_object()?;
        let mut all: Vec<&Value> = Vec::new();
        for (name, list) in nets {
            if network.is_empty() || name == network {
                all.extend(list.as_array().into_iter().flatten());
            }
        }
        let v4 = |a: &Value| a["version"].as_u64().unwrap_or(4) == 4;
        let floating = all
            .iter()
            .copied()
            .find(|a| v4(a) && a["OS-EXT-IPS:type"] == "floating");
        floating
            .or_else(|| all.iter().copied().find(|a| v4(a)))
            .and_then(|a| a["addr"].as_str())
            .map(str::to_string)
    }
}

/// The id of the flavor called `name` (following `flavors_links`).
pub async fn flavor_id(api: &Api, name: &str) -> Result<String, OsError> {
    let mut path = "/flavors/detail?limit=200".to_string();
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let page = api.get(Service::Compute, &path).await?;
        for f in page["flavors"].as_array().into_iter().flatten() {
            let fname = f["name"].as_str().unwrap_or_default();
            if fname == name {
                if let Some(id) = f["id"].as_str() {
                    return Ok(id.to_string());
                }
            }
            seen.push(fname.to_string());
        }
        match next_query(&page["flavors_links"]) {
            Some(q) => path = format!("/flavors/detail?{q}"),
            None => break,
        }
    }
    Err(OsError::other(format!(
        "Nova has no flavor named {name:?} (flavors: {})",
        seen.join(", ")
    )))
}

/// The query of the `rel: next` link of a Nova list (its host may be an
/// internal name, so only the query is used).
fn next_query(links: &Value) -> Option<String> {
    links.as_array()?.iter().find(|l| l["rel"] == "next")?["href"]
        .as_str()?
        .split_once('?')
        .map(|(_, q)| q.to_string())
}

pub struct NewServer<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub flavor: &'a str,
    pub network: &'a str,
    pub user_data: &'a str,
    pub job: String,
    /// The per-job security group's id, instead of the configured ones.
    pub security_group: Option<&'a str>,
}

/// `POST /servers` → 202 and the new server's id.
pub async fn create(api: &Api, s: &NewServer<'_>) -> Result<String, OsError> {
    let mut server = json!({
        "name": s.name,
        "imageRef": s.image,
        "flavorRef": s.flavor,
        "networks": [{"uuid": s.network}],
        "user_data": base64::engine::general_purpose::STANDARD.encode(s.user_data),
        "metadata": {JOB_KEY: s.job},
    });
    if !api.cfg.key_name.is_empty() {
        server["key_name"] = json!(api.cfg.key_name);
    }
    if let Some(g) = s.security_group {
        // Nova takes a Neutron group's id where it takes a name.
        server["security_groups"] = json!([{"name": g}]);
    } else if !api.cfg.security_groups.is_empty() {
        server["security_groups"] = api
            .cfg
            .security_groups
            .iter()
            .map(|g| json!({"name": g}))
            .collect();
    }
    if api.cfg.config_drive {
        server["config_drive"] = json!(true);
    }
    let a = api
        .call(
            Service::Compute,
            Method::POST,
            "/servers",
            Some(&json!({ "server": server })),
            false,
        )
        .await?;
    a.body["server"]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| OsError::other(format!("Nova created {} without an id: {}", s.name, a.body)))
}

pub async fn get(api: &Api, id: &str) -> Result<Server, OsError> {
    let v = api.get(Service::Compute, &format!("/servers/{id}")).await?;
    Ok(Server::of(&v["server"]))
}

/// Every server of the project (`/servers/detail`, following `servers_links`).
pub async fn list(api: &Api, filter: &str) -> Result<Vec<Server>, OsError> {
    let next =
        |page: &Value| next_query(&page["servers_links"]).map(|q| format!("/servers/detail?{q}"));
    let first = format!("/servers/detail?limit=200{filter}");
    let all = api
        .get_all(Service::Compute, first, "servers", next)
        .await?;
    Ok(all.iter().map(Server::of).collect())
}

/// Deletes the server and waits until Nova answers 404. Missing = done.
/// A 409 (the server is busy in a task state) is retried after back-off.
pub async fn delete(api: &Api, id: &str) -> Result<(), OsError> {
    match api
        .call(
            Service::Compute,
            Method::DELETE,
            &format!("/servers/{id}"),
            None,
            true,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        // Still busy after every try: a later teardown can succeed.
        Err(e) if e.status() == Some(409) => {
            return Err(OsError::Other {
                message: e.to_string(),
                retryable: true,
            })
        }
        Err(e) => return Err(e),
    }
    let limit = Duration::from_secs(api.cfg.task_timeout_secs.max(1));
    let start = Instant::now();
    loop {
        match get(api, id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
            Ok(s) if s.status == "DELETED" => return Ok(()),
            Ok(s) if start.elapsed() > limit => {
                return Err(OsError::Other {
                    message: format!(
                        "Nova server {id} is still there ({}{}) {} s after it was deleted",
                        s.status,
                        s.task_state
                            .map(|t| format!(", task {t}"))
                            .unwrap_or_default(),
                        limit.as_secs()
                    ),
                    retryable: true,
                })
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(api.cfg.poll_ms)).await,
        }
    }
}

/// The last `lines` lines of the server's console log.
pub async fn console(api: &Api, id: &str, lines: usize) -> Result<String, OsError> {
    let a = api
        .call(
            Service::Compute,
            Method::POST,
            &format!("/servers/{id}/action"),
            Some(&json!({"os-getConsoleOutput": {"length": lines}})),
            false,
        )
        .await?;
    Ok(a.body["output"].as_str().unwrap_or_default().to_string())
}
