//! Batch manifests: a set of images submitted together, in the shape image
//! builders already write, as YAML or JSON. Every problem is collected with
//! its image key and field, so one answer lists them all.
//!
//! The shape is gen-vm-image's `architecture.yml` (ucphhpc/gen-vm-image,
//! `examples/download-cloud-image-checksum-example.yml`):
//!
//! ```yaml
//! owner: the-owner-name
//! images:
//!   image-1:
//!     name: rocky
//!     version: 9.4
//!     format: qcow2
//!     size: 120G
//!     input:
//!       url: https://…/Rocky-9-GenericCloud-Base.latest.x86_64.qcow2
//!       format: qcow2
//!       checksum: {type: sha256, value: 3927…}
//! ```
//!
//! Also accepted: the image's URL as `get_url` or `url` beside `name`, a
//! `checksum` there too (`{type, value}` or vmscan's `sha256:…` / `file:URL`),
//! and vmscan's own per-image fields `cluster`, `os`, `description`, `note`.
//! gen-vm-image's build-only fields (`format`, `input.format`, `output`,
//! `extra_kwargs`) are read and ignored, with a warning: the target cluster
//! decides the disk format. `input.path` (a file on the builder's machine)
//! is an error: vmscan fetches URLs.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ChecksumAlgo, ChecksumSpec};
use crate::submit::SubmitRequest;

/// The most images one manifest may hold.
pub const MAX_IMAGES: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Yaml,
    Json,
}

impl Syntax {
    /// From a Content-Type (or a file name's extension): JSON when it says
    /// so, YAML otherwise (YAML is what builders write).
    pub fn from_content_type(ct: &str) -> Option<Syntax> {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            "application/json" => Some(Syntax::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
                Some(Syntax::Yaml)
            }
            _ => None,
        }
    }

    pub fn from_path(path: &std::path::Path) -> Syntax {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Syntax::Json,
            _ => Syntax::Yaml,
        }
    }
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The image's key under `images` (None: the manifest itself).
    pub image: Option<String>,
    /// The field as the manifest names it (`checksum.type`, `get_url`…).
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.image {
            Some(k) if self.field.is_empty() => write!(f, "images.{k}: {}", self.message),
            Some(k) => write!(f, "images.{k}.{}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Everything wrong with a manifest; nothing of it is queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<FieldError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "the manifest has {n} error{}; nothing was queued: ",
            if n == 1 { "" } else { "s" }
        )?;
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

/// One image of a manifest, as a single submission.
#[derive(Debug)]
pub struct ManifestImage {
    pub key: String,
    pub request: SubmitRequest,
    /// What the manifest called the URL field (`get_url`, `url`, `input.url`),
    /// so errors from the single-submission checks name it as written.
    url_field: &'static str,
    /// Likewise for the checksum: `checksum` or `input.checksum`.
    checksum_field: &'static str,
}

impl ManifestImage {
    /// Locates an error of the single-submission checks ("field: message").
    pub fn locate(&self, message: &str) -> FieldError {
        let (field, rest) = match message.split_once(": ") {
            Some((f, r))
                if !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                (f, r)
            }
            _ => ("", message),
        };
        let field = match field {
            "url" => self.url_field.to_string(),
            "checksum" => self.checksum_field.to_string(),
            "" => "image".to_string(),
            f => f.to_string(),
        };
        FieldError {
            image: Some(self.key.clone()),
            field,
            message: rest.to_string(),
        }
    }
}

#[derive(Debug)]
pub struct Manifest {
    /// gen-vm-image's `owner`: the team, shown on the batch page.
    pub owner: Option<String>,
    /// Extra addresses to tell (as `email` on a single submission).
    pub email: Option<String>,
    /// The images whose shape is right, for the single-submission checks.
    pub images: Vec<ManifestImage>,
    /// What is wrong with the shape of the rest (and of the top level).
    /// Nothing may be queued unless this is empty; it is reported together
    /// with the errors the single-submission checks find in `images`.
    pub errors: Vec<FieldError>,
    /// Fields read and ignored, for the submitter to see.
    pub warnings: Vec<String>,
}

/// A mapping whose key order is kept (serde_json's map sorts), with
/// duplicate keys noted instead of silently overwritten.
#[derive(Debug, Default)]
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: Value = m.next_value()?;
                    if out.iter().any(|(o, _)| *o == k) {
                        return Err(de::Error::custom(format!("key {k:?} appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The top level; `images` keeps its order.
#[derive(Debug, Default)]
struct Top {
    fields: Vec<(String, Value)>,
    images: Option<Ordered>,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a manifest: a mapping with `owner` and `images`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                let mut top = Top::default();
                while let Some(k) = m.next_key::<String>()? {
                    if k == "images" {
                        if top.images.is_some() {
                            return Err(de::Error::custom("key \"images\" appears twice"));
                        }
                        top.images = Some(m.next_value::<Ordered>().map_err(|e| {
                            de::Error::custom(format!(
                                "images: must be a mapping of image key to image ({e})"
                            ))
                        })?);
                    } else {
                        let v: Value = m.next_value()?;
                        if top.fields.iter().any(|(o, _)| *o == k) {
                            return Err(de::Error::custom(format!("key {k:?} appears twice")));
                        }
                        top.fields.push((k, v));
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

const TOP_FIELDS: &[&str] = &["owner", "images", "email"];
const IMAGE_FIELDS: &[&str] = &[
    "name",
    "version",
    "get_url",
    "url",
    "input",
    "checksum",
    "size",
    "cluster",
    "os",
    "description",
    "note",
    "format",
    "output",
    "extra_kwargs",
];
const INPUT_FIELDS: &[&str] = &["url", "path", "format", "checksum"];

/// Reads and checks a manifest's shape; the single-submission checks of
/// each image (URL, cluster, name…) run after, on [`ManifestImage::request`].
/// Err: nothing to check further (not YAML/JSON, no images); other errors
/// are in [`Manifest::errors`].
pub fn parse(text: &str, syntax: Syntax) -> Result<Manifest, ManifestErrors> {
    let one = |field: &str, message: String| {
        ManifestErrors(vec![FieldError {
            image: None,
            field: field.to_string(),
            message,
        }])
    };
    if text.trim().is_empty() {
        return Err(one("manifest", "is empty".into()));
    }
    let top: Top = match syntax {
        Syntax::Yaml => serde_saphyr::from_str(text)
            .map_err(|e| one("manifest", format!("not valid YAML: {e}")))?,
        Syntax::Json => serde_json::from_str(text)
            .map_err(|e| one("manifest", format!("not valid JSON: {e}")))?,
    };
    let mut errors = Vec::new();
    let mut top_err = |field: &str, message: String| {
        errors.push(FieldError {
            image: None,
            field: field.to_string(),
            message,
        })
    };
    let mut owner = None;
    let mut email = None;
    for (k, v) in &top.fields {
        match k.as_str() {
            "owner" => match text_of(v) {
                Ok(o) => owner = o,
                Err(m) => top_err("owner", m),
            },
            "email" => match v {
                Value::String(s) => email = Some(s.clone()),
                Value::Null => {}
                _ => top_err("email", "must be a string".into()),
            },
            other => top_err(
                other,
                format!("unknown field (a manifest has: {})", TOP_FIELDS.join(", ")),
            ),
        }
    }
    if owner
        .as_ref()
        .is_some_and(|o: &String| o.chars().count() > 200)
    {
        top_err("owner", "longer than 200 characters".into());
    }
    let images = match top.images {
        None => {
            top_err("images", "missing; list the images under `images:`".into());
            Vec::new()
        }
        Some(Ordered(i)) if i.is_empty() => {
            top_err(
                "images",
                "is empty; a manifest needs at least one image".into(),
            );
            Vec::new()
        }
        Some(Ordered(i)) if i.len() > MAX_IMAGES => {
            top_err(
                "images",
                format!(
                    "{} images; one manifest holds at most {MAX_IMAGES}",
                    i.len()
                ),
            );
            Vec::new()
        }
        Some(Ordered(i)) => i,
    };
    if images.is_empty() {
        return Err(ManifestErrors(errors));
    }
    let mut out = Manifest {
        owner,
        email,
        images: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (key, v) in images {
        match image(&key, &v, &mut out.warnings) {
            Ok(img) => out.images.push(img),
            Err(mut e) => errors.append(&mut e),
        }
    }
    duplicates(&out.images, &mut errors);
    out.errors = errors;
    Ok(out)
}

/// A string field that YAML may have read as a number (`version: 9.4`).
fn text_of(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err("must be a string".into()),
    }
}

fn image(
    key: &str,
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<ManifestImage, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            image: Some(key.to_string()),
            field: field.to_string(),
            message,
        })
    };
    if key.trim().is_empty() || key.chars().count() > 200 || key.chars().any(char::is_control) {
        err(
            "",
            "an image key must be 1 to 200 printable characters".into(),
        );
    }
    let Some(fields) = v.as_object() else {
        err(
            "",
            "must be a mapping (name, version, get_url, checksum, size…)".into(),
        );
        return Err(errors);
    };
    let mut req = SubmitRequest::default();
    let mut url_field = "url";
    let mut checksum_field = "checksum";
    let mut urls: Vec<&'static str> = Vec::new();
    let mut ignore = |field: &str, why: &str| {
        warnings.push(format!("images.{key}.{field}: ignored ({why})"));
    };
    for (k, v) in fields {
        let string = |v: &Value| text_of(v);
        match k.as_str() {
            "name" | "version" | "cluster" | "os" | "description" | "note" => match string(v) {
                Ok(s) => {
                    let slot = match k.as_str() {
                        "name" => &mut req.name,
                        "version" => &mut req.version,
                        "cluster" => &mut req.cluster,
                        "os" => &mut req.os,
                        "description" => &mut req.description,
                        _ => &mut req.note,
                    };
                    *slot = s;
                }
                Err(m) => err(k, m),
            },
            "get_url" | "url" => match v {
                Value::String(s) => {
                    url_field = if k == "url" { "url" } else { "get_url" };
                    urls.push(url_field);
                    req.url = Some(s.clone());
                }
                _ => err(k, "must be a string (the image's URL)".into()),
            },
            "checksum" => match checksum(v) {
                Ok(c) => req.checksum = c,
                Err((f, m)) => err(&join("checksum", f), m),
            },
            "size" => match v {
                Value::String(_) | Value::Number(_) => req.size = Some(v.clone()),
                Value::Null => {}
                _ => err(k, "must be a size such as 20G, or a number of bytes".into()),
            },
            "input" => {
                let Some(input) = v.as_object() else {
                    err(k, "must be a mapping (url, checksum)".into());
                    continue;
                };
                for (ik, iv) in input {
                    match ik.as_str() {
                        "url" => match iv {
                            Value::String(s) => {
                                url_field = "input.url";
                                urls.push("input.url");
                                req.url = Some(s.clone());
                            }
                            _ => err("input.url", "must be a string (the image's URL)".into()),
                        },
                        "path" => err(
                            "input.path",
                            "a file on the builder's machine cannot be fetched; publish it and give input.url".into(),
                        ),
                        "format" => ignore(
                            "input.format",
                            "vmscan reads the format from the image itself",
                        ),
                        "checksum" => {
                            if req.checksum.is_some() {
                                err("input.checksum", "given twice (also as checksum)".into());
                                continue;
                            }
                            checksum_field = "input.checksum";
                            match checksum(iv) {
                                Ok(c) => req.checksum = c,
                                Err((f, m)) => err(&join("input.checksum", f), m),
                            }
                        }
                        other => err(
                            &format!("input.{other}"),
                            format!("unknown field (input has: {})", INPUT_FIELDS.join(", ")),
                        ),
                    }
                }
            }
            "format" => ignore("format", "the target cluster decides the disk format"),
            "output" | "extra_kwargs" => ignore(k, "a gen-vm-image build option"),
            other => err(
                other,
                format!("unknown field (an image has: {})", IMAGE_FIELDS.join(", ")),
            ),
        }
    }
    match urls.len() {
        0 => err(
            "get_url",
            "missing; give the image's URL as get_url (or input.url)".into(),
        ),
        1 => {}
        _ => err(
            urls[1],
            format!("the URL is given twice ({}); give one", urls.join(" and ")),
        ),
    }
    if errors.is_empty() {
        Ok(ManifestImage {
            key: key.to_string(),
            request: req,
            url_field,
            checksum_field,
        })
    } else {
        Err(errors)
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// A checksum as gen-vm-image writes it (`{type, value}`), or as vmscan
/// takes it (`sha256:…`, bare hex, `file:URL`), checked here so the error
/// names `type` or `value`. Err: (sub-field, message).
fn checksum(v: &Value) -> Result<Option<String>, (&'static str, String)> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => s
            .parse::<ChecksumSpec>()
            .map(|c| Some(c.to_string()))
            .map_err(|e| ("", e.to_string())),
        Value::Object(m) => {
            for k in m.keys() {
                if k != "type" && k != "value" {
                    return Err((
                        "",
                        format!("unknown field {k:?} (a checksum has type and value)"),
                    ));
                }
            }
            let algo = match m.get("type") {
                Some(Value::String(t)) => t
                    .parse::<ChecksumAlgo>()
                    .map_err(|e| ("type", e.to_string()))?,
                Some(_) => {
                    return Err((
                        "type",
                        "must be a string (md5, sha1, sha256 or sha512)".into(),
                    ))
                }
                None => return Err(("type", "missing (md5, sha1, sha256 or sha512)".into())),
            };
            let value =
                match m.get("value") {
                    Some(Value::String(h)) => h.trim().to_string(),
                    Some(Value::Number(_)) => return Err((
                        "value",
                        "is a number: quote it (YAML reads a digest of digits only as a number)"
                            .into(),
                    )),
                    Some(_) => return Err(("value", "must be a string of hex digits".into())),
                    None => return Err(("value", "missing".into())),
                };
            format!("{algo}:{value}")
                .parse::<ChecksumSpec>()
                .map(|c| Some(c.to_string()))
                .map_err(|e| ("value", e.to_string()))
        }
        _ => Err((
            "",
            "must be {type, value} or a string such as sha256:…".into(),
        )),
    }
}

/// Two images publishing the same name and version would collide at publish.
fn duplicates(images: &[ManifestImage], errors: &mut Vec<FieldError>) {
    for (i, a) in images.iter().enumerate() {
        let (Some(n), Some(v)) = (&a.request.name, &a.request.version) else {
            continue;
        };
        if let Some(b) = images[..i]
            .iter()
            .find(|b| b.request.name.as_ref() == Some(n) && b.request.version.as_ref() == Some(v))
        {
            errors.push(FieldError {
                image: Some(a.key.clone()),
                field: "version".into(),
                message: format!(
                    "{n} {v} is also image {:?}; each image of a batch publishes its own name and version",
                    b.key
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "39277948d53a10f1087454a1e0ed1c9bb48b48f6a4ddbf5113adc36f70be6730";

    fn errors(text: &str) -> Vec<String> {
        let e = match parse(text, Syntax::Yaml) {
            Ok(m) => m.errors,
            Err(e) => e.0,
        };
        e.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn reads_gen_vm_images_own_example() {
        // ucphhpc/gen-vm-image examples/download-cloud-image-checksum-example.yml,
        // as published (an unquoted version is a YAML number).
        let text = format!(
            "owner: the-owner-name\nimages:\n  image-1:\n    name: rocky\n    version: 9.4\n    format: qcow2\n    size: 120G\n    input:\n      url: https://download.rockylinux.org/pub/rocky/9/images/x86_64/Rocky-9-GenericCloud-Base.latest.x86_64.qcow2\n      format: qcow2\n      checksum:\n        type: sha256\n        value: {SHA}\n"
        );
        let m = parse(&text, Syntax::Yaml).unwrap();
        assert_eq!(m.owner.as_deref(), Some("the-owner-name"));
        assert_eq!(m.images.len(), 1);
        let r = &m.images[0].request;
        assert_eq!(m.images[0].key, "image-1");
        assert_eq!(r.name.as_deref(), Some("rocky"));
        assert_eq!(r.version.as_deref(), Some("9.4"));
        assert!(r
            .url
            .as_deref()
            .unwrap()
            .ends_with("Base.latest.x86_64.qcow2"));
        assert_eq!(
            r.checksum.as_deref(),
            Some(format!("sha256:{SHA}").as_str())
        );
        assert_eq!(r.size, Some(serde_json::json!("120G")));
        assert_eq!(
            m.warnings,
            vec![
                "images.image-1.format: ignored (the target cluster decides the disk format)",
                "images.image-1.input.format: ignored (vmscan reads the format from the image itself)"
            ]
        );
    }

    #[test]
    fn reads_the_issue_shape_with_vmscan_fields_in_order() {
        let text = format!(
            "owner: sam-team\nimages:\n  rocky-9:\n    name: rocky-9\n    version: \"9.4\"\n    get_url: https://filer.example.com/rocky/Rocky-9.qcow2\n    checksum: {{type: sha256, value: {SHA}}}\n    size: 20G\n    cluster: nutanix:pc1\n    os: linux\n    description: Rocky 9\n    note: nightly\n  alma-9:\n    name: alma-9\n    url: https://filer.example.com/alma.qcow2\n    checksum: sha256:{SHA}\n    size: 21474836480\n"
        );
        let m = parse(&text, Syntax::Yaml).unwrap();
        let keys: Vec<&str> = m.images.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["rocky-9", "alma-9"]);
        let r = &m.images[0].request;
        assert_eq!(r.cluster.as_deref(), Some("nutanix:pc1"));
        assert_eq!(r.os.as_deref(), Some("linux"));
        assert_eq!(r.description.as_deref(), Some("Rocky 9"));
        assert_eq!(r.note.as_deref(), Some("nightly"));
        assert_eq!(
            m.images[1].request.size,
            Some(serde_json::json!(21474836480u64))
        );
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn json_manifests_read_the_same() {
        let text = format!(
            r#"{{"owner": "sam-team", "images": {{"b": {{"get_url": "https://h.example/b.qcow2", "checksum": {{"type": "sha256", "value": "{SHA}"}}}}, "a": {{"get_url": "https://h.example/a.qcow2"}}}}}}"#
        );
        let m = parse(&text, Syntax::Json).unwrap();
        let keys: Vec<&str> = m.images.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["b", "a"], "the manifest's order, not sorted");
    }

    #[test]
    fn reports_every_error_with_its_image_and_field() {
        let text = format!(
            "owner: t\nbogus: 1\nimages:\n  no-url:\n    name: x\n  bad-type:\n    get_url: https://h.example/a\n    checksum: {{type: sha384, value: {SHA}}}\n  bad-value:\n    get_url: https://h.example/a\n    checksum: {{type: sha256, value: abc}}\n  no-value:\n    get_url: https://h.example/a\n    checksum: {{type: sha256}}\n  number:\n    get_url: https://h.example/a\n    checksum: {{type: md5, value: 12345678901234567890123456789012}}\n  bad-size:\n    get_url: https://h.example/a\n    size: [1]\n  typo:\n    get_url: https://h.example/a\n    clustr: x\n  local:\n    input:\n      path: /tmp/x.qcow2\n  twice:\n    get_url: https://h.example/a\n    input: {{url: https://h.example/b}}\n  scalar: hello\n"
        );
        let e = errors(&text);
        let want = [
            "bogus: unknown field (a manifest has: owner, images, email)",
            "images.no-url.get_url: missing; give the image's URL as get_url (or input.url)",
            "images.bad-type.checksum.type: unknown checksum algorithm \"sha384\" (use md5, sha1, sha256 or sha512)",
            "images.bad-value.checksum.value: a sha256 checksum has 64 hex digits, \"abc\" has 3",
            "images.no-value.checksum.value: missing",
            "images.number.checksum.value: is a number: quote it",
            "images.bad-size.size: must be a size such as 20G, or a number of bytes",
            "images.typo.clustr: unknown field",
            "images.local.input.path: a file on the builder's machine cannot be fetched",
            "images.local.get_url: missing",
            "images.twice.input.url: the URL is given twice (get_url and input.url); give one",
            "images.scalar: must be a mapping",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w:?} not in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn refuses_empty_malformed_and_colliding_manifests() {
        assert_eq!(errors(""), ["manifest: is empty"]);
        assert!(errors("owner: [unclosed")[0].starts_with("manifest: not valid YAML"));
        assert_eq!(
            errors("owner: t\n"),
            ["images: missing; list the images under `images:`"]
        );
        assert_eq!(
            errors("owner: t\nimages: {}\n"),
            ["images: is empty; a manifest needs at least one image"]
        );
        assert!(errors("images: [a, b]\n")[0].contains("images: must be a mapping"));
        let e = errors(
            "images:\n  a: {name: r, version: '1', get_url: https://h.example/a}\n  b: {name: r, version: '1', get_url: https://h.example/b}\n",
        );
        assert_eq!(
            e,
            ["images.b.version: r 1 is also image \"a\"; each image of a batch publishes its own name and version"]
        );
        let many: String = (0..=MAX_IMAGES)
            .map(|i| format!("  i{i}: {{get_url: https://h.example/{i}}}\n"))
            .collect();
        assert!(errors(&format!("images:\n{many}"))[0].contains("at most 200"));
    }

    #[test]
    fn single_submission_errors_are_located_as_written() {
        let m = parse(
            "images:\n  a:\n    input:\n      url: ftp://x\n      checksum: sha256:00\n",
            Syntax::Yaml,
        );
        // The checksum is checked here already; the URL by the single checks.
        let e = m.unwrap().errors;
        assert_eq!(e[0].field, "input.checksum");
        let m = parse("images:\n  a:\n    input: {url: ftp://x}\n", Syntax::Yaml).unwrap();
        let located = m.images[0].locate("url: unsupported URL scheme \"ftp\"");
        assert_eq!(
            located.to_string(),
            "images.a.input.url: unsupported URL scheme \"ftp\""
        );
        assert_eq!(m.images[0].locate("cluster: nope").field, "cluster");
    }
}
