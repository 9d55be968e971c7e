use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

/// Where an image comes from: http(s), sftp, file, or a plain absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceUrl(Url);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceUrlError {
    #[error("URL is empty")]
    Empty,
    #[error("URL {0:?} is too long (at most 4096 characters)")]
    TooLong(usize),
    #[error("not a valid URL: {input:?} ({reason})")]
    Invalid { input: String, reason: String },
    #[error(
        "unsupported URL scheme {0:?}: use http://, https://, sftp://, file:// or an absolute path"
    )]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("URL {0:?} names no file (the path ends in '/')")]
    NoFile(String),
}

impl SourceUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }

    /// The last path segment, percent-decoded: the image's file name.
    pub fn file_name(&self) -> String {
        let seg = self
            .0
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("");
        percent_decode(seg)
    }

    /// The URL without user-info or secret query parameters, safe for logs and pages.
    pub fn redacted(&self) -> String {
        super::redact_url(self.0.as_str())
    }
}

/// Percent-decodes a URL path segment (lossy UTF-8).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromStr for SourceUrl {
    type Err = SourceUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SourceUrlError::Empty);
        }
        if s.len() > 4096 {
            return Err(SourceUrlError::TooLong(s.len()));
        }
        let url = if s.starts_with('/') {
            Url::from_file_path(s).map_err(|_| SourceUrlError::Invalid {
                input: s.to_string(),
                reason: "not an absolute file path".into(),
            })?
        } else {
            Url::parse(s).map_err(|e| SourceUrlError::Invalid {
                input: s.to_string(),
                reason: e.to_string(),
            })?
        };
        match url.scheme() {
            "http" | "https" | "sftp" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(SourceUrlError::NoHost(s.to_string()));
                }
            }
            "file" => {}
            other => return Err(SourceUrlError::Scheme(other.to_string())),
        }
        if url.path().ends_with('/') || url.path().is_empty() {
            return Err(SourceUrlError::NoFile(s.to_string()));
        }
        Ok(SourceUrl(url))
    }
}

impl TryFrom<String> for SourceUrl {
    type Error = SourceUrlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SourceUrl> for String {
    fn from(u: SourceUrl) -> String {
        u.0.to_string()
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_schemes_we_fetch() {
        for ok in [
            "https://cloud.example/images/rocky-9.qcow2",
            "http://10.0.0.5:8080/a/b.img?x=1",
            "sftp://filer.example/exports/win2022.vhdx",
            "file:///srv/images/debian.raw",
            "/srv/images/debian.raw",
        ] {
            ok.parse::<SourceUrl>()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        assert_eq!("".parse::<SourceUrl>(), Err(SourceUrlError::Empty));
        assert!(matches!(
            "ftp://x/y.img".parse::<SourceUrl>(),
            Err(SourceUrlError::Scheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            "not a url".parse::<SourceUrl>(),
            Err(SourceUrlError::Invalid { .. })
        ));
        assert!(matches!(
            "https://example.com/dir/".parse::<SourceUrl>(),
            Err(SourceUrlError::NoFile(_))
        ));
        assert!(matches!(
            "javascript:alert(1)".parse::<SourceUrl>(),
            Err(SourceUrlError::Scheme(_))
        ));
    }

    #[test]
    fn names_the_file_and_hides_passwords() {
        let u: SourceUrl = "https://bob:s3cret@h.example/x/My%20Image.qcow2"
            .parse()
            .unwrap();
        assert_eq!(u.file_name(), "My Image.qcow2");
        assert!(!u.redacted().contains("s3cret"));
    }
}
