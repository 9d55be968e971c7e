//! Turning what a person submitted into a job, with a specific message for
//! every problem. Shared by the API, the dashboard and the CLI.

use serde::Deserialize;
use serde_json::json;

use crate::domain::{ChecksumSpec, SourceUrl};
use crate::store::NewJob;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SubmitError(pub String);

pub fn blank_to_none(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// What a submitter sends. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
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

/// Parses and validates a submission; every problem gets a specific message.
pub fn validate(req: SubmitRequest) -> Result<NewJob, SubmitError> {
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
    for (field, value) in [("name", req.name), ("version", req.version)] {
        if let Some(v) = blank_to_none(value) {
            crate::artifacts::check_label(field, &v).map_err(SubmitError)?;
            options[field] = json!(v);
        }
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
            options: None,
        }
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
    fn the_requester_defaults_to_the_email() {
        let mut r = req("https://h.example/a.qcow2");
        r.email = Some("ann@example.com".into());
        let job = validate(r).unwrap();
        assert_eq!(job.requested_by.as_deref(), Some("ann@example.com"));
    }
}
