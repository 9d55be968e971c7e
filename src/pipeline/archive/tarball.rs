//! Streams a tar (plain or decompressed on the fly) entry by entry, refusing
//! hostile entries and keeping only what could be the disk image or its OVF.

use std::io::Read;
use std::path::Path;

use tar::EntryType;

use super::guard::{link_escapes, safe_relative, Budget};
use super::{take_file, ArchiveError, Listing};

pub(super) fn unpack<R: Read>(
    stream: R,
    dest: &Path,
    budget: &Budget,
) -> Result<Listing, ArchiveError> {
    let mut archive = tar::Archive::new(stream);
    let mut listing = Listing::default();
    let entries = archive.entries().map_err(|e| budget.explain(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| budget.explain(e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = safe_relative(&name)?;
        listing.entries += 1;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let declared = entry.size();
                take_file(&mut listing, &name, &mut entry, declared, dest, budget)?;
            }
            EntryType::Directory | EntryType::XGlobalHeader => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| budget.explain(e))?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let (label, escapes) = if kind == EntryType::Symlink {
                    ("symlink", link_escapes(&rel, &target))
                } else {
                    // Hard link targets are named from the archive root.
                    ("hardlink", link_escapes(Path::new("x"), &target))
                };
                if escapes || target.as_os_str().is_empty() {
                    return Err(ArchiveError::LinkEscapes {
                        name,
                        kind: label,
                        target: target.display().to_string(),
                    });
                }
                // Links are never created; one inside the archive is just not extracted.
                listing.skipped.push(format!("{name} ({label})"));
            }
            EntryType::Char => return Err(special(name, "character device")),
            EntryType::Block => return Err(special(name, "block device")),
            EntryType::Fifo => return Err(special(name, "named pipe")),
            other => return Err(special(name, &format!("tar entry of type {other:?}"))),
        }
    }
    Ok(listing)
}

fn special(name: String, kind: &str) -> ArchiveError {
    ArchiveError::Special {
        name,
        kind: kind.to_string(),
    }
}
