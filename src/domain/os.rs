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
#[error("{0:?} is not an OS family (linux or windows)")]
pub struct OsFamilyError(pub String);

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
}
