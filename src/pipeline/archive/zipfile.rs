//! Reads a zip (needs seeking, so it works on the file on disk), refusing
//! hostile entries and keeping only what could be the disk image.

use std::io::{Read, Seek};
use std::path::Path;

use super::guard::{link_escapes, safe_relative, Budget, Metered};
use super::{take_file, ArchiveError, Listing};

const S_IFMT: u32 = 0o170_000;

pub(super) fn unpack<R: Read + Seek>(
    input: R,
    dest: &Path,
    budget: &Budget,
) -> Result<Listing, ArchiveError> {
    let mut archive = zip::ZipArchive::new(input).map_err(corrupt)?;
    let mut listing = Listing::default();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| match e {
            zip::result::ZipError::UnsupportedArchive(m)
                if m.contains("ncrypt") || m.contains("assword") =>
            {
                ArchiveError::Encrypted(format!("entry #{i}"))
            }
            e => corrupt(e),
        })?;
        let name = entry.name().map_err(corrupt)?.into_owned();
        let rel = safe_relative(name.trim_end_matches('/')).map_err(|e| match e {
            ArchiveError::UnsafePath { why, .. } => ArchiveError::UnsafePath {
                name: name.clone(),
                why,
            },
            e => e,
        })?;
        listing.entries += 1;
        if entry.encrypted() {
            return Err(ArchiveError::Encrypted(name));
        }
        let file_type = entry.unix_mode().map(|m| m & S_IFMT).unwrap_or(0);
        let special = match file_type {
            0o020_000 => Some("character device"),
            0o060_000 => Some("block device"),
            0o010_000 => Some("named pipe"),
            0o140_000 => Some("socket"),
            _ => None,
        };
        if let Some(kind) = special {
            return Err(ArchiveError::Special {
                name,
                kind: kind.to_string(),
            });
        }
        if entry.is_symlink() {
            // A zip symlink's data is its target; it is tiny or it is not a link.
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| budget.explain(e))?;
            if target.is_empty() || link_escapes(&rel, Path::new(&target)) {
                return Err(ArchiveError::LinkEscapes {
                    name,
                    kind: "symlink",
                    target,
                });
            }
            listing.skipped.push(format!("{name} (symlink)"));
            continue;
        }
        if entry.is_dir() {
            continue;
        }
        let declared = entry.size();
        let mut metered = Metered::new(&mut entry, budget);
        take_file(&mut listing, &name, &mut metered, declared, dest, budget)?;
    }
    Ok(listing)
}

fn corrupt(e: zip::result::ZipError) -> ArchiveError {
    match e {
        zip::result::ZipError::Io(io) => ArchiveError::from_read(io),
        e => ArchiveError::Corrupt(e.to_string()),
    }
}
