//! What a person sends to make a watch, checked field by field with a
//! specific message. The scan template is returned as a submission for the
//! caller to validate as the owner (the web layer as the login, the CLI as
//! the shell user), like any other submission.

use serde::Deserialize;
use url::Url;

use super::WatchKind;
use crate::config::WatchConfig;
use crate::domain::{redact_url, ChecksumSpec};
use crate::store::watch::{NewWatch, ScanTemplate};
use crate::store::NewJob;
use crate::submit::{blank_to_none, SubmitRequest};

/// Unknown fields are refused, so a typo does not silently make a
/// different watch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    pub url: Option<String>,
    /// url (default), pointer or listing.
    pub kind: Option<String>,
    pub pattern: Option<String>,
    /// `file:URL` of a SUMS file (or the URL in `sums_url`).
    pub checksum: Option<String>,
    pub sums_url: Option<String>,
    /// Seconds, or `30m`, `6h`, `1d`.
    pub interval: Option<serde_json::Value>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub cluster: Option<String>,
    pub os: Option<String>,
    pub note: Option<String>,
    pub email: Option<String>,
    /// Grow each scanned image's disk to this size (as for a submission).
    pub size: Option<serde_json::Value>,
}

/// The watch's own fields, checked.
pub struct Checked {
    pub url: Url,
    pub kind: WatchKind,
    pub sums_url: Option<Url>,
    pub interval_secs: u64,
}

impl Checked {
    /// The watch, with the template its owner's submission was validated into.
    pub fn into_watch(self, owner: &str, scan: NewJob) -> NewWatch {
        NewWatch {
            owner: owner.to_string(),
            url: self.url.to_string(),
            kind: self.kind,
            sums_url: self.sums_url.map(|u| u.to_string()),
            interval_secs: self.interval_secs as i64,
            template: ScanTemplate {
                requested_by: scan.requested_by,
                email: scan.email,
                note: scan.note,
                options: scan.options,
            },
        }
    }
}

/// `30m`, `6h`, `1d`, `90s` or plain seconds.
pub fn parse_interval(v: &serde_json::Value) -> Result<u64, String> {
    let bad = || format!("interval: {v} is not a duration (seconds, or 30m, 6h, 1d)");
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().map_err(|_| bad())?;
            let mult = match unit.trim() {
                "" | "s" => 1,
                "m" | "min" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => return Err(bad()),
            };
            n.checked_mul(mult).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

fn http_url(field: &str, s: &str) -> Result<Url, String> {
    let u = Url::parse(s.trim()).map_err(|e| format!("{field}: {s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{field}: a watch checks http:// or https:// sources (with conditional requests); {} is not one",
            redact_url(u.as_str())
        ));
    }
    Ok(u)
}

/// Checks the watch's fields; returns them and the submission each change
/// files (its URL stands in for the images the checks will find).
pub fn check(req: WatchRequest, cfg: &WatchConfig) -> Result<(Checked, SubmitRequest), String> {
    let url = blank_to_none(req.url)
        .ok_or("url: missing; give the image URL, a pointer or a directory listing")?;
    let url = http_url("url", &url)?;
    let kind = WatchKind::parse(
        blank_to_none(req.kind).as_deref().unwrap_or("url"),
        req.pattern.as_deref(),
    )?;
    if kind == WatchKind::Url && url.path().ends_with('/') {
        return Err(
            "url: ends in '/', so it names no file; for a directory listing use kind \"listing\" with a pattern".into(),
        );
    }
    let sums = match (blank_to_none(req.checksum), blank_to_none(req.sums_url)) {
        (Some(_), Some(_)) => {
            return Err("checksum: give either checksum (file:URL) or sums_url, not both".into())
        }
        (Some(c), None) => match c.parse::<ChecksumSpec>() {
            Ok(ChecksumSpec::File { url }) => Some(url),
            Ok(ChecksumSpec::Digest(_)) => return Err(
                "checksum: a watched image changes, so a fixed digest would not match its next version; give the SUMS file as file:URL".into(),
            ),
            Err(e) => return Err(format!("checksum: {e}")),
        },
        (None, s) => s,
    };
    let sums_url = sums.map(|s| http_url("sums_url", &s)).transpose()?;
    if blank_to_none(req.version).is_some() {
        return Err(
            "version: each new image a watch finds is published as a new version (from its file name, else the date), so a watch takes no fixed version".into(),
        );
    }
    let interval_secs = match &req.interval {
        None | Some(serde_json::Value::Null) => cfg.default_interval_secs,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => cfg.default_interval_secs,
        Some(v) => parse_interval(v)?,
    };
    if interval_secs < cfg.min_interval_secs {
        return Err(format!(
            "interval: {interval_secs} s is shorter than the shortest allowed ({} s, watch.min_interval_secs)",
            cfg.min_interval_secs
        ));
    }
    let probe = match kind {
        WatchKind::Url => url.clone(),
        _ => url.join("watched-image").map_err(|e| format!("url: {e}"))?,
    };
    let scan = SubmitRequest {
        url: Some(probe.to_string()),
        checksum: None,
        email: req.email,
        note: req.note,
        requested_by: None,
        name: req.name,
        version: None,
        description: req.description,
        cluster: req.cluster,
        os: req.os,
        size: req.size,
        options: None,
    };
    Ok((
        Checked {
            url,
            kind,
            sums_url,
            interval_secs,
        },
        scan,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intervals_read_like_people_write_them() {
        assert_eq!(parse_interval(&json!(90)), Ok(90));
        assert_eq!(parse_interval(&json!("30m")), Ok(1800));
        assert_eq!(parse_interval(&json!("6h")), Ok(21600));
        assert_eq!(parse_interval(&json!("1d")), Ok(86400));
        assert_eq!(parse_interval(&json!("45")), Ok(45));
        assert!(parse_interval(&json!("soon"))
            .unwrap_err()
            .starts_with("interval:"));
        assert!(parse_interval(&json!("5w")).is_err());
        assert!(parse_interval(&json!(-1)).is_err());
        assert!(parse_interval(&json!("99999999999999999999d")).is_err());
    }

    fn req(url: &str) -> WatchRequest {
        WatchRequest {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn every_field_is_checked_with_its_name() {
        let cfg = WatchConfig::default();
        let err = |r: WatchRequest| check(r, &cfg).err().unwrap();
        assert!(err(WatchRequest::default()).starts_with("url: missing"));
        assert!(err(req("file:///srv/a.raw")).contains("http:// or https://"));
        assert!(err(req("https://h.example/dir/")).contains("kind \"listing\""));
        let mut r = req("https://h.example/a.raw");
        r.checksum =
            Some("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into());
        assert!(err(r).contains("fixed digest"));
        let mut r = req("https://h.example/a.raw");
        r.version = Some("1".into());
        assert!(err(r).starts_with("version:"));
        let mut r = req("https://h.example/a.raw");
        r.interval = Some(json!(5));
        assert!(err(r).contains("shorter than the shortest allowed (300 s"));
        let mut r = req("https://h.example/rocky/");
        r.kind = Some("listing".into());
        assert!(err(r).starts_with("pattern:"));

        let mut r = req("https://h.example/rocky/");
        r.kind = Some("listing".into());
        r.pattern = Some("Rocky-*.qcow2".into());
        r.checksum = Some("file:https://h.example/rocky/SHA256SUMS".into());
        r.interval = Some(json!("6h"));
        let (c, scan) = check(r, &cfg).unwrap();
        assert_eq!(c.interval_secs, 21600);
        assert_eq!(
            c.sums_url.unwrap().as_str(),
            "https://h.example/rocky/SHA256SUMS"
        );
        assert_eq!(scan.url.unwrap(), "https://h.example/rocky/watched-image");
    }
}
