//! The configured clusters, by name. A job names its target cluster on
//! submit (options.cluster); without one it runs on the default.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::{nutanix, openstack, qemu, vsphere, ClusterError, ClusterProvider};
use crate::config::Config;

/// One configured cluster, as the dashboard and `GET /api/v1/clusters` list it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    /// "qemu", "nutanix", "openstack" or "vsphere".
    pub kind: &'static str,
    pub default: bool,
    /// The API it talks to ("Prism Central https://pc1:9440"), for telling
    /// several of one kind apart; never credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

pub struct Clusters {
    by_name: BTreeMap<String, (Arc<dyn ClusterProvider>, &'static str)>,
    default: String,
}

impl Clusters {
    /// Every cluster the configuration enables.
    pub fn from_config(cfg: &Config) -> Result<Clusters, ClusterError> {
        let mut all: Vec<(Arc<dyn ClusterProvider>, &'static str)> = Vec::new();
        if cfg.cluster.qemu.enabled {
            all.push((
                Arc::new(qemu::QemuProvider::new(
                    cfg.cluster.qemu.clone(),
                    &cfg.storage.data_dir,
                )?),
                "qemu",
            ));
        }
        for (name, c) in &cfg.cluster.nutanix {
            all.push((nutanix::provider(name, c.clone())?, "nutanix"));
        }
        for (name, c) in &cfg.cluster.openstack {
            all.push((
                Arc::new(openstack::OpenStackProvider::new(name, c.clone())?),
                "openstack",
            ));
        }
        for (name, c) in &cfg.cluster.vsphere {
            all.push((
                Arc::new(vsphere::VsphereProvider::new(name, c.clone())?),
                "vsphere",
            ));
        }
        Clusters::new(all, cfg.cluster.default.as_deref())
    }

    /// The clusters the configuration names, without building providers
    /// (the CLI checks a submission with it). Names match [`ClusterProvider::name`].
    pub fn configured(cfg: &Config) -> Vec<ClusterInfo> {
        let mut all: Vec<(String, &'static str, Option<String>)> = Vec::new();
        if cfg.cluster.qemu.enabled {
            all.push((qemu::PROVIDER_NAME.to_string(), "qemu", None));
        }
        all.extend(cfg.cluster.nutanix.iter().map(|(n, c)| {
            (
                nutanix::provider_name(n),
                "nutanix",
                Some(nutanix::endpoint(c)),
            )
        }));
        all.extend(cfg.cluster.openstack.iter().map(|(n, c)| {
            (
                openstack::provider_name(n),
                "openstack",
                Some(openstack::endpoint(c)),
            )
        }));
        all.extend(cfg.cluster.vsphere.iter().map(|(n, c)| {
            (
                vsphere::provider_name(n),
                "vsphere",
                Some(vsphere::endpoint(c)),
            )
        }));
        let default = cfg
            .cluster
            .default
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .or_else(|| all.first().map(|(n, _, _)| n.clone()));
        all.into_iter()
            .map(|(name, kind, endpoint)| ClusterInfo {
                default: Some(&name) == default.as_ref(),
                name,
                kind,
                endpoint,
            })
            .collect()
    }

    /// From given providers (tests); `default` None: the first one.
    pub fn new(
        providers: Vec<(Arc<dyn ClusterProvider>, &'static str)>,
        default: Option<&str>,
    ) -> Result<Clusters, ClusterError> {
        let mut by_name = BTreeMap::new();
        let mut first = None;
        for (p, kind) in providers {
            let name = p.name();
            first.get_or_insert_with(|| name.clone());
            by_name.insert(name, (p, kind));
        }
        let default = match default.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => d.to_string(),
            None => first.ok_or_else(|| {
                ClusterError::Local(
                    "no cluster is configured: enable [cluster.qemu] or add [cluster.nutanix.NAME] / [cluster.openstack.NAME] / [cluster.vsphere.NAME]".into(),
                )
            })?,
        };
        if !by_name.contains_key(&default) {
            return Err(ClusterError::Local(format!(
                "cluster.default = {default:?} is not a configured cluster (configured: {})",
                by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Clusters { by_name, default })
    }

    /// Only this provider (tests, one-cluster set-ups).
    pub fn single(p: Arc<dyn ClusterProvider>, kind: &'static str) -> Clusters {
        let name = p.name();
        let mut by_name = BTreeMap::new();
        by_name.insert(name.clone(), (p, kind));
        Clusters {
            by_name,
            default: name,
        }
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn ClusterProvider>> {
        self.by_name.get(name).map(|(p, _)| p.clone())
    }

    /// The provider a job runs on: the one it names, else the default.
    pub fn for_job(
        &self,
        options: &serde_json::Value,
    ) -> Result<Arc<dyn ClusterProvider>, ClusterError> {
        let name = options
            .get("cluster")
            .and_then(|c| c.as_str())
            .unwrap_or(&self.default);
        self.get(name).ok_or_else(|| {
            ClusterError::Local(format!(
                "the job asks for cluster {name:?}, which is no longer configured (configured: {})",
                self.names().join(", ")
            ))
        })
    }

    /// Checks a submitted cluster name.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.by_name.contains_key(name) {
            Ok(())
        } else {
            Err(format!(
                "cluster: {name:?} is not a configured cluster (choose one of: {})",
                self.names().join(", ")
            ))
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub fn info(&self) -> Vec<ClusterInfo> {
        self.by_name
            .iter()
            .map(|(name, (p, kind))| ClusterInfo {
                name: name.clone(),
                kind,
                default: *name == self.default,
                endpoint: p.endpoint(),
            })
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<dyn ClusterProvider>> {
        self.by_name.values().map(|(p, _)| p.clone()).collect()
    }
}
