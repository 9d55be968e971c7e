//! VMs (`vmm` `ahv/config/vms`): created powered off with a disk cloned
//! from the image, one NIC on the subnet and the guest customization, then
//! powered on by its own action; addresses come from the NIC's learned
//! (else assigned) IPv4.

use serde::{Deserialize, Serialize};

use super::super::Customization;

pub const VMS: &str = "/api/vmm/v4.0/ahv/config/vms";
/// The `rel` of a VM in a task's `entitiesAffected` (terraform `utils/constants.go`).
pub const VM_REL: &str = "vmm:ahv:config:vm";

/// A reference by extId (`cluster`, `subnet`, `categories[]`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ext_id: String,
}

/// The body of `POST ahv/config/vms` (`vmm.v4.ahv.config.Vm`). No power
/// state: "Cannot specify power state as ON during VM creation" (packer).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewVm {
    pub name: String,
    pub description: String,
    pub cluster: Reference,
    pub num_sockets: u32,
    pub num_cores_per_socket: u32,
    pub num_threads_per_core: u32,
    pub memory_size_bytes: u64,
    pub boot_config: LegacyBoot,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_customization: Option<GuestCustomization>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<Reference>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyBoot {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    boot_order: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    disk_address: DiskAddress,
    backing_info: VmDisk,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DiskAddress {
    bus_type: &'static str,
    index: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VmDisk {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    /// Omitted: the image's own size.
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_size_bytes: Option<u64>,
    data_source: DataSource,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DataSource {
    reference: ImageReference,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageReference {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    image_ext_id: String,
}

/// A NIC with the v4.0 fields (`backingInfo`, `networkInfo`), which later
/// revisions keep (CAPX still creates NICs with them).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    backing_info: EmulatedNic,
    network_info: NicNetworkInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmulatedNic {
    model: &'static str,
    is_connected: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NicNetworkInfo {
    nic_type: &'static str,
    vlan_mode: &'static str,
    subnet: Reference,
}

#[derive(Debug, Serialize)]
pub struct GuestCustomization {
    config: GuestConfig,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum GuestConfig {
    CloudInit {
        #[serde(rename = "$objectType")]
        object_type: &'static str,
        #[serde(rename = "datasourceType")]
        datasource_type: &'static str,
        #[serde(rename = "cloudInitScript")]
        script: Script,
    },
    Sysprep {
        #[serde(rename = "$objectType")]
        object_type: &'static str,
        #[serde(rename = "installType")]
        install_type: &'static str,
        #[serde(rename = "sysprepScript")]
        script: Script,
    },
}

/// `Userdata` / `Unattendxml`: the base64 text.
#[derive(Debug, Serialize)]
struct Script {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    value: String,
}

impl GuestCustomization {
    pub fn new(c: Customization) -> GuestCustomization {
        let config = match c {
            Customization::CloudInit { user_data } => GuestConfig::CloudInit {
                object_type: "vmm.v4.ahv.config.CloudInit",
                datasource_type: "CONFIG_DRIVE_V2",
                script: Script {
                    object_type: "vmm.v4.ahv.config.Userdata",
                    value: user_data,
                },
            },
            Customization::Sysprep { unattend_xml } => GuestConfig::Sysprep {
                object_type: "vmm.v4.ahv.config.Sysprep",
                install_type: "PREPARED",
                script: Script {
                    object_type: "vmm.v4.ahv.config.Unattendxml",
                    value: unattend_xml,
                },
            },
        };
        GuestCustomization { config }
    }
}

/// What a new VM is made of.
pub struct VmParts {
    pub name: String,
    pub description: String,
    pub cluster: String,
    pub subnet: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_size_mib: u64,
    pub customization: Option<Customization>,
    pub categories: Vec<String>,
}

impl NewVm {
    pub fn new(p: VmParts) -> NewVm {
        NewVm {
            name: p.name,
            description: p.description,
            cluster: Reference { ext_id: p.cluster },
            num_sockets: p.cpus.max(1),
            num_cores_per_socket: 1,
            num_threads_per_core: 1,
            memory_size_bytes: u64::from(p.memory_mib.max(256)) << 20,
            boot_config: LegacyBoot {
                object_type: "vmm.v4.ahv.config.LegacyBoot",
                boot_order: vec!["DISK"],
            },
            disks: vec![Disk {
                disk_address: DiskAddress {
                    bus_type: "SCSI",
                    index: 0,
                },
                backing_info: VmDisk {
                    object_type: "vmm.v4.ahv.config.VmDisk",
                    disk_size_bytes: (p.disk_size_mib > 0).then_some(p.disk_size_mib << 20),
                    data_source: DataSource {
                        reference: ImageReference {
                            object_type: "vmm.v4.ahv.config.ImageReference",
                            image_ext_id: p.image,
                        },
                    },
                },
            }],
            nics: vec![Nic {
                backing_info: EmulatedNic {
                    model: "VIRTIO",
                    is_connected: true,
                },
                network_info: NicNetworkInfo {
                    nic_type: "NORMAL_NIC",
                    vlan_mode: "ACCESS",
                    subnet: Reference { ext_id: p.subnet },
                },
            }],
            guest_customization: p.customization.map(GuestCustomization::new),
            categories: p
                .categories
                .into_iter()
                .map(|ext_id| Reference { ext_id })
                .collect(),
        }
    }
}

/// A VM as Prism Central reports it: the fields vmscan reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    pub ext_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `ON`, `OFF`, `PAUSED`, `UNDETERMINED`.
    #[serde(default)]
    pub power_state: Option<String>,
    #[serde(default)]
    pub nics: Vec<NicState>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicState {
    /// v4.0 (deprecated from v4.1, still filled).
    #[serde(default)]
    network_info: Option<NetworkState>,
    /// v4.1+ (`VirtualEthernetNicNetworkInfo`).
    #[serde(default)]
    nic_network_info: Option<NetworkState>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkState {
    #[serde(default)]
    ipv4_info: Option<Ipv4Info>,
    #[serde(default)]
    ipv4_config: Option<Ipv4Config>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipv4Info {
    #[serde(default)]
    learned_ip_addresses: Vec<IpAddress>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipv4Config {
    #[serde(default)]
    ip_address: Option<IpAddress>,
}

#[derive(Clone, Debug, Deserialize)]
struct IpAddress {
    value: String,
}

impl Vm {
    pub fn is_on(&self) -> bool {
        self.power_state.as_deref() == Some("ON")
    }

    /// The guest-learned IPv4 of the first NIC that has one, else an
    /// IPAM-assigned one; `nicNetworkInfo` before `networkInfo` (CAPX
    /// `getIpsFromIpv4Info`, packer `WaitForIP`).
    pub fn address(&self) -> Option<String> {
        let infos = || {
            self.nics.iter().flat_map(|n| {
                [n.nic_network_info.as_ref(), n.network_info.as_ref()]
                    .into_iter()
                    .flatten()
            })
        };
        let learned = infos().find_map(|i| {
            i.ipv4_info
                .as_ref()
                .and_then(|v| v.learned_ip_addresses.first())
                .map(|a| a.value.clone())
        });
        learned.or_else(|| {
            infos().find_map(|i| {
                i.ipv4_config
                    .as_ref()
                    .and_then(|c| c.ip_address.as_ref())
                    .map(|a| a.value.clone())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn learned_addresses_come_before_assigned_ones() {
        let vm: Vm = serde_json::from_value(json!({"extId": "v", "name": "n", "powerState": "ON",
            "nics": [
                {"networkInfo": {"ipv4Config": {"ipAddress": {"value": "10.0.0.9", "prefixLength": 32}}}},
                {"nicNetworkInfo": {"$objectType": "vmm.v4.ahv.config.VirtualEthernetNicNetworkInfo",
                    "ipv4Info": {"learnedIpAddresses": [{"value": "10.0.0.5", "prefixLength": 32}]}}}
            ]}))
        .unwrap();
        assert!(vm.is_on());
        assert_eq!(vm.address().as_deref(), Some("10.0.0.5"));
        let assigned: Vm = serde_json::from_value(json!({"extId": "v", "nics": [
            {"networkInfo": {"ipv4Config": {"ipAddress": {"value": "10.0.0.9"}}}}]}))
        .unwrap();
        assert_eq!(assigned.address().as_deref(), Some("10.0.0.9"));
        let none: Vm = serde_json::from_value(json!({"extId": "v", "nics": [{}]})).unwrap();
        assert_eq!(none.address(), None);
    }

    #[test]
    fn the_create_body_names_its_oneof_members_by_object_type() {
        let body = NewVm::new(VmParts {
            name: "vmscan-x".into(),
            description: "vmscan job x".into(),
            cluster: "pe".into(),
            subnet: "sn".into(),
            image: "img".into(),
            cpus: 2,
            memory_mib: 512,
            disk_size_mib: 0,
            customization: Some(Customization::CloudInit {
                user_data: "I2Nsb3VkLWNvbmZpZw==".into(),
            }),
            categories: vec![],
        });
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["memorySizeBytes"], 512u64 << 20);
        assert_eq!(
            v["disks"][0]["backingInfo"]["dataSource"]["reference"],
            json!({"$objectType": "vmm.v4.ahv.config.ImageReference", "imageExtId": "img"})
        );
        assert!(v["disks"][0]["backingInfo"].get("diskSizeBytes").is_none());
        assert_eq!(v["nics"][0]["networkInfo"]["subnet"]["extId"], "sn");
        assert_eq!(
            v["guestCustomization"]["config"],
            json!({"$objectType": "vmm.v4.ahv.config.CloudInit", "datasourceType": "CONFIG_DRIVE_V2",
                   "cloudInitScript": {"$objectType": "vmm.v4.ahv.config.Userdata", "value": "I2Nsb3VkLWNvbmZpZw=="}})
        );
        assert!(v.get("powerState").is_none() && v.get("categories").is_none());
        assert!(!v.to_string().contains("ItemDiscriminator"));
    }
}
