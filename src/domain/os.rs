//! The guest's operating-system family: it picks the remote shell (SSH or
//! WinRM), the guest customization (cloud-init or sysprep) and the agent profile.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    #[default]
    Linux,
    Windows,
}

impl OsFamily {
    pub const ALL: [OsFamily; 2] = [OsFamily::Linux, OsFamily::Windows];

    pub fn as_str(&self) -> &'static str {
        match self {
            OsFamily::Linux => "linux",
            OsFamily::Windows => "windows",
        }
    }
}

impl fmt::Display for OsFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an OS family (auto, linux or windows)")]
pub struct OsFamilyError(pub String);

/// What the submitter asked for: a family, or `auto` — detected from the
/// image's partitions by the inspect stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OsChoice {
    #[default]
    Auto,
    Family(OsFamily),
}

impl OsChoice {
    pub fn as_str(&self) -> &'static str {
        match self {
            OsChoice::Auto => "auto",
            OsChoice::Family(f) => f.as_str(),
        }
    }

    /// The choice recorded in a job's options (absent: auto).
    pub fn of_options(options: &serde_json::Value) -> OsChoice {
        options
            .get("os")
            .and_then(serde_json::Value::as_str)
            .and_then(|o| o.parse().ok())
            .unwrap_or_default()
    }

    /// The family a job runs as: the choice, else what was detected, else
    /// Linux (the SSH path says clearly when a guest does not answer).
    pub fn resolve(self, detected: Option<OsFamily>) -> OsFamily {
        match self {
            OsChoice::Family(f) => f,
            OsChoice::Auto => detected.unwrap_or_default(),
        }
    }
}

/// The family the inspect stage detected, from its recorded detail.
pub fn detected_os(inspect_detail: &serde_json::Value) -> Option<OsFamily> {
    inspect_detail["guest_os"]["family"]
        .as_str()
        .and_then(|f| f.parse().ok())
}

/// The family a job scans as, given its options and what the inspect stage
/// recorded (None until it has run): the family (`auto` while pending), how it
/// was decided (chosen | detected | assumed | pending) and the disk's evidence.
pub fn effective_os(
    options: &serde_json::Value,
    inspected: Option<&serde_json::Value>,
) -> (String, &'static str, Option<String>) {
    let evidence = inspected.and_then(|d| {
        let g = &d["guest_os"];
        g["evidence"]
            .as_str()
            .or(g["error"].as_str())
            .map(str::to_string)
    });
    let detected = inspected.and_then(detected_os);
    let (family, source) = match (OsChoice::of_options(options), inspected) {
        (OsChoice::Family(f), _) => (f.as_str(), "chosen"),
        (OsChoice::Auto, None) => ("auto", "pending"),
        (OsChoice::Auto, Some(_)) if detected.is_some() => {
            (OsChoice::Auto.resolve(detected).as_str(), "detected")
        }
        (OsChoice::Auto, Some(_)) => (OsChoice::Auto.resolve(None).as_str(), "assumed"),
    };
    (family.to_string(), source, evidence)
}

impl FromStr for OsChoice {
    type Err = OsFamilyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(OsChoice::Auto)
        } else {
            s.parse().map(OsChoice::Family)
        }
    }
}

impl FromStr for OsFamily {
    type Err = OsFamilyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linux" => Ok(OsFamily::Linux),
            "windows" => Ok(OsFamily::Windows),
            _ => Err(OsFamilyError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_rejects_others() {
        assert_eq!("Windows".parse::<OsFamily>(), Ok(OsFamily::Windows));
        assert_eq!(" linux ".parse::<OsFamily>(), Ok(OsFamily::Linux));
        assert!("macos".parse::<OsFamily>().is_err());
    }

    #[test]
    fn auto_resolves_to_the_detected_family_else_linux() {
        let auto: OsChoice = " Auto".parse().unwrap();
        assert_eq!(auto, OsChoice::Auto);
        assert_eq!(auto.resolve(Some(OsFamily::Windows)), OsFamily::Windows);
        assert_eq!(auto.resolve(None), OsFamily::Linux);
        let linux: OsChoice = "linux".parse().unwrap();
        assert_eq!(linux.resolve(Some(OsFamily::Windows)), OsFamily::Linux);
        assert_eq!(
            "beos".parse::<OsChoice>().unwrap_err().to_string(),
            "\"beos\" is not an OS family (auto, linux or windows)"
        );
    }
}
