//! checksum: verifies the fetched image against what the user gave
//! (`ALGO:HEX`, bare hex, or `file:URL` of a SUMS file), using the digests
//! fetch computed on the way in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;

use super::fetch::{fetched_file_name, fetched_path};
use super::hashing::MultiHasher;
use super::http::Fetcher;
use super::netpolicy::NetPolicy;
use super::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::config::FetchConfig;
use crate::domain::{redact_url, Checksum, ChecksumAlgo, ChecksumSpec, SourceUrl, StageName};

/// SUMS files are small; anything bigger is not one.
const MAX_SUMS_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChecksumStageError {
    #[error("checksum mismatch: expected {algo} {expected}, got {actual}")]
    Mismatch {
        algo: ChecksumAlgo,
        expected: String,
        actual: String,
    },
    #[error("the job's checksum is invalid: {0}")]
    BadSpec(String),
    #[error("checksum file {url}: {reason}")]
    SumsFetch {
        url: String,
        reason: String,
        retryable: bool,
    },
    #[error("checksum file {url} has no line for {name} (it lists: {listed})")]
    NoLine {
        url: String,
        name: String,
        listed: String,
    },
    #[error("fetch recorded no image path; cannot verify")]
    NoImage,
    #[error("cannot read {0}")]
    Io(String),
}

impl StageFailure for ChecksumStageError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ChecksumStageError::SumsFetch {
                retryable: true,
                ..
            } | ChecksumStageError::Io(_)
        )
    }
}

pub struct ChecksumStage {
    cfg: FetchConfig,
    http: Fetcher,
}

impl ChecksumStage {
    pub fn new(cfg: FetchConfig) -> Self {
        // The SUMS URL is the submitter's too: same policy as the image.
        let policy = Arc::new(NetPolicy::from_config(&cfg));
        let http = Fetcher::new(&cfg, policy);
        ChecksumStage { cfg, http }
    }

    async fn sums_file(&self, url: &str) -> Result<String, ChecksumStageError> {
        let err = |reason: String, retryable: bool| ChecksumStageError::SumsFetch {
            url: redact_url(url),
            reason,
            retryable,
        };
        let src: SourceUrl = url
            .parse()
            .map_err(|e: crate::domain::SourceUrlError| err(redact_url(&e.to_string()), false))?;
        if src.scheme() == "file" {
            let path = src
                .url()
                .to_file_path()
                .map_err(|_| err("not a local path".into(), false))?;
            let real = std::fs::canonicalize(&path).map_err(|e| err(e.to_string(), false))?;
            let allowed = self.cfg.allowed_roots.iter().any(|r| {
                std::fs::canonicalize(r)
                    .map(|r| real.starts_with(r))
                    .unwrap_or(false)
            });
            if !allowed {
                return Err(err(
                    "local paths must be under fetch.allowed_roots".into(),
                    false,
                ));
            }
            let meta = std::fs::metadata(&real).map_err(|e| err(e.to_string(), false))?;
            if meta.len() as usize > MAX_SUMS_BYTES {
                return Err(err(format!("larger than {MAX_SUMS_BYTES} bytes"), false));
            }
            return std::fs::read_to_string(&real).map_err(|e| err(e.to_string(), false));
        }
        let resp = self
            .http
            .get(src.url(), Default::default())
            .await
            .map_err(|e| {
                let retryable = e.is_retryable();
                err(e.to_string(), retryable)
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(
                format!("the server answered {status}"),
                status.is_server_error(),
            ));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err(e.without_url().to_string(), true))?;
            if body.len() + chunk.len() > MAX_SUMS_BYTES {
                return Err(err(format!("larger than {MAX_SUMS_BYTES} bytes"), false));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

#[async_trait]
impl Stage for ChecksumStage {
    fn name(&self) -> StageName {
        StageName::Checksum
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let image = fetched_path(ctx).ok_or(ChecksumStageError::NoImage)?;
        let fetched = ctx.output_of(StageName::Fetch).cloned().unwrap_or_default();
        let file_name = fetched_file_name(ctx, &image);
        let known = |algo: ChecksumAlgo| -> Option<String> {
            fetched
                .get("hashes")?
                .get(algo.as_str())?
                .as_str()
                .map(str::to_string)
        };
        let Some(spec) = ctx.job.checksum.as_deref() else {
            let sha256 = known(ChecksumAlgo::Sha256).unwrap_or_default();
            ctx.warn(format!(
                "no checksum given: NOT verified; computed sha256 {sha256}"
            ))
            .await?;
            ctx.set_detail(json!({"verified": false, "sha256": sha256}), true)
                .await?;
            return Ok(StageOutcome::Done);
        };
        let spec: ChecksumSpec = spec.parse().map_err(|e: crate::domain::ChecksumError| {
            ChecksumStageError::BadSpec(e.to_string())
        })?;
        // The extracted image, when the download was an archive.
        let extracted = ctx
            .output_of(StageName::Extract)
            .filter(|d| d.get("extracted").and_then(|v| v.as_bool()) == Some(true))
            .and_then(|d| {
                let path = d.get("path")?.as_str()?;
                let name = d.get("file_name")?.as_str()?;
                Some((PathBuf::from(path), name.to_string()))
            });
        let (expected, source, target) = match &spec {
            ChecksumSpec::Digest(c) => (
                c.clone(),
                "given with the job".to_string(),
                Target::Download,
            ),
            ChecksumSpec::File { url } => {
                let text = self.sums_file(url).await?;
                let entries = parse_sums(&text);
                let found = find_line(&entries, &file_name)
                    .map(|e| (e, Target::Download))
                    .or_else(|| {
                        let (_, name) = extracted.as_ref()?;
                        find_line(&entries, name).map(|e| (e, Target::Extracted))
                    });
                let Some((e, target)) = found else {
                    let listed = entries
                        .iter()
                        .map(|e| e.name.as_str())
                        .take(20)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = match &extracted {
                        Some((_, inner)) => format!("{file_name:?} or {inner:?}"),
                        None => format!("{file_name:?}"),
                    };
                    return Err(ChecksumStageError::NoLine {
                        url: redact_url(url),
                        name,
                        listed: if listed.is_empty() {
                            "no checksum lines".into()
                        } else {
                            listed
                        },
                    }
                    .into());
                };
                (
                    e.checksum.clone(),
                    format!("from {}", redact_url(url)),
                    target,
                )
            }
        };
        let mut actual = match target {
            Target::Download => match known(expected.algo) {
                Some(h) => h,
                // fetch did not know the algorithm in advance (SUMS file): one more pass.
                None => rehash(ctx, &image, expected.algo).await?,
            },
            Target::Extracted => {
                let (path, _) = extracted
                    .as_ref()
                    .expect("found through the extracted name");
                rehash(ctx, path, expected.algo).await?
            }
        };
        let mut target = target;
        // A digest given with the job may be the one of the image inside the archive.
        if actual != expected.hex && matches!(spec, ChecksumSpec::Digest(_)) {
            if let Some((path, name)) = &extracted {
                let inner = rehash(ctx, path, expected.algo).await?;
                if inner == expected.hex {
                    ctx.info(format!(
                        "the checksum is the one of {name}, the image inside the archive"
                    ))
                    .await?;
                    actual = inner;
                    target = Target::Extracted;
                } else {
                    ctx.set_detail(json!({"actual_extracted": inner}), false)
                        .await?;
                }
            }
        }
        let verified_file = match target {
            Target::Download => file_name.clone(),
            Target::Extracted => extracted
                .as_ref()
                .map(|(_, n)| n.clone())
                .unwrap_or_default(),
        };
        ctx.set_detail(json!({"algorithm": expected.algo, "expected": expected.hex, "actual": actual, "source": source, "verified_file": verified_file, "verified_target": target.as_str()}), true).await?;
        if actual != expected.hex {
            return Err(ChecksumStageError::Mismatch {
                algo: expected.algo,
                expected: expected.hex,
                actual,
            }
            .into());
        }
        ctx.set_detail(json!({"verified": true}), true).await?;
        ctx.info(format!(
            "checksum verified: {verified_file} ({}) {} {} ({source})",
            target.as_str(),
            expected.algo,
            expected.hex
        ))
        .await?;
        Ok(StageOutcome::Done)
    }
}

/// Which file a checksum is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Download,
    Extracted,
}

impl Target {
    fn as_str(&self) -> &'static str {
        match self {
            Target::Download => "download",
            Target::Extracted => "extracted image",
        }
    }
}

/// The SUMS line for `name` (exact, or by its last path component).
fn find_line<'a>(entries: &'a [SumsEntry], name: &str) -> Option<&'a SumsEntry> {
    entries.iter().find(|e| e.name == name).or_else(|| {
        entries.iter().find(|e| {
            Path::new(&e.name)
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == name)
        })
    })
}

/// One more pass over a file for an algorithm nobody computed yet.
async fn rehash(ctx: &StageCtx, path: &Path, algo: ChecksumAlgo) -> Result<String, StageError> {
    ctx.info(format!("computing {algo} of {}", path.display()))
        .await?;
    let mut h = MultiHasher::new([algo]);
    h.update_from_file(path)
        .await
        .map_err(|e| ChecksumStageError::Io(format!("{}: {e}", path.display())))?;
    Ok(h.finish().remove(&algo).unwrap_or_default())
}

#[derive(Debug, PartialEq, Eq)]
pub struct SumsEntry {
    pub name: String,
    pub checksum: Checksum,
}

/// Parses GNU (`HEX  name`, `HEX *name`), BSD (`SHA256 (name) = HEX`) and
/// PGP clear-signed SUMS files. Lines that are neither are ignored.
pub fn parse_sums(text: &str) -> Vec<SumsEntry> {
    let mut out = Vec::new();
    let mut in_sig = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            in_sig = true;
        }
        if line.starts_with("-----END PGP SIGNATURE") {
            in_sig = false;
            continue;
        }
        if in_sig
            || line.is_empty()
            || line.starts_with('#')
            || line.starts_with("-----")
            || line.starts_with("Hash:")
        {
            continue;
        }
        // Clear-signed text escapes lines starting with '-' as "- ".
        let line = line.strip_prefix("- ").unwrap_or(line);
        if let Some(e) = parse_bsd(line).or_else(|| parse_gnu(line)) {
            out.push(e);
        }
    }
    out
}

fn parse_bsd(line: &str) -> Option<SumsEntry> {
    let (algo, rest) = line.split_once(" (")?;
    let (name, hex) = rest.rsplit_once(") = ")?;
    let spec: ChecksumSpec = format!("{}:{}", algo.trim(), hex.trim()).parse().ok()?;
    match spec {
        ChecksumSpec::Digest(checksum) => Some(SumsEntry {
            name: name.to_string(),
            checksum,
        }),
        ChecksumSpec::File { .. } => None,
    }
}

fn parse_gnu(line: &str) -> Option<SumsEntry> {
    let (hex, name) = line.split_once(char::is_whitespace)?;
    let name = name.trim_start();
    let name = name.strip_prefix('*').unwrap_or(name);
    let spec: ChecksumSpec = hex.parse().ok()?;
    match spec {
        ChecksumSpec::Digest(checksum) if !name.is_empty() => Some(SumsEntry {
            name: name.to_string(),
            checksum,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_gnu_bsd_and_clearsigned_sums() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Rocky-9.4\nSHA256 (Rocky-9.qcow2) = {H}\n{H}  other.img\n{H} *bin.raw\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n"
        );
        let e = parse_sums(&text);
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["Rocky-9.qcow2", "other.img", "bin.raw"]);
        assert!(e
            .iter()
            .all(|e| e.checksum.algo == ChecksumAlgo::Sha256 && e.checksum.hex == H));
    }

    #[test]
    fn ignores_lines_that_are_not_checksums() {
        assert!(parse_sums("hello world\nnot-hex  file\n").is_empty());
    }
}
