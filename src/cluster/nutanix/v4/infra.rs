//! Where VMs go, by name: the Prism Element cluster (clustermgmt), the
//! subnet (networking) and the category vmscan tags its entities with
//! (prism). Names are filters on the server and re-checked here: they are
//! not unique (packer and CAPX both re-check).

use serde::Deserialize;

use super::client::odata_str;
use super::{V4Client, V4Error};

pub const CLUSTERS: &str = "/api/clustermgmt/v4.0/config/clusters";
pub const SUBNETS: &str = "/api/networking/v4.0/config/subnets";
pub const CATEGORIES: &str = "/api/prism/v4.0/config/categories";

/// `clustermgmt.v4.config.Cluster`, the fields vmscan reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub ext_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub config: ClusterConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(default)]
    pub cluster_function: Vec<String>,
}

impl Cluster {
    /// The list holds Prism Central itself too; VMs run on AOS clusters
    /// (packer `isPECluster`).
    fn runs_vms(&self) -> bool {
        self.config.cluster_function.iter().any(|f| f == "AOS")
    }
}

/// `networking.v4.config.Subnet`: `clusterReference` is a plain extId string.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    pub ext_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subnet_type: Option<String>,
    #[serde(default)]
    pub cluster_reference: Option<String>,
    #[serde(default)]
    pub cluster_reference_list: Vec<String>,
}

impl Subnet {
    /// Overlay subnets span clusters; a VLAN subnet belongs to one (packer `getSubnet`).
    fn reaches(&self, cluster: &str) -> bool {
        if self.subnet_type.as_deref() == Some("OVERLAY") {
            return true;
        }
        match &self.cluster_reference {
            Some(c) => c == cluster,
            None => {
                self.cluster_reference_list.is_empty()
                    || self.cluster_reference_list.iter().any(|c| c == cluster)
            }
        }
    }
}

/// `prism.v4.config.Category`: a key/value entity with its own extId.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Category {
    pub ext_id: String,
    pub key: String,
    pub value: String,
}

/// Where and how new entities are made.
#[derive(Clone, Debug)]
pub struct Placement {
    pub cluster: String,
    pub subnet: String,
    /// The configured category's extId, when one is configured.
    pub categories: Vec<String>,
}

/// The one item called `name` among `items`, or why there is not one.
fn only<T>(kind: &str, name: &str, mut items: Vec<T>) -> Result<T, V4Error> {
    match items.len() {
        1 => Ok(items.remove(0)),
        0 => Err(V4Error::Missing(format!(
            "no {kind} named {name:?} in Prism Central"
        ))),
        n => Err(V4Error::Missing(format!(
            "{n} {kind}s are named {name:?}; names must be unique"
        ))),
    }
}

pub async fn placement(
    client: &V4Client,
    cluster_name: &str,
    subnet_name: &str,
    category: Option<(&str, &str)>,
) -> Result<Placement, V4Error> {
    let by_name = format!("name eq {}", odata_str(cluster_name));
    let clusters: Vec<Cluster> = client.list_as(CLUSTERS, Some(&by_name)).await?;
    let cluster = only(
        "cluster",
        cluster_name,
        clusters
            .into_iter()
            .filter(|c| c.name == cluster_name && c.runs_vms())
            .collect(),
    )?;
    let by_name = format!("name eq {}", odata_str(subnet_name));
    let subnets: Vec<Subnet> = client.list_as(SUBNETS, Some(&by_name)).await?;
    let subnet = only(
        "subnet",
        subnet_name,
        subnets
            .into_iter()
            .filter(|s| s.name == subnet_name && s.reaches(&cluster.ext_id))
            .collect(),
    )?;
    let mut categories = Vec::new();
    if let Some((key, value)) = category {
        let filter = format!(
            "key eq {} and value eq {}",
            odata_str(key),
            odata_str(value)
        );
        let found: Vec<Category> = client.list_as(CATEGORIES, Some(&filter)).await?;
        let label = format!("{key}: {value}");
        let c = only(
            "category",
            &label,
            found
                .into_iter()
                .filter(|c| c.key == key && c.value == value)
                .collect(),
        )?;
        categories.push(c.ext_id);
    }
    Ok(Placement {
        cluster: cluster.ext_id,
        subnet: subnet.ext_id,
        categories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prism_central_is_no_place_for_vms_and_vlan_subnets_belong_to_a_cluster() {
        let pc: Cluster = serde_json::from_value(json!({"extId": "pc", "name": "pc",
            "config": {"clusterFunction": ["PRISM_CENTRAL"]}}))
        .unwrap();
        let pe: Cluster = serde_json::from_value(json!({"extId": "pe", "name": "pe",
            "config": {"clusterFunction": ["AOS"], "buildInfo": {"version": "7.0"}}}))
        .unwrap();
        assert!(!pc.runs_vms() && pe.runs_vms());
        let vlan: Subnet = serde_json::from_value(
            json!({"extId": "s", "name": "n", "subnetType": "VLAN", "clusterReference": "pe"}),
        )
        .unwrap();
        assert!(vlan.reaches("pe") && !vlan.reaches("other"));
        let overlay: Subnet =
            serde_json::from_value(json!({"extId": "o", "name": "n", "subnetType": "OVERLAY"}))
                .unwrap();
        assert!(overlay.reaches("any"));
    }
}
