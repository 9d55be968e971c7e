//! Opens archives and compressed images (synchronous; the extract stage runs
//! it on a blocking thread) and picks the disk image inside.

mod guard;
mod tarball;
mod targuard;
mod zipfile;

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use guard::{read_head, write_entry, Budget, CountingReader, Metered};
pub use guard::{Counters, Limits};
use targuard::TarGuard;

use super::image_format::{container_of, image_signatures, is_tar, Container, ImageFormat};
use crate::config::CandidateRule;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("hostile archive: entry {name:?} {why}")]
    UnsafePath { name: String, why: String },
    #[error("hostile archive: entry {name:?} is a {kind} pointing outside the archive ({target})")]
    LinkEscapes {
        name: String,
        kind: &'static str,
        target: String,
    },
    #[error("hostile archive: entry {name:?} is a {kind}; only regular files and directories are extracted")]
    Special { name: String, kind: String },
    #[error("decompression bomb: {input} of archive unpacks to {out}, {why}")]
    Bomb {
        out: String,
        input: String,
        why: String,
    },
    #[error("archive entry {name:?} is {size}, over the cap of {limit} (extract.max_total_bytes)")]
    TooBig {
        name: String,
        size: String,
        limit: String,
    },
    #[error("not enough free disk in {dir}: need {needed} and a reserve of {reserve}, but only {free} is free")]
    NoSpace {
        dir: String,
        needed: String,
        free: String,
        reserve: String,
    },
    #[error("hostile archive: archive entry name too long ({what} of {size} bytes, over {limit})")]
    NameTooLong {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error(
        "hostile archive: more than {limit} entries (extract.max_entries); the last was {last:?}"
    )]
    TooManyEntries { limit: u64, last: String },
    #[error("archive holds {0:?} twice")]
    Duplicate(String),
    #[error("archive is damaged or truncated: {0}")]
    Corrupt(String),
    #[error("archive entry {0:?} is encrypted; vmscan cannot extract it")]
    Encrypted(String),
    #[error("the archive uses something vmscan cannot extract: {0}")]
    Unsupported(String),
    #[error("the archive holds no disk image (qcow2, vmdk, vhd, vhdx, vdi, raw/img, iso); it holds: {0}")]
    NoImage(String),
    #[error("the archive holds several disk images: {0}; set extract.candidate_rule to \"largest\" or \"first\" to pick one")]
    Ambiguous(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}

impl ArchiveError {
    fn io(what: &str, source: std::io::Error) -> Self {
        ArchiveError::Io {
            what: what.to_string(),
            source,
        }
    }

    /// An error while reading the archive: damaged data, unless the disk failed.
    fn from_read(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | InvalidData | InvalidInput | Other => {
                ArchiveError::Corrupt(e.to_string())
            }
            // e.g. a zip compression method we do not build: retrying won't help.
            Unsupported => ArchiveError::Unsupported(e.to_string()),
            _ => ArchiveError::io("cannot read the archive", e),
        }
    }

    /// Local disk trouble and lack of space can pass; bad archives never will.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArchiveError::Io { .. } | ArchiveError::NoSpace { .. })
    }
}

/// One file the archive held and we kept.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// What the content (or, failing that, the name) says it is.
    pub format: Option<ImageFormat>,
}

/// What an archive held, as far as we care.
#[derive(Debug, Default)]
struct Listing {
    candidates: Vec<Candidate>,
    ovf: Option<Candidate>,
    manifest: Option<Candidate>,
    /// Names of entries not extracted (not images, or links inside the archive).
    skipped: Vec<String>,
    entries: usize,
}

#[derive(Debug)]
pub struct Unpacked {
    /// "zip", "tar", "tar.gz", "ova", "gzip" …
    pub container: String,
    pub image: Candidate,
    pub candidates: Vec<Candidate>,
    pub ovf: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub skipped: Vec<String>,
    pub entries: usize,
    pub unpacked_bytes: u64,
}

/// Everything `unpack` needs besides the file.
pub struct Job {
    pub input: PathBuf,
    /// The name the image was published under (picks the single-file output name).
    pub file_name: String,
    pub dest: PathBuf,
    pub limits: Limits,
    pub rule: CandidateRule,
    pub counters: Arc<Counters>,
    pub cancel: CancellationToken,
}

/// The container `path` starts with, if any.
pub fn sniff(path: &Path) -> std::io::Result<Option<Container>> {
    let mut f = File::open(path)?;
    let mut head = [0u8; 512];
    let n = read_head(&mut f, &mut head)?;
    Ok(container_of(&head[..n]))
}

/// Unpacks `job.input` (a `container`) into `job.dest` and picks the image.
pub fn unpack(job: &Job, container: Container) -> Result<Unpacked, ArchiveError> {
    let file = File::open(&job.input)
        .map_err(|e| ArchiveError::io(&format!("cannot open {}", job.input.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| ArchiveError::io(&job.input.display().to_string(), e))?
        .len();
    let budget = Budget::new(
        job.limits.clone(),
        size,
        job.dest.clone(),
        job.counters.clone(),
        job.cancel.clone(),
    );
    let input = CountingReader::new(file, job.counters.clone());
    let (label, listing) = match container {
        Container::Zip => (
            "zip".to_string(),
            zipfile::unpack(input, &job.dest, &budget)?,
        ),
        Container::Tar => {
            let metered = Metered::new(BufReader::with_capacity(1 << 20, input), &budget);
            let guarded = TarGuard::new(metered, &budget, job.limits.max_entries);
            (
                "tar".to_string(),
                tarball::unpack(guarded, &job.dest, &budget)?,
            )
        }
        compressed => {
            let raw = BufReader::with_capacity(1 << 20, input);
            let decoder: Box<dyn Read> = match compressed {
                Container::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
                Container::Xz => {
                    // liblzma has no memory limit of its own: a tiny hostile
                    // .xz can declare a 1.5 GiB dictionary. `xz -9` needs 65 MiB.
                    let stream = liblzma::stream::Stream::new_stream_decoder(
                        XZ_MEMLIMIT,
                        liblzma::stream::CONCATENATED,
                    )
                    .map_err(|e| ArchiveError::io("cannot start xz", e.into()))?;
                    Box::new(liblzma::bufread::XzDecoder::new_stream(raw, stream))
                }
                Container::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
                Container::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(raw)
                        .map_err(|e| ArchiveError::io("cannot start zstd", e))?,
                ),
                Container::Zip | Container::Tar => unreachable!("handled above"),
            };
            let mut metered = Metered::new(decoder, &budget);
            let mut head = vec![0u8; 512];
            let n = read_head(&mut metered, &mut head).map_err(|e| budget.explain(e))?;
            head.truncate(n);
            let ext = short_ext(compressed);
            if is_tar(&head) {
                let stream = TarGuard::new(
                    Cursor::new(head).chain(metered),
                    &budget,
                    job.limits.max_entries,
                );
                (
                    format!("tar.{ext}"),
                    tarball::unpack(stream, &job.dest, &budget)?,
                )
            } else {
                let name = decompressed_name(&job.file_name, compressed);
                let rel = guard::safe_relative(&name)?;
                // The decompressed size is unknown up front: at least the input must fit.
                budget.reserve(&name, size)?;
                let mut stream = Cursor::new(head.clone()).chain(metered);
                let (path, written) = write_entry(&job.dest, &rel, &mut stream, &budget, None)?;
                let format = image_signatures(&head, &[])
                    .first()
                    .copied()
                    .or_else(|| ImageFormat::from_file_name(&name));
                let listing = Listing {
                    candidates: vec![Candidate {
                        name,
                        path,
                        size: written,
                        format,
                    }],
                    entries: 1,
                    ..Listing::default()
                };
                (compressed.as_str().to_string(), listing)
            }
        }
    };
    let label = if listing.ovf.is_some() && label.starts_with("tar") {
        "ova".to_string()
    } else {
        label
    };
    let image = choose(&listing.candidates, job.rule, &listing.skipped)?;
    // Unchosen candidates only cost disk from here on.
    for c in listing.candidates.iter().filter(|c| c.path != image.path) {
        let _ = std::fs::remove_file(&c.path);
    }
    Ok(Unpacked {
        container: label,
        image,
        candidates: listing.candidates,
        ovf: listing.ovf.map(|c| c.path),
        manifest: listing.manifest.map(|c| c.path),
        skipped: listing.skipped,
        entries: listing.entries,
        unpacked_bytes: budget.unpacked(),
    })
}

/// Most memory the xz decoder may use (liblzma's memlimit).
const XZ_MEMLIMIT: u64 = 128 * 1024 * 1024;

fn short_ext(c: Container) -> &'static str {
    match c {
        Container::Gzip => "gz",
        Container::Xz => "xz",
        Container::Bzip2 => "bz2",
        Container::Zstd => "zst",
        Container::Zip => "zip",
        Container::Tar => "tar",
    }
}

/// "rocky.raw.xz" → "rocky.raw"; a name without the suffix gets ".raw" appended.
pub fn decompressed_name(file_name: &str, c: Container) -> String {
    let base = Path::new(file_name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = base.to_ascii_lowercase();
    let stem = c
        .suffix()
        .and_then(|s| {
            lower
                .strip_suffix(s)
                .map(|stem| base[..stem.len()].to_string())
        })
        .or_else(|| {
            (c == Container::Zstd && lower.ends_with(".zstd"))
                .then(|| base[..base.len() - 5].to_string())
        })
        .filter(|s| !s.is_empty() && s != "." && s != "..");
    let name = match stem {
        Some(s) => s,
        None if base.is_empty() || base == "." || base == ".." => "image.raw".to_string(),
        None => format!("{base}.raw"),
    };
    name.replace(['/', '\\', '\0'], "_")
}

/// What to do with an archive entry, judged by its name and first bytes.
enum Kind {
    Image(Option<ImageFormat>),
    Ovf,
    Manifest,
    Other,
}

fn classify(name: &str, head: &[u8]) -> Kind {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".ovf") {
        return Kind::Ovf;
    }
    if lower.ends_with(".mf") {
        return Kind::Manifest;
    }
    if let Some(f) = image_signatures(head, &[]).first() {
        return Kind::Image(Some(*f));
    }
    match ImageFormat::from_file_name(name) {
        Some(f) => Kind::Image(Some(f)),
        None => Kind::Other,
    }
}

/// Extracts one regular file if it matters, else records it as skipped.
fn take_file(
    listing: &mut Listing,
    name: &str,
    src: &mut dyn Read,
    declared: u64,
    dest: &Path,
    budget: &Budget,
) -> Result<(), ArchiveError> {
    let rel = guard::safe_relative(name)?;
    let mut head = vec![0u8; super::image_format::SNIFF_BYTES];
    let n = read_head(src, &mut head).map_err(|e| budget.explain(e))?;
    head.truncate(n);
    let kind = classify(name, &head);
    if matches!(kind, Kind::Other) {
        listing.skipped.push(name.to_string());
        return Ok(());
    }
    budget.reserve(name, declared)?;
    let mut stream = Cursor::new(head).chain(src);
    let (path, size) = write_entry(dest, &rel, &mut stream, budget, Some(declared))?;
    if size != declared {
        return Err(ArchiveError::Corrupt(format!(
            "entry {name:?} holds {size} bytes but its header says {declared}"
        )));
    }
    let c = Candidate {
        name: name.to_string(),
        path,
        size,
        format: None,
    };
    match kind {
        Kind::Image(format) => listing.candidates.push(Candidate { format, ..c }),
        Kind::Ovf => listing.ovf = Some(c),
        Kind::Manifest => listing.manifest = Some(c),
        Kind::Other => {}
    }
    Ok(())
}

fn choose(
    candidates: &[Candidate],
    rule: CandidateRule,
    skipped: &[String],
) -> Result<Candidate, ArchiveError> {
    let list = |names: &mut dyn Iterator<Item = String>| {
        let v: Vec<String> = names.take(20).collect();
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(", ")
        }
    };
    match candidates {
        [] => Err(ArchiveError::NoImage(list(&mut skipped.iter().cloned()))),
        [one] => Ok(one.clone()),
        many => match rule {
            CandidateRule::Fail => Err(ArchiveError::Ambiguous(list(
                &mut many
                    .iter()
                    .map(|c| format!("{} ({} bytes)", c.name, c.size)),
            ))),
            CandidateRule::First => Ok(many[0].clone()),
            CandidateRule::Largest => Ok(many
                .iter()
                .max_by_key(|c| c.size)
                .expect("not empty")
                .clone()),
        },
    }
}

#[cfg(test)]
mod tests;
