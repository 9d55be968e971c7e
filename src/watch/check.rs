//! One check of a watch: find the image it names now and what identifies
//! that image (a SUMS entry, else the server's ETag / Last-Modified / size).
//! Every request goes through the fetch stage's [`Fetcher`], so a watch
//! obeys the same network policy as a scan.

use reqwest::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use reqwest::StatusCode;
use url::Url;

use super::source::{listed_names, newest_match, pointed_url, WatchKind};
use crate::bounded_body::{self, BodyError};
use crate::domain::{fmt_bytes, redact_url, Checksum};
use crate::pipeline::checksum::parse_sums;
use crate::pipeline::http::{Fetcher, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{url}: {source}")]
    Http { url: String, source: HttpError },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: {source}")]
    Body { url: String, source: BodyError },
    #[error("no file in the listing matches {pattern:?} ({listed} files listed)")]
    NoMatch { pattern: String, listed: usize },
    #[error("{sums} has no line for {name}")]
    NoSumsEntry { sums: String, name: String },
    #[error("{0}")]
    Pointer(String),
}

impl CheckError {
    fn http(url: &Url, source: HttpError) -> CheckError {
        CheckError::Http {
            url: redact_url(url.as_str()),
            source,
        }
    }
}

/// What a watch is, for a check.
pub struct Target<'a> {
    pub url: &'a Url,
    pub kind: &'a WatchKind,
    pub sums_url: Option<&'a Url>,
}

/// What the last check saw, for a conditional request.
#[derive(Default)]
pub struct Previous<'a> {
    pub image_url: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
}

/// The image a check found and what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub image_url: Url,
    /// Equal fingerprints mean the same image.
    pub fingerprint: String,
    /// From the SUMS file: the scan verifies the download against it.
    pub checksum: Option<Checksum>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// What identified the image, in words.
    pub identity: String,
}

pub async fn observe(
    fetcher: &Fetcher,
    target: &Target<'_>,
    prev: &Previous<'_>,
    max_document: usize,
) -> Result<Observation, CheckError> {
    let image_url = match target.kind {
        WatchKind::Url => target.url.clone(),
        WatchKind::Pointer => {
            let body = document(fetcher, target.url, max_document).await?;
            pointed_url(target.url, &body).map_err(CheckError::Pointer)?
        }
        WatchKind::Listing { pattern } => {
            let body = document(fetcher, target.url, max_document).await?;
            let names = listed_names(target.url, &body);
            let newest = newest_match(&names, pattern).ok_or_else(|| CheckError::NoMatch {
                pattern: pattern.clone(),
                listed: names.len(),
            })?;
            target
                .url
                .join(&encode_segment(newest))
                .map_err(|e| CheckError::Pointer(format!("{newest:?}: {e}")))?
        }
    };
    match target.sums_url {
        Some(sums) => by_sums(fetcher, sums, image_url, max_document).await,
        None => by_headers(fetcher, image_url, prev).await,
    }
}

fn encode_segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A listing, pointer or SUMS file: GET, 2xx, at most `limit` bytes.
async fn document(fetcher: &Fetcher, url: &Url, limit: usize) -> Result<String, CheckError> {
    let resp = fetcher
        .get(url, HeaderMap::new())
        .await
        .map_err(|e| CheckError::http(url, e))?;
    if !resp.status().is_success() {
        return Err(CheckError::Status {
            url: redact_url(url.as_str()),
            status: resp.status(),
        });
    }
    bounded_body::text(resp, limit)
        .await
        .map_err(|source| CheckError::Body {
            url: redact_url(url.as_str()),
            source,
        })
}

fn file_name(url: &Url) -> String {
    crate::domain::percent_decode(
        url.path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or(""),
    )
}

async fn by_sums(
    fetcher: &Fetcher,
    sums: &Url,
    image_url: Url,
    limit: usize,
) -> Result<Observation, CheckError> {
    let text = document(fetcher, sums, limit).await?;
    let name = file_name(&image_url);
    let entry = parse_sums(&text)
        .into_iter()
        .find(|e| e.name == name || e.name.rsplit('/').next() == Some(name.as_str()))
        .ok_or_else(|| CheckError::NoSumsEntry {
            sums: redact_url(sums.as_str()),
            name: name.clone(),
        })?;
    let digest = format!("{}:{}", entry.checksum.algo.as_str(), entry.checksum.hex);
    Ok(Observation {
        fingerprint: format!("{} {digest}", image_url.as_str()),
        identity: format!("{name}, {digest} in {}", redact_url(sums.as_str())),
        image_url,
        checksum: Some(entry.checksum),
        etag: None,
        last_modified: None,
    })
}

/// A conditional GET of the image whose body is never read: the answer's
/// headers say whether it changed. Redirects are followed, so a "latest"
/// link that redirects names the file it points at.
async fn by_headers(
    fetcher: &Fetcher,
    image_url: Url,
    prev: &Previous<'_>,
) -> Result<Observation, CheckError> {
    let mut headers = HeaderMap::new();
    let same_file = prev.image_url == Some(image_url.as_str());
    if same_file {
        for (name, value) in [
            (IF_NONE_MATCH, prev.etag),
            (IF_MODIFIED_SINCE, prev.last_modified),
        ] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
    }
    let resp = fetcher
        .get(&image_url, headers)
        .await
        .map_err(|e| CheckError::http(&image_url, e))?;
    let header = |h| {
        resp.headers()
            .get(h)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    if resp.status() == StatusCode::NOT_MODIFIED && same_file {
        if let Some(fp) = prev.fingerprint {
            return Ok(Observation {
                image_url,
                fingerprint: fp.to_string(),
                checksum: None,
                etag: header(ETAG).or(prev.etag.map(str::to_string)),
                last_modified: header(LAST_MODIFIED).or(prev.last_modified.map(str::to_string)),
                identity: "not modified (304)".into(),
            });
        }
    }
    if !resp.status().is_success() {
        return Err(CheckError::Status {
            url: redact_url(image_url.as_str()),
            status: resp.status(),
        });
    }
    let final_url = resp.url().clone();
    let etag = header(ETAG);
    let last_modified = header(LAST_MODIFIED);
    let length = resp.content_length();
    let mut parts = Vec::new();
    if let Some(e) = &etag {
        parts.push(format!("ETag {e}"));
    }
    if let Some(m) = &last_modified {
        parts.push(format!("Last-Modified {m}"));
    }
    if let Some(n) = length {
        parts.push(fmt_bytes(n));
    }
    let identity = if parts.is_empty() {
        format!(
            "{} (the server sends no ETag, Last-Modified or length: only a new file name counts as a change)",
            file_name(&final_url)
        )
    } else {
        format!("{}, {}", file_name(&final_url), parts.join(", "))
    };
    // The body is not wanted: dropping the answer closes the connection.
    drop(resp);
    Ok(Observation {
        fingerprint: format!(
            "{} etag={} lm={} len={}",
            final_url.as_str(),
            etag.as_deref().unwrap_or(""),
            last_modified.as_deref().unwrap_or(""),
            length.map(|n| n.to_string()).unwrap_or_default()
        ),
        image_url: final_url,
        checksum: None,
        etag,
        last_modified,
        identity,
    })
}
