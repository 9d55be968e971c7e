//! The Windows agent as Flexera ships it: a bundle (zip) of
//! `FlexNet Inventory Agent.msi`, `Data1.cab`, the beacon settings in
//! `InstallFlexNetInvAgent.mst` and/or `mgssetup.ini`, and optional
//! bootstrap files (`*.nds` schedule, `*.osd`/`*.ndc` failover settings);
//! checked on the host before it goes near a VM, and the msiexec command
//! line Flexera generates for it (flexera.md 1b).

use std::path::Path;

/// What a bundle holds, by file name (all in the MSI's folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The folder inside the zip holding the MSI ("" at the top).
    pub folder: String,
    pub msi: String,
    pub transform: Option<String>,
    pub setup_ini: bool,
    /// File stems: BOOTSTRAPSCHEDULE / BOOTSTRAPFAILOVERSETTINGS values.
    pub schedule: Option<String>,
    pub failover: Option<String>,
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the Windows agent bundle {path} is not a zip: {reason} (Flexera's bundle: a zip of FlexNet Inventory Agent.msi, Data1.cab, InstallFlexNetInvAgent.mst and/or mgssetup.ini)")]
    NotZip { path: String, reason: String },
    #[error("the Windows agent bundle has an unsafe entry {0:?} (absolute, or with ..)")]
    UnsafeEntry(String),
    #[error("the Windows agent bundle has no {0}")]
    Missing(String),
    #[error("the Windows agent bundle has no beacon settings: add InstallFlexNetInvAgent.mst or mgssetup.ini (Flexera's bootstrap files), or set download_url (DEPLOYSERVERURL)")]
    NoBeacon,
}

pub const MSI_NAME: &str = "FlexNet Inventory Agent.msi";
const CAB_NAME: &str = "Data1.cab";
const MST_NAME: &str = "InstallFlexNetInvAgent.mst";
const INI_NAME: &str = "mgssetup.ini";

/// Reads the zip's directory (not its contents) and finds Flexera's files.
pub fn inspect(path: &Path, has_deploy_url: bool) -> Result<Bundle, BundleError> {
    let not_zip = |reason: String| BundleError::NotZip {
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| not_zip(e.to_string()))?;
    let zip = zip::ZipArchive::new(f).map_err(|e| not_zip(e.to_string()))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| not_zip(e.to_string()))?;
    from_names(&names, has_deploy_url)
}

/// Finds Flexera's files among the zip's entry names.
pub fn from_names(names: &[String], has_deploy_url: bool) -> Result<Bundle, BundleError> {
    for n in names {
        let unsafe_name = n.starts_with('/')
            || n.starts_with('\\')
            || n.contains(':')
            || n.split(['/', '\\']).any(|c| c == "..");
        if unsafe_name {
            return Err(BundleError::UnsafeEntry(n.clone()));
        }
    }
    let split = |n: &str| -> (String, String) {
        let n = n.replace('\\', "/");
        match n.rsplit_once('/') {
            Some((d, f)) => (d.to_string(), f.to_string()),
            None => (String::new(), n),
        }
    };
    // The MSI's folder is the bundle; the MSI is the one named by Flexera,
    // else the only .msi there is.
    let msis: Vec<(String, String)> = names
        .iter()
        .map(|n| split(n))
        .filter(|(_, f)| f.to_ascii_lowercase().ends_with(".msi"))
        .collect();
    let (folder, msi) = msis
        .iter()
        .find(|(_, f)| f.eq_ignore_ascii_case(MSI_NAME))
        .or(if msis.len() == 1 { msis.first() } else { None })
        .cloned()
        .ok_or_else(|| BundleError::Missing(MSI_NAME.into()))?;
    let files: Vec<String> = names
        .iter()
        .map(|n| split(n))
        .filter(|(d, f)| *d == folder && !f.is_empty())
        .map(|(_, f)| f)
        .collect();
    let find = |want: &str| files.iter().find(|f| f.eq_ignore_ascii_case(want)).cloned();
    let stem_with = |exts: &[&str]| {
        files.iter().find_map(|f| {
            let lower = f.to_ascii_lowercase();
            exts.iter()
                .find(|e| lower.ends_with(*e))
                .map(|e| f[..f.len() - e.len()].to_string())
        })
    };
    if find(CAB_NAME).is_none() {
        return Err(BundleError::Missing(format!(
            "{CAB_NAME} (the MSI's files) beside {msi}"
        )));
    }
    let transform = find(MST_NAME).or_else(|| {
        files
            .iter()
            .find(|f| f.to_ascii_lowercase().ends_with(".mst"))
            .cloned()
    });
    let setup_ini = find(INI_NAME).is_some();
    if transform.is_none() && !setup_ini && !has_deploy_url {
        return Err(BundleError::NoBeacon);
    }
    Ok(Bundle {
        folder,
        msi,
        transform,
        setup_ini,
        schedule: stem_with(&[".nds"]),
        failover: stem_with(&[".osd", ".ndc"]),
        files,
    })
}

/// `"value"` for an msiexec command line (quotes doubled inside).
pub fn msi_value(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

fn win_join(dir: &str, name: &str) -> String {
    format!("{}\\{name}", dir.trim_end_matches(['\\', '/']))
}

/// Flexera's silent install of the bundle unpacked in `dir`:
/// `msiexec /i "FlexNet Inventory Agent.msi" TRANSFORMS=… GENERATEINVENTORY=YES
/// APPLYPOLICY=YES BOOTSTRAPSCHEDULE=… BOOTSTRAPFAILOVERSETTINGS=…
/// REBOOT=ReallySuppress /l*v … /qn`, with DEPLOYSERVERURL when set and the
/// profile's extra properties last.
pub fn msiexec_args(
    bundle: &Bundle,
    dir: &str,
    log: &str,
    deploy_server_url: &str,
    extra: &[(String, String)],
) -> String {
    let mut a = format!("/i {}", msi_value(&win_join(dir, &bundle.msi)));
    if let Some(t) = &bundle.transform {
        a.push_str(&format!(" TRANSFORMS={}", msi_value(&win_join(dir, t))));
    }
    a.push_str(" GENERATEINVENTORY=YES APPLYPOLICY=YES");
    if let Some(s) = &bundle.schedule {
        a.push_str(&format!(" BOOTSTRAPSCHEDULE={}", msi_value(s)));
    }
    if let Some(s) = &bundle.failover {
        a.push_str(&format!(" BOOTSTRAPFAILOVERSETTINGS={}", msi_value(s)));
    }
    if !deploy_server_url.is_empty() {
        a.push_str(&format!(
            " DEPLOYSERVERURL={}",
            msi_value(deploy_server_url)
        ));
    }
    for (k, v) in extra {
        a.push_str(&format!(" {k}={}", msi_value(v)));
    }
    a.push_str(&format!(
        " REBOOT=ReallySuppress /l*v {} /qn",
        msi_value(log)
    ));
    a
}

/// Unpacks the uploaded zip into `dest` (emptied first) and lists the
/// MSI's folder, one `name size` line each.
pub fn expand_script(zip: &str, dest: &str, folder: &str) -> String {
    use crate::remote::winrm::ps_quote;
    let listed = if folder.is_empty() {
        dest.to_string()
    } else {
        win_join(dest, &folder.replace('/', "\\"))
    };
    format!(
        "$ErrorActionPreference = 'Stop'\n$zip = {}\n$dest = {}\nif (Test-Path -LiteralPath $dest) {{ Remove-Item -LiteralPath $dest -Recurse -Force }}\nExpand-Archive -LiteralPath $zip -DestinationPath $dest -Force\nGet-ChildItem -LiteralPath {} -File | ForEach-Object {{ \"$($_.Name) $($_.Length)\" }}",
        ps_quote(zip),
        ps_quote(dest),
        ps_quote(&listed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_flexeras_files_and_builds_its_command_line() {
        let b = from_names(
            &names(&[
                "agent/",
                "agent/FlexNet Inventory Agent.msi",
                "agent/Data1.cab",
                "agent/InstallFlexNetInvAgent.mst",
                "agent/mgssetup.ini",
                "agent/Bootstrap Machine Schedule.nds",
                "agent/Bootstrap Failover Settings.osd",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(b.folder, "agent");
        assert_eq!(b.schedule.as_deref(), Some("Bootstrap Machine Schedule"));
        let a = msiexec_args(&b, r"C:\T\agent\agent", r"C:\T\msiexec.log", "", &[]);
        assert_eq!(
            a,
            r#"/i "C:\T\agent\agent\FlexNet Inventory Agent.msi" TRANSFORMS="C:\T\agent\agent\InstallFlexNetInvAgent.mst" GENERATEINVENTORY=YES APPLYPOLICY=YES BOOTSTRAPSCHEDULE="Bootstrap Machine Schedule" BOOTSTRAPFAILOVERSETTINGS="Bootstrap Failover Settings" REBOOT=ReallySuppress /l*v "C:\T\msiexec.log" /qn"#
        );
    }

    #[test]
    fn refuses_bundles_that_cannot_install_a_working_agent() {
        let only_msi = names(&["FlexNet Inventory Agent.msi", "mgssetup.ini"]);
        assert!(
            matches!(from_names(&only_msi, false), Err(BundleError::Missing(m)) if m.starts_with("Data1.cab"))
        );
        let no_beacon = names(&["FlexNet Inventory Agent.msi", "Data1.cab"]);
        assert_eq!(from_names(&no_beacon, false), Err(BundleError::NoBeacon));
        let b = from_names(&no_beacon, true).unwrap();
        assert!(
            msiexec_args(&b, "C:\\A", "C:\\l", "http://b/ManageSoftDL", &[])
                .contains(" DEPLOYSERVERURL=\"http://b/ManageSoftDL\" ")
        );
        let slip = names(&["../evil.msi", "Data1.cab"]);
        assert_eq!(
            from_names(&slip, true),
            Err(BundleError::UnsafeEntry("../evil.msi".into()))
        );
        assert_eq!(
            from_names(&names(&["readme.txt"]), true),
            Err(BundleError::Missing(MSI_NAME.into()))
        );
    }
}
