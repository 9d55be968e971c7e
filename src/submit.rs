//! Turning what a person submitted into a job, with a specific message for
//! every problem. Shared by the API, the dashboard and the CLI.

use serde::Deserialize;
use serde_json::json;

use crate::cluster::ClusterInfo;
use crate::domain::{ChecksumSpec, DiskSize, OsChoice, SourceUrl};
use crate::store::NewJob;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SubmitError(pub String);

pub fn blank_to_none(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// What a submitter sends. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SubmitRequest {
    pub url: Option<String>,
    pub checksum: Option<String>,
    pub email: Option<String>,
    pub note: Option<String>,
    pub requested_by: Option<String>,
    /// Image name, version and description for publishing; stored in `options`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Target cluster ("qemu-local", "nutanix:pc1"…); default: the configured default.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Guest OS family ("linux", "windows", or "auto": detected from the
    /// image's partitions): picks SSH or WinRM. Default: auto.
    #[serde(default)]
    pub os: Option<String>,
    /// Grow the image's virtual disk to this size before upload: bytes, or
    /// a string with a binary unit ("20G" = 20 GiB, as qemu-img reads it).
    #[serde(default)]
    pub size: Option<serde_json::Value>,
    #[serde(default)]
    pub options: Option<serde_json::Value>,
}

fn check_email(e: &str) -> Result<(), SubmitError> {
    let ok = e.len() <= 254
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(SubmitError(format!("email: {e:?} is not an email address")))
    }
}

/// The "also tell" addresses of a submission: `email` may be the
/// requester's own address (nothing extra), or a comma-separated list of
/// addresses in `domains`. Scan email never goes to an arbitrary address.
pub fn also_notify(
    email: Option<String>,
    own: Option<&str>,
    domains: &[String],
) -> Result<Vec<String>, SubmitError> {
    let mut out = Vec::new();
    for addr in email.iter().flat_map(|e| e.split(',')).map(str::trim) {
        if addr.is_empty() || own.is_some_and(|o| o.eq_ignore_ascii_case(addr)) {
            continue;
        }
        check_email(addr)?;
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Err(SubmitError(if domains.is_empty() {
                format!(
                    "email: scan email goes to your own address and the configured admins; {addr} cannot be added (no auth.notify_domains are configured)"
                )
            } else {
                format!(
                    "email: {addr} is not in a domain scan email may go to ({})",
                    domains.join(", ")
                )
            }));
        }
        if !out.iter().any(|o: &String| o.eq_ignore_ascii_case(addr)) {
            out.push(addr.to_string());
        }
    }
    if out.len() > 10 {
        return Err(SubmitError("email: at most 10 extra addresses".into()));
    }
    Ok(out)
}

/// Parses and validates a submission against the configured clusters;
/// every problem gets a specific message.
pub fn validate(req: SubmitRequest, clusters: &[ClusterInfo]) -> Result<NewJob, SubmitError> {
    let url = blank_to_none(req.url)
        .ok_or_else(|| SubmitError("url: missing; paste the image URL".into()))?;
    let url: SourceUrl = url
        .parse()
        .map_err(|e: crate::domain::SourceUrlError| SubmitError(format!("url: {e}")))?;
    let checksum = blank_to_none(req.checksum)
        .map(|c| c.parse::<ChecksumSpec>())
        .transpose()
        .map_err(|e| SubmitError(format!("checksum: {e}")))?;
    let email = blank_to_none(req.email);
    if let Some(e) = &email {
        check_email(e)?;
    }
    let note = blank_to_none(req.note);
    if note.as_ref().is_some_and(|n| n.chars().count() > 4000) {
        return Err(SubmitError("note: longer than 4000 characters".into()));
    }
    let requested_by = blank_to_none(req.requested_by).or_else(|| email.clone());
    if requested_by
        .as_ref()
        .is_some_and(|r| r.chars().count() > 254)
    {
        return Err(SubmitError(
            "requested_by: longer than 254 characters".into(),
        ));
    }
    let mut options = match req.options {
        None | Some(serde_json::Value::Null) => json!({}),
        Some(o @ serde_json::Value::Object(_)) => o,
        Some(_) => return Err(SubmitError("options: must be a JSON object".into())),
    };
    // Set by vmscan (from the login, the manifest), never by the body.
    if let Some(o) = options.as_object_mut() {
        o.remove("also_notify");
        o.remove("batch_key");
    }
    for (field, value) in [("name", req.name), ("version", req.version)] {
        if let Some(v) = blank_to_none(value) {
            crate::artifacts::check_label(field, &v).map_err(SubmitError)?;
            options[field] = json!(v);
        }
    }
    // Top-level fields win over the same keys in `options`; both are checked.
    if let Some(c) = blank_to_none(req.cluster) {
        options["cluster"] = json!(c);
    }
    if let Some(o) = blank_to_none(req.os) {
        options["os"] = json!(o);
    }
    let cluster = match options.get("cluster") {
        None | Some(serde_json::Value::Null) => clusters
            .iter()
            .find(|c| c.default)
            .map(|c| c.name.clone())
            .ok_or_else(|| SubmitError("cluster: no cluster is configured".into()))?,
        Some(serde_json::Value::String(c)) => {
            let c = c.trim().to_string();
            if !clusters.iter().any(|k| k.name == c) {
                return Err(SubmitError(format!(
                    "cluster: {c:?} is not a configured cluster (choose one of: {})",
                    clusters
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            c
        }
        Some(_) => return Err(SubmitError("cluster: must be a string".into())),
    };
    options["cluster"] = json!(cluster);
    let os = match options.get("os") {
        None | Some(serde_json::Value::Null) => OsChoice::default(),
        Some(serde_json::Value::String(o)) => o
            .parse::<OsChoice>()
            .map_err(|e| SubmitError(format!("os: {e}")))?,
        Some(_) => {
            return Err(SubmitError(
                "os: must be a string (auto, linux or windows)".into(),
            ))
        }
    };
    options["os"] = json!(os.as_str());
    match req.size {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => {}
        Some(v) => options["size"] = v,
    }
    if let Some(v) = options.get("size").filter(|v| !v.is_null()) {
        let size = DiskSize::from_json(v).map_err(|e| SubmitError(format!("size: {e}")))?;
        options["size"] = json!(size.bytes());
    }
    if let Some(d) = blank_to_none(req.description) {
        if d.chars().count() > 1000 {
            return Err(SubmitError(
                "description: longer than 1000 characters".into(),
            ));
        }
        if d.chars().any(char::is_control) {
            return Err(SubmitError(
                "description: control characters (line breaks, tabs) are not allowed".into(),
            ));
        }
        options["description"] = json!(d);
    }
    Ok(NewJob {
        url,
        checksum,
        requested_by,
        email,
        note,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str) -> SubmitRequest {
        SubmitRequest {
            url: Some(url.into()),
            checksum: None,
            email: None,
            note: None,
            requested_by: None,
            name: None,
            version: None,
            description: None,
            cluster: None,
            os: None,
            size: None,
            options: None,
        }
    }

    fn clusters() -> Vec<ClusterInfo> {
        vec![
            ClusterInfo {
                name: "qemu-local".into(),
                kind: "qemu",
                default: true,
                endpoint: None,
            },
            ClusterInfo {
                name: "nutanix:pc1".into(),
                kind: "nutanix",
                default: false,
                endpoint: None,
            },
        ]
    }

    fn validate(r: SubmitRequest) -> Result<NewJob, SubmitError> {
        super::validate(r, &clusters())
    }

    #[test]
    fn the_cluster_and_os_are_checked_and_recorded() {
        let job = validate(req("https://h.example/a.qcow2")).unwrap();
        assert_eq!(job.options["cluster"], "qemu-local");
        assert_eq!(job.options["os"], "auto");
        let mut r = req("https://h.example/a.qcow2");
        r.cluster = Some("nutanix:pc1".into());
        r.os = Some("Windows".into());
        let job = validate(r).unwrap();
        assert_eq!(job.options["cluster"], "nutanix:pc1");
        assert_eq!(job.options["os"], "windows");
        let mut r = req("https://h.example/a.qcow2");
        r.options = Some(json!({"cluster": "openstack:nope"}));
        assert_eq!(
            validate(r).unwrap_err().0,
            "cluster: \"openstack:nope\" is not a configured cluster (choose one of: qemu-local, nutanix:pc1)"
        );
        let mut r = req("https://h.example/a.qcow2");
        r.os = Some("beos".into());
        assert!(validate(r)
            .unwrap_err()
            .0
            .starts_with("os: \"beos\" is not an OS family"));
    }

    #[test]
    fn the_disk_size_is_recorded_in_bytes() {
        let mut r = req("https://h.example/a.qcow2");
        r.size = Some(json!("20G"));
        assert_eq!(validate(r).unwrap().options["size"], json!(20u64 << 30));
        let mut r = req("https://h.example/a.qcow2");
        r.options = Some(json!({"size": 1048576}));
        assert_eq!(validate(r).unwrap().options["size"], json!(1048576));
        let mut r = req("https://h.example/a.qcow2");
        r.size = Some(json!(""));
        assert!(validate(r).unwrap().options.get("size").is_none());
        let mut r = req("https://h.example/a.qcow2");
        r.size = Some(json!("20GB"));
        assert!(validate(r)
            .unwrap_err()
            .0
            .starts_with("size: \"20GB\" is ambiguous"));
    }

    #[test]
    fn image_name_and_version_land_in_options() {
        let mut r = req("https://h.example/a.qcow2");
        r.name = Some("rocky-9".into());
        r.version = Some("2026.11.1".into());
        r.description = Some("Rocky 9, hardened".into());
        let job = validate(r).unwrap();
        assert_eq!(job.options["name"], "rocky-9");
        assert_eq!(job.options["version"], "2026.11.1");
        assert_eq!(job.options["description"], "Rocky 9, hardened");
        let mut r = req("https://h.example/a.qcow2");
        r.name = Some("../etc".into());
        assert!(validate(r)
            .unwrap_err()
            .0
            .starts_with("name: \"../etc\" contains '/'"));
    }

    #[test]
    fn explains_each_bad_field() {
        assert_eq!(
            validate(req("")).unwrap_err().0,
            "url: missing; paste the image URL"
        );
        assert!(validate(req("ftp://x/y.img"))
            .unwrap_err()
            .0
            .starts_with("url: unsupported URL scheme"));
        let mut r = req("https://h.example/a.qcow2");
        r.checksum = Some("sha256:12".into());
        assert!(validate(r)
            .unwrap_err()
            .0
            .starts_with("checksum: a sha256 checksum has 64 hex digits"));
        let mut r = req("https://h.example/a.qcow2");
        r.email = Some("not-an-email".into());
        assert!(validate(r).unwrap_err().0.starts_with("email:"));
    }

    #[test]
    fn extra_addresses_only_in_configured_domains() {
        let d = vec!["example.com".to_string()];
        assert_eq!(
            also_notify(Some("ann@example.com".into()), Some("ann@example.com"), &[]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            also_notify(Some("x@example.com, y@EXAMPLE.com".into()), None, &d).unwrap(),
            vec!["x@example.com", "y@EXAMPLE.com"]
        );
        let e = also_notify(Some("evil@attacker.test".into()), None, &d).unwrap_err();
        assert!(e.0.contains("not in a domain"), "{e}");
        assert!(also_notify(Some("evil@attacker.test".into()), None, &[]).is_err());
        let mut r = req("https://h.example/a.qcow2");
        r.options = Some(json!({"also_notify": ["evil@attacker.test"]}));
        assert!(validate(r).unwrap().options.get("also_notify").is_none());
    }

    #[test]
    fn the_requester_defaults_to_the_email() {
        let mut r = req("https://h.example/a.qcow2");
        r.email = Some("ann@example.com".into());
        let job = validate(r).unwrap();
        assert_eq!(job.requested_by.as_deref(), Some("ann@example.com"));
    }
}
