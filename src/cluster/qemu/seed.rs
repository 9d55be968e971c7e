//! The cloud-init NoCloud seed: a small FAT volume labelled `CIDATA` holding
//! `user-data` and `meta-data`, built in memory (no mkfs, no mount, no root).

use std::io::{Cursor, Write};

/// cloud-init looks for this label (any case) on a vfat or ISO9660 volume.
pub const LABEL: &[u8; 11] = b"CIDATA     ";
const MIN_BYTES: usize = 1024 * 1024;

/// `meta-data`: the instance id (a new one makes cloud-init apply the seed) and hostname.
pub fn meta_data(instance_id: &str, hostname: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_scalar(instance_id),
        yaml_scalar(hostname)
    )
}

/// A seed volume image with `user-data` and `meta-data` (and nothing else).
pub fn nocloud_seed(user_data: &str, meta_data: &str) -> std::io::Result<Vec<u8>> {
    vfat_image(&[
        ("user-data", user_data.as_bytes()),
        ("meta-data", meta_data.as_bytes()),
    ])
}

/// A FAT volume labelled `CIDATA` holding `files` in its root directory.
pub fn vfat_image(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let payload: usize = files.iter().map(|(_, d)| d.len()).sum();
    // Room for the data, cluster slack and FAT structures; whole MiBs.
    let size = (payload * 2 + 256 * 1024).div_ceil(MIN_BYTES) * MIN_BYTES;
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*LABEL)
            .volume_id(0x5eed_0001),
    )?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        let root = fs.root_dir();
        for (name, data) in files {
            let mut f = root.create_file(name)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()?;
        }
        drop(root);
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Quotes a value for YAML unless it is plainly safe.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(img: Vec<u8>) -> (String, Option<String>, Vec<(String, String)>) {
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let root_label = fs.read_volume_label_from_root_dir().unwrap();
        let mut files = Vec::new();
        for e in fs.root_dir().iter() {
            let e = e.unwrap();
            if e.is_file() {
                let mut s = String::new();
                e.to_file().read_to_string(&mut s).unwrap();
                files.push((e.file_name(), s));
            }
        }
        files.sort();
        (label, root_label, files)
    }

    #[test]
    fn seed_is_a_cidata_volume_with_user_data_and_meta_data() {
        let user = "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nza test@vmscan\n";
        let meta = meta_data("vmscan-0001-1", "scan-host");
        let img = nocloud_seed(user, &meta).unwrap();
        assert_eq!(img.len(), 1024 * 1024);
        let (label, root_label, files) = read_back(img);
        // blkid reads the label from the root directory, older tools from the boot sector.
        assert_eq!(label, "CIDATA");
        assert_eq!(root_label.as_deref(), Some("CIDATA"));
        assert_eq!(
            files,
            vec![
                ("meta-data".to_string(), meta.clone()),
                ("user-data".to_string(), user.to_string()),
            ]
        );
        assert_eq!(
            meta,
            "instance-id: vmscan-0001-1\nlocal-hostname: scan-host\n"
        );
    }

    #[test]
    fn large_user_data_grows_the_volume() {
        let user = format!("#cloud-config\nwrite_files:\n{}", "x".repeat(3 << 20));
        let img = nocloud_seed(&user, &meta_data("i", "h")).unwrap();
        assert!(img.len() > 3 << 20);
        let (_, _, files) = read_back(img);
        assert_eq!(files[1].1.len(), user.len());
    }

    #[test]
    fn meta_data_quotes_odd_values() {
        assert_eq!(
            meta_data("a: b", "h"),
            "instance-id: \"a: b\"\nlocal-hostname: h\n"
        );
    }
}
