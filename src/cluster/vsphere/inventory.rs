//! The configured datacenter, compute (cluster or resource pool), datastore,
//! folder and port group, found by name through container views.

use super::client::{Client, ObjectContent};
use super::soap::{MoRef, VsError};
use super::xml::escape;

/// How the NIC joins the configured port group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkBacking {
    /// A standard port group: by name.
    Standard { name: String, network: MoRef },
    /// A distributed port group: its key and its switch's uuid.
    Distributed {
        portgroup_key: String,
        switch_uuid: String,
    },
}

impl NetworkBacking {
    /// The `backing` element of a `VirtualEthernetCard`.
    pub fn xml(&self) -> String {
        match self {
            NetworkBacking::Standard { name, network } => format!(
                r#"<backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>{}</deviceName>{}</backing>"#,
                escape(name),
                network.el("network")
            ),
            NetworkBacking::Distributed {
                portgroup_key,
                switch_uuid,
            } => format!(
                r#"<backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>{}</switchUuid><portgroupKey>{}</portgroupKey></port></backing>"#,
                escape(switch_uuid),
                escape(portgroup_key)
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Inventory {
    pub folder: MoRef,
    pub pool: MoRef,
    pub datastore: MoRef,
    pub network: NetworkBacking,
}

fn named<'a>(all: &'a [ObjectContent], name: &str) -> Option<&'a ObjectContent> {
    all.iter().find(|o| o.text("name") == name)
}

fn not_found(kind: &'static str, name: &str, all: &[ObjectContent]) -> VsError {
    let mut known: Vec<String> = all.iter().map(|o| o.text("name")).collect();
    known.sort();
    known.dedup();
    known.truncate(20);
    VsError::NotFound {
        kind,
        name: name.to_string(),
        known,
    }
}

/// Finds everything the configuration names, or says which one is missing.
pub async fn resolve(c: &Client) -> Result<Inventory, VsError> {
    let cfg = c.cfg.clone();
    let root = c.content().await?.root_folder.clone();

    let dcs = c
        .find_all(&root, "Datacenter", &["name", "vmFolder"])
        .await?;
    let dc = named(&dcs, &cfg.datacenter)
        .ok_or_else(|| not_found("datacenter", &cfg.datacenter, &dcs))?;
    let datacenter = dc.obj.clone();
    let vm_folder = dc.moref("vmFolder").ok_or_else(|| {
        VsError::Other(format!("datacenter {:?} has no VM folder", cfg.datacenter))
    })?;

    let folder = if cfg.folder.is_empty() {
        vm_folder
    } else {
        let all = c.find_all(&vm_folder, "Folder", &["name"]).await?;
        named(&all, &cfg.folder)
            .ok_or_else(|| not_found("VM folder", &cfg.folder, &all))?
            .obj
            .clone()
    };

    let compute = if cfg.cluster.is_empty() {
        None
    } else {
        let all = c
            .find_all(&datacenter, "ComputeResource", &["name", "resourcePool"])
            .await?;
        Some(
            named(&all, &cfg.cluster)
                .ok_or_else(|| not_found("cluster", &cfg.cluster, &all))?
                .clone(),
        )
    };
    let pool = if !cfg.resource_pool.is_empty() {
        let within = compute
            .as_ref()
            .map(|c| c.obj.clone())
            .unwrap_or(datacenter.clone());
        let all = c.find_all(&within, "ResourcePool", &["name"]).await?;
        named(&all, &cfg.resource_pool)
            .ok_or_else(|| not_found("resource pool", &cfg.resource_pool, &all))?
            .obj
            .clone()
    } else {
        compute
            .as_ref()
            .and_then(|c| c.moref("resourcePool"))
            .ok_or_else(|| VsError::Other("set cluster or resource_pool".into()))?
    };

    let all = c.find_all(&datacenter, "Datastore", &["name"]).await?;
    let datastore = named(&all, &cfg.datastore)
        .ok_or_else(|| not_found("datastore", &cfg.datastore, &all))?
        .obj
        .clone();

    let all = c.find_all(&datacenter, "Network", &["name"]).await?;
    let net = named(&all, &cfg.network).ok_or_else(|| not_found("network", &cfg.network, &all))?;
    let network = if net.obj.kind == "DistributedVirtualPortgroup" {
        let pg = c
            .properties(&net.obj, &["key", "config.distributedVirtualSwitch"])
            .await?;
        let switch = pg
            .moref("config.distributedVirtualSwitch")
            .ok_or_else(|| VsError::Other(format!("port group {:?} has no switch", cfg.network)))?;
        let sw = c.properties(&switch, &["uuid"]).await?;
        NetworkBacking::Distributed {
            portgroup_key: pg.text("key"),
            switch_uuid: sw.text("uuid"),
        }
    } else {
        NetworkBacking::Standard {
            name: cfg.network.clone(),
            network: net.obj.clone(),
        }
    };
    Ok(Inventory {
        folder,
        pool,
        datastore,
        network,
    })
}
