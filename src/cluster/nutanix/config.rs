//! Settings of one Prism Central (`[cluster.nutanix.NAME]`).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Which generation of Prism Central's REST API vmscan speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// clustermgmt, networking, vmm and prism `v4.0` (GA from pc.2024.3),
    /// the APIs Nutanix recommends.
    #[default]
    V4,
    /// `/api/nutanix/v3`, legacy: for Prism Centrals older than pc.2024.3.
    V3,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V4 => "v4",
            ApiVersion::V3 => "v3",
        }
    }
}

/// How the image bytes reach Prism Central.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// vmscan streams the file: `PUT /api/nutanix/v3/images/{uuid}/file`
    /// (v3 only: v4 has no endpoint that takes an image's bytes).
    Upload,
    /// Prism pulls it from vmscan (`source_uri`): `GET {image_url_base}/api/v1/jobs/{id}/image`.
    Url,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NutanixConfig {
    /// `https://prism-central.example.com:9440`
    pub url: String,
    /// `"v4"` (default) or `"v3"` for a Prism Central without the v4 APIs.
    pub api_version: ApiVersion,
    pub username: String,
    /// Secret: `VMSCAN_CLUSTER__NUTANIX__<NAME>__PASSWORD`.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// Verify Prism's TLS certificate (against `ca_bundle` when set).
    pub verify_tls: bool,
    /// PEM file with the CA(s) that signed Prism's certificate.
    pub ca_bundle: Option<PathBuf>,
    /// The Prism Element cluster VMs run on, by name (`clusters/list`).
    pub cluster_name: String,
    /// The subnet the scan VM's NIC joins, by name (`subnets/list`).
    pub subnet_name: String,
    /// Unset: `url` with `api_version = "v4"` (its only way), `upload` with v3.
    pub image_source: Option<ImageSource>,
    /// With `image_source = "url"`: vmscan's address as Prism Central reaches
    /// it, e.g. `http://vmscan.example.com:8080`.
    pub image_url_base: String,
    /// The secret the pull URL's `key` is derived from; set by vmscan at
    /// start from its database (every replica agrees), never configured.
    #[serde(skip)]
    pub image_key_secret: Option<secrecy::SecretString>,
    /// Port of the guest's remote shell as vmscan reaches it (22 for SSH).
    pub ssh_port: u16,
    /// Port of WinRM on Windows guests.
    pub winrm_port: u16,
    /// Category `key: value` put on every VM and image vmscan creates
    /// (must exist in Prism). Empty key: the description carries the tag only.
    pub category_key: String,
    pub category_value: String,
    /// One API request (not an upload) may take this long.
    pub request_secs: u64,
    /// Time allowed for an upload: `upload_base_secs` plus one second per
    /// `upload_min_bytes_per_sec` bytes of image.
    pub upload_base_secs: u64,
    pub upload_min_bytes_per_sec: u64,
    /// How often a task is polled, and how long it may take before vmscan gives up.
    pub task_poll_ms: u64,
    pub task_timeout_secs: u64,
    /// Tries for a request failing with 5xx or a dropped connection, with
    /// back-off doubling from `retry_backoff_ms`. 401/403 are never retried.
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    /// How often the VM is polled for its power state and IP address.
    pub vm_poll_ms: u64,
    /// Size of the scan VM's disk; 0: the image's own size.
    pub disk_size_mib: u64,
    /// The Windows answer file (unattend.xml text; `{hostname}` is replaced,
    /// and `{admin_password}` by the job's own Administrator password, which
    /// vmscan then logs in with instead of `vm.winrm.password`)
    /// for sysprep guest customization, sent base64-encoded. Empty: Windows
    /// images boot as they are.
    pub sysprep_unattend_xml: String,
}

impl Default for NutanixConfig {
    fn default() -> Self {
        NutanixConfig {
            url: String::new(),
            api_version: ApiVersion::V4,
            username: String::new(),
            password: None,
            verify_tls: true,
            ca_bundle: None,
            cluster_name: String::new(),
            subnet_name: String::new(),
            image_source: None,
            image_url_base: String::new(),
            image_key_secret: None,
            ssh_port: 22,
            winrm_port: 5985,
            category_key: String::new(),
            category_value: String::new(),
            request_secs: 60,
            upload_base_secs: 300,
            upload_min_bytes_per_sec: 5 * 1024 * 1024,
            task_poll_ms: 2000,
            task_timeout_secs: 1800,
            max_attempts: 4,
            retry_backoff_ms: 1000,
            vm_poll_ms: 3000,
            disk_size_mib: 0,
            sysprep_unattend_xml: String::new(),
        }
    }
}

impl NutanixConfig {
    /// Where Prism Central pulls the job's image from vmscan. The key proves
    /// to vmscan that the pull is for this job (the route has no login:
    /// Prism Central sends no credentials).
    pub fn pull_url(&self, job: crate::domain::JobId) -> String {
        let key = self
            .image_key_secret
            .as_ref()
            .map(|s| {
                crate::identity::secret::image_key(
                    secrecy::ExposeSecret::expose_secret(s),
                    &job.to_string(),
                )
            })
            .unwrap_or_default();
        format!(
            "{}/api/v1/jobs/{}/image?key={key}",
            self.image_url_base.trim_end_matches('/'),
            job.as_uuid()
        )
    }

    /// The image source in effect: the configured one, else the API's own.
    pub fn image_source(&self) -> ImageSource {
        self.image_source.unwrap_or(match self.api_version {
            ApiVersion::V4 => ImageSource::Url,
            ApiVersion::V3 => ImageSource::Upload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_defaults_to_v4_pulling_by_url_and_v3_stays_selectable() {
        let v4: NutanixConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(
            (v4.api_version, v4.image_source()),
            (ApiVersion::V4, ImageSource::Url)
        );
        let v3: NutanixConfig =
            serde_json::from_value(serde_json::json!({"api_version": "v3"})).unwrap();
        assert_eq!(
            (v3.api_version, v3.image_source()),
            (ApiVersion::V3, ImageSource::Upload)
        );
        let pull: NutanixConfig =
            serde_json::from_value(serde_json::json!({"api_version": "v3", "image_source": "url"}))
                .unwrap();
        assert_eq!(pull.image_source(), ImageSource::Url);
        let err = serde_json::from_value::<NutanixConfig>(serde_json::json!({"api_version": "v5"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("v4") && err.contains("v3"), "{err}");
    }
}
