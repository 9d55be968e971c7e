//! The scan VM's specs in vim25 XML (elements in WSDL order): the clone,
//! the reconfiguration with CPU, memory, NIC, annotation and the cloud-init
//! guestinfo, and the guest customization (LinuxPrep or Sysprep).

use base64::Engine;
use secrecy::ExposeSecret;

use super::inventory::Inventory;
use super::soap::MoRef;
use super::xml::{el, escape};
use crate::domain::JobId;

/// The annotation line that names the job (the janitor reads it back).
pub const JOB_TAG: &str = "vmscan-job=";

/// The annotation of everything vmscan creates for `job`.
pub fn annotation(job: JobId, what: &str) -> String {
    format!("{what} created by vmscan; deleted when the job ends.\n{JOB_TAG}{job}")
}

/// The job an annotation names.
pub fn job_of_annotation(a: &str) -> Option<JobId> {
    a.lines()
        .find_map(|l| l.trim().strip_prefix(JOB_TAG))
        .and_then(|j| j.trim().parse().ok())
}

/// The device type of a configured NIC type.
pub fn nic_device(nic_type: &str) -> Option<&'static str> {
    match nic_type {
        "vmxnet3" => Some("VirtualVmxnet3"),
        "e1000e" => Some("VirtualE1000e"),
        "e1000" => Some("VirtualE1000"),
        _ => None,
    }
}

/// `CloneVM_Task`'s arguments: a powered-off, non-template copy of the image
/// into the configured folder, pool and datastore.
pub fn clone_args(inv: &Inventory, name: &str) -> String {
    format!(
        "{}{}<spec><location>{}{}</location><template>false</template><powerOn>false</powerOn></spec>",
        inv.folder.el("folder"),
        el("name", name),
        inv.datastore.el("datastore"),
        inv.pool.el("pool"),
    )
}

/// What the scan VM is reconfigured with after the clone.
pub struct Hardware<'a> {
    pub guest_id: &'a str,
    pub annotation: &'a str,
    pub cpus: u32,
    pub memory_mib: u32,
    pub nic_device: &'a str,
    pub inv: &'a Inventory,
    /// `guestinfo.*` keys for cloud-init's VMware datasource.
    pub guestinfo: Vec<(String, String)>,
}

/// cloud-init's VMware guestinfo keys: user-data and meta-data, base64.
pub fn guestinfo(user_data: &str, instance_id: &str, hostname: &str) -> Vec<(String, String)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let meta = format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n");
    vec![
        ("guestinfo.metadata".into(), b64(&meta)),
        ("guestinfo.metadata.encoding".into(), "base64".into()),
        ("guestinfo.userdata".into(), b64(user_data)),
        ("guestinfo.userdata.encoding".into(), "base64".into()),
    ]
}

/// `ReconfigVM_Task`'s `spec`.
pub fn reconfig_args(h: &Hardware<'_>) -> String {
    let mut s = String::from("<spec>");
    s.push_str(&el("guestId", h.guest_id));
    s.push_str(&el("annotation", h.annotation));
    s.push_str(&format!("<numCPUs>{}</numCPUs>", h.cpus.max(1)));
    s.push_str(&format!("<memoryMB>{}</memoryMB>", h.memory_mib.max(4)));
    s.push_str(&format!(
        concat!(
            r#"<deviceChange><operation>add</operation><device xsi:type="{}"><key>-100</key>{}"#,
            "<connectable><startConnected>true</startConnected><allowGuestControl>true</allowGuestControl><connected>true</connected></connectable>",
            "<addressType>generated</addressType></device></deviceChange>"
        ),
        escape(h.nic_device),
        h.inv.network.xml()
    ));
    for (k, v) in &h.guestinfo {
        s.push_str(&option_value("extraConfig", k, v));
    }
    s.push_str("</spec>");
    s
}

/// One `OptionValue` with a string value.
pub fn option_value(name: &str, key: &str, value: &str) -> String {
    format!(
        r#"<{name} xsi:type="OptionValue">{}<value xsi:type="xsd:string">{}</value></{name}>"#,
        el("key", key),
        escape(value)
    )
}

/// `ReconfigVM_Task`'s `spec` that only annotates (the imported image).
pub fn annotate_args(annotation: &str) -> String {
    format!("<spec>{}</spec>", el("annotation", annotation))
}

/// The guest customization vCenter applies at first boot.
pub enum Customization<'a> {
    LinuxPrep {
        hostname: &'a str,
        domain: &'a str,
    },
    Sysprep {
        computer_name: &'a str,
        admin_password: Option<&'a secrecy::SecretString>,
        time_zone: i32,
    },
}

/// The single NIC gets its address by DHCP.
const DHCP_NIC: &str = r#"<nicSettingMap><adapter><ip xsi:type="CustomizationDhcpIpGenerator"></ip></adapter></nicSettingMap>"#;

/// `CustomizeVM_Task`'s `spec`.
pub fn customize_args(c: &Customization<'_>) -> String {
    match c {
        Customization::LinuxPrep { hostname, domain } => format!(
            concat!(
                r#"<spec><options xsi:type="CustomizationLinuxOptions"></options>"#,
                r#"<identity xsi:type="CustomizationLinuxPrep"><hostName xsi:type="CustomizationFixedName">{}</hostName>{}<hwClockUTC>true</hwClockUTC></identity>"#,
                "<globalIPSettings></globalIPSettings>{}</spec>"
            ),
            el("name", hostname),
            el("domain", domain),
            DHCP_NIC
        ),
        Customization::Sysprep {
            computer_name,
            admin_password,
            time_zone,
        } => {
            let password = admin_password
                .map(|p| {
                    format!(
                        "<password>{}<plainText>true</plainText></password>",
                        el("value", p.expose_secret())
                    )
                })
                .unwrap_or_default();
            format!(
                concat!(
                    r#"<spec><options xsi:type="CustomizationWinOptions"><changeSID>true</changeSID><deleteAccounts>false</deleteAccounts></options>"#,
                    r#"<identity xsi:type="CustomizationSysprep">"#,
                    "<guiUnattended>{}<timeZone>{}</timeZone><autoLogon>false</autoLogon><autoLogonCount>0</autoLogonCount></guiUnattended>",
                    r#"<userData><fullName>vmscan</fullName><orgName>vmscan</orgName><computerName xsi:type="CustomizationFixedName">{}</computerName><productId></productId></userData>"#,
                    "<identification><joinWorkgroup>WORKGROUP</joinWorkgroup></identification>",
                    "</identity><globalIPSettings></globalIPSettings>{}</spec>"
                ),
                password,
                time_zone,
                el("name", computer_name),
                DHCP_NIC
            )
        }
    }
}

/// A VM's reference from its id (`vm-42`).
pub fn vm_ref(id: &str) -> MoRef {
    MoRef::new("VirtualMachine", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_names_the_job() {
        let job = JobId::new();
        let a = annotation(job, "Scan VM");
        assert_eq!(job_of_annotation(&a), Some(job));
        assert_eq!(job_of_annotation("someone else's VM"), None);
    }

    #[test]
    fn guestinfo_is_base64_with_its_encoding_keys() {
        let g = guestinfo("#cloud-config\n", "vmscan-x", "host-1");
        let get = |k: &str| g.iter().find(|(a, _)| a == k).unwrap().1.clone();
        let dec = |s: String| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
        };
        assert_eq!(dec(get("guestinfo.userdata")), "#cloud-config\n");
        assert!(dec(get("guestinfo.metadata")).contains("local-hostname: host-1"));
        assert_eq!(get("guestinfo.userdata.encoding"), "base64");
    }

    #[test]
    fn sysprep_carries_the_computer_name_and_the_password_only_in_its_element() {
        let pw = secrecy::SecretString::from("P@ss<word>");
        let x = customize_args(&Customization::Sysprep {
            computer_name: "VMS-ABCDEF12345",
            admin_password: Some(&pw),
            time_zone: 85,
        });
        assert!(x.contains(
            r#"<computerName xsi:type="CustomizationFixedName"><name>VMS-ABCDEF12345</name>"#
        ));
        assert!(x.contains("<value>P@ss&lt;word&gt;</value>"));
        assert!(roxmltree::Document::parse(&format!(
            r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{x}</r>"#
        ))
        .is_ok());
    }
}
