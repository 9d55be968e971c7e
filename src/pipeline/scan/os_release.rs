//! The guest's `/etc/os-release` (os-release(5)): parsed as the shell
//! assignments it is, and used to choose the agent package for the guest's
//! family (rpm for the RHEL family, deb for Debian/Ubuntu).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{default_install_command, AgentProfile, PackageConfig};

/// The fields of an os-release file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub fields: BTreeMap<String, String>,
}

impl OsRelease {
    /// Parses `KEY=value` lines: values unquoted, 'single' or "double"
    /// quoted (with \" \\ \$ \` escapes), comments and blank lines skipped;
    /// a line that is not an assignment is ignored, as systemd does.
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, raw)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let valid_key = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                continue;
            }
            if let Some(v) = shell_value(raw.trim()) {
                fields.insert(key.to_string(), v);
            }
        }
        OsRelease { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// `ID`, lowercased; os-release(5) says "linux" when unset.
    pub fn id(&self) -> String {
        self.get("ID")
            .filter(|s| !s.is_empty())
            .unwrap_or("linux")
            .to_ascii_lowercase()
    }

    /// `ID_LIKE`: the distributions this one derives from, closest first.
    pub fn id_like(&self) -> Vec<String> {
        self.get("ID_LIKE")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect()
    }

    pub fn pretty_name(&self) -> String {
        self.get("PRETTY_NAME")
            .or_else(|| self.get("NAME"))
            .unwrap_or("unknown OS")
            .to_string()
    }

    /// The image family for statistics: `ID` and the major `VERSION_ID`
    /// ("debian 12", "rocky 9"), else the pretty name.
    pub fn family(&self) -> String {
        match (self.get("ID"), self.get("VERSION_ID")) {
            (Some(id), Some(v)) => format!("{id} {}", v.split('.').next().unwrap_or(v)),
            (Some(id), None) => id.to_string(),
            _ => self.pretty_name(),
        }
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }

    pub fn from_json(v: &Value) -> Option<OsRelease> {
        let m = v.as_object()?;
        Some(OsRelease {
            fields: m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        })
    }

    /// `ID=… ID_LIKE=…` for messages.
    pub fn ids_line(&self) -> String {
        let like = self.id_like();
        if like.is_empty() {
            format!("ID={}", self.id())
        } else {
            format!("ID={}, ID_LIKE={}", self.id(), like.join(" "))
        }
    }
}

/// One shell word (the value of an assignment), or None when it is malformed
/// (an unterminated quote).
fn shell_value(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        '\n' => {}
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    c => out.push(c),
                }
            },
            '\\' => out.push(chars.next()?),
            // An unquoted blank ends the word; what follows may be a comment.
            c if c.is_whitespace() => break,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The package chosen for a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenPackage {
    /// `packages.<key>`, or None for the profile's own `installer`.
    pub key: Option<String>,
    pub installer: String,
    pub install_command: String,
    pub pre_install: Vec<String>,
    /// Why it was chosen ("ID=debian matches packages.deb").
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the guest is {pretty} ({ids}): no agent package is configured for it (configured: {configured}); add [agent.profiles.linux.packages.{suggest}] with its installer")]
pub struct NoPackage {
    pub pretty: String,
    pub ids: String,
    pub configured: String,
    pub suggest: String,
}

/// The profile's package for this guest: an entry of `packages` whose IDs
/// hold the guest's ID, else one holding the nearest of its ID_LIKE, else
/// the profile's own `installer`.
pub fn choose_package(profile: &AgentProfile, os: &OsRelease) -> Result<ChosenPackage, NoPackage> {
    let id = os.id();
    let wanted: Vec<(String, String)> = std::iter::once(("ID".to_string(), id.clone()))
        .chain(os.id_like().into_iter().map(|l| ("ID_LIKE".to_string(), l)))
        .collect();
    for (field, want) in &wanted {
        let hit = profile
            .packages
            .iter()
            .find(|(k, p)| p.ids(k).iter().any(|i| i == want));
        if let Some((key, p)) = hit {
            return Ok(chosen(
                Some(key.clone()),
                p,
                &profile.pre_install,
                format!("{field} {want} matches packages.{key}"),
            ));
        }
    }
    if !profile.installer.is_empty() {
        let p = PackageConfig {
            installer: profile.installer.clone(),
            install_command: profile.install_command.clone(),
            pre_install: Vec::new(),
            os_ids: Vec::new(),
        };
        let reason = if profile.packages.is_empty() {
            "the profile's installer".to_string()
        } else {
            format!(
                "no package matches {}: the profile's installer",
                os.ids_line()
            )
        };
        return Ok(chosen(None, &p, &profile.pre_install, reason));
    }
    let family = |i: &str| PackageConfig::default().ids("deb").iter().any(|d| d == i);
    let rpm = |i: &str| PackageConfig::default().ids("rpm").iter().any(|d| d == i);
    let suggest = wanted
        .iter()
        .find_map(|(_, w)| {
            if family(w) {
                Some("deb")
            } else if rpm(w) {
                Some("rpm")
            } else {
                None
            }
        })
        .map(str::to_string)
        .unwrap_or(id);
    Err(NoPackage {
        pretty: os.pretty_name(),
        ids: os.ids_line(),
        configured: if profile.packages.is_empty() {
            "none".into()
        } else {
            profile
                .packages
                .keys()
                .map(|k| format!("packages.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        suggest,
    })
}

fn chosen(
    key: Option<String>,
    p: &PackageConfig,
    common_pre: &[String],
    reason: String,
) -> ChosenPackage {
    let install_command = if p.install_command.is_empty() {
        match key.as_deref() {
            Some("rpm") => crate::config::RPM_INSTALL.to_string(),
            Some("deb") => crate::config::DEB_INSTALL.to_string(),
            _ => default_install_command(&p.installer).to_string(),
        }
    } else {
        p.install_command.clone()
    };
    ChosenPackage {
        key,
        installer: p.installer.clone(),
        install_command,
        pre_install: common_pre.iter().chain(&p.pre_install).cloned().collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    const ROCKY: &str =
        "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.4\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";

    #[test]
    fn parses_quotes_escapes_and_comments() {
        let os = OsRelease::parse(
            "# a comment\n\n  NAME='Single Quoted'\nPRETTY=\"say \\\"hi\\\" \\$HOME\"\nID=ubuntu # trailing\nID_LIKE=debian\nnot an assignment\n1BAD=x\nBROKEN=\"unterminated\n",
        );
        assert_eq!(os.get("NAME"), Some("Single Quoted"));
        assert_eq!(os.get("PRETTY"), Some("say \"hi\" $HOME"));
        assert_eq!(os.id(), "ubuntu");
        assert_eq!(os.id_like(), ["debian"]);
        assert_eq!(os.get("1BAD"), None);
        assert_eq!(os.get("BROKEN"), None);
        assert_eq!(OsRelease::parse("").id(), "linux");
    }

    fn profile(keys: &[&str]) -> AgentProfile {
        let mut p = AgentProfile::default();
        for k in keys {
            p.packages.insert(
                k.to_string(),
                PackageConfig {
                    installer: format!("/srv/agent.{k}"),
                    ..PackageConfig::default()
                },
            );
        }
        p
    }

    #[test]
    fn chooses_the_package_by_id_then_id_like() {
        let p = profile(&["deb", "rpm"]);
        let deb = choose_package(&p, &OsRelease::parse(DEBIAN)).unwrap();
        assert_eq!(deb.key.as_deref(), Some("deb"));
        assert_eq!(deb.install_command, "dpkg -i {installer}");
        let rpm = choose_package(&p, &OsRelease::parse(ROCKY)).unwrap();
        assert_eq!(
            rpm.install_command,
            "rpm --upgrade --oldpackage --verbose --hash {installer}"
        );
        assert_eq!(rpm.reason, "ID rocky matches packages.rpm");
        // An ID of its own (CentOS with its vault step) wins over the family.
        let mut p = profile(&["rpm", "centos"]);
        p.packages.get_mut("centos").unwrap().pre_install = vec!["rpm -i vault.rpm".into()];
        let centos = OsRelease::parse("ID=\"centos\"\nID_LIKE=\"rhel fedora\"\n");
        let c = choose_package(&p, &centos).unwrap();
        assert_eq!(c.key.as_deref(), Some("centos"));
        assert_eq!(c.pre_install, ["rpm -i vault.rpm"]);
        // An ubuntu derivative reaches deb through ID_LIKE.
        let mint = OsRelease::parse("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n");
        let d = choose_package(&profile(&["deb"]), &mint).unwrap();
        assert_eq!(d.reason, "ID_LIKE ubuntu matches packages.deb");
    }

    #[test]
    fn a_family_without_a_package_is_a_clear_error() {
        let e = choose_package(&profile(&["rpm"]), &OsRelease::parse(DEBIAN)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest is Debian GNU/Linux 12 (bookworm) (ID=debian): no agent package is configured for it (configured: packages.rpm); add [agent.profiles.linux.packages.deb] with its installer"
        );
        // The profile's own installer is the fallback.
        let mut p = profile(&["rpm"]);
        p.installer = "/srv/agent.sh".into();
        let f = choose_package(&p, &OsRelease::parse(DEBIAN)).unwrap();
        assert_eq!(
            (f.key, f.install_command.as_str()),
            (None, "sh {installer}")
        );
    }

    mod prop {
        use super::super::OsRelease;
        use proptest::prelude::*;

        fn double_quoted(v: &str) -> String {
            let mut s = String::from("\"");
            for c in v.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
            s
        }

        proptest! {
            #[test]
            fn quoted_values_round_trip(v in "[ -~]{0,40}", key in "[A-Z_][A-Z0-9_]{0,12}") {
                let text = format!("# comment\n{key}={}\n", double_quoted(&v));
                let os = OsRelease::parse(&text);
                prop_assert_eq!(os.get(&key), Some(v.as_str()));
                if !v.contains('\'') {
                    let os = OsRelease::parse(&format!("{key}='{v}'  # trailing\n"));
                    prop_assert_eq!(os.get(&key), Some(v.as_str()));
                }
            }

            #[test]
            fn any_text_parses_without_panicking(text in "(?s).{0,300}") {
                let os = OsRelease::parse(&text);
                let _ = (os.id(), os.id_like(), os.pretty_name());
            }
        }
    }
}
