//! What a watch looks at, and the pure parts of reading it: the newest
//! matching name in a directory listing, the image a "latest" pointer
//! names. No I/O here, so every hostile listing can be tested.

use std::cmp::Ordering;
use std::fmt;

use url::Url;

/// How a watch finds the image it scans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// The URL is the image. A change is a new ETag, Last-Modified or size
    /// (checked with a conditional GET), or a redirect to another file (a
    /// "latest" link that redirects to the versioned image).
    Url,
    /// The URL's content names the image: its first line is a URL or a file
    /// name relative to the pointer (e.g. a `LATEST` file).
    Pointer,
    /// The URL is a directory listing; the image is the newest file name
    /// matching `pattern` (`*` and `?` wildcards), newest by version order.
    Listing { pattern: String },
}

impl WatchKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WatchKind::Url => "url",
            WatchKind::Pointer => "pointer",
            WatchKind::Listing { .. } => "listing",
        }
    }

    pub fn pattern(&self) -> Option<&str> {
        match self {
            WatchKind::Listing { pattern } => Some(pattern),
            _ => None,
        }
    }

    /// From the stored (kind, pattern) pair, or what a user sent.
    pub fn parse(kind: &str, pattern: Option<&str>) -> Result<WatchKind, String> {
        let pattern = pattern.map(str::trim).filter(|p| !p.is_empty());
        match (kind.trim(), pattern) {
            ("url", None) => Ok(WatchKind::Url),
            ("pointer", None) => Ok(WatchKind::Pointer),
            ("listing", Some(p)) => {
                check_pattern(p)?;
                Ok(WatchKind::Listing {
                    pattern: p.to_string(),
                })
            }
            ("listing", None) => Err(
                "pattern: a listing watch needs a file-name pattern such as \"Rocky-9-GenericCloud-*.qcow2\""
                    .into(),
            ),
            ("url" | "pointer", Some(_)) => {
                Err("pattern: only a listing watch takes a pattern".into())
            }
            (other, _) => Err(format!(
                "kind: {other:?} is not a watch kind (url, pointer or listing)"
            )),
        }
    }
}

impl fmt::Display for WatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchKind::Listing { pattern } => write!(f, "listing of {pattern}"),
            k => f.write_str(k.as_str()),
        }
    }
}

fn check_pattern(p: &str) -> Result<(), String> {
    if p.len() > 255 {
        return Err("pattern: longer than 255 characters".into());
    }
    if p.contains('/') {
        return Err("pattern: matches file names, so it cannot contain '/'".into());
    }
    Ok(())
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative wildcard match with one backtrack point: linear-ish, no
    // recursion a hostile name could blow up.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Version order of file names: runs of digits compare as numbers, so
/// `9.10` is newer than `9.9` and `20240609` than `20231101`.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

/// The file names a directory listing links to: `href` targets of an HTML
/// index (Apache, nginx, python's http.server), or whitespace-separated
/// names of a plain-text one. Query strings, sub-directories, parent links
/// and names on other hosts are left out.
pub fn listed_names(base: &Url, body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = body.to_ascii_lowercase();
    if lower.contains("href") {
        // ASCII lower-casing keeps byte offsets, so `lower`'s match is `body`'s.
        for (i, _) in lower.match_indices("href") {
            let Some(after) = body[i + 4..].trim_start().strip_prefix('=') else {
                continue;
            };
            let after = after.trim_start();
            let (quote, after) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => (Some(q), &after[1..]),
                _ => (None, after),
            };
            let end = match quote {
                Some(q) => after.find(q),
                None => after.find(|c: char| c.is_whitespace() || c == '>'),
            }
            .unwrap_or(after.len());
            if let Some(name) = same_dir_name(base, &html_unescape(&after[..end])) {
                out.push(name);
            }
        }
    } else {
        for word in body.split_whitespace() {
            if let Some(name) = same_dir_name(base, word) {
                out.push(name);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// A link's file name when it points at a file directly inside `base`'s directory.
fn same_dir_name(base: &Url, link: &str) -> Option<String> {
    let target = base.join(link.trim()).ok()?;
    if target.origin() != base.origin() || target.query().is_some() {
        return None;
    }
    let dir = base.path().rsplit_once('/').map(|(d, _)| d)?;
    let (tdir, name) = target.path().rsplit_once('/')?;
    if tdir != dir || name.is_empty() {
        return None;
    }
    let name = crate::domain::percent_decode(name);
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// The newest name matching `pattern`.
pub fn newest_match<'a>(names: &'a [String], pattern: &str) -> Option<&'a String> {
    names
        .iter()
        .filter(|n| matches(pattern, n))
        .max_by(|a, b| version_cmp(a, b))
}

/// The image a pointer's content names: its first non-empty, non-comment
/// line, a URL or a path relative to the pointer.
pub fn pointed_url(pointer: &Url, body: &str) -> Result<Url, String> {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("the pointer is empty: its first line should name the image")?;
    if line.len() > 4096 {
        return Err("the pointer's first line is longer than 4096 characters".into());
    }
    let url = pointer
        .join(line)
        .map_err(|e| format!("the pointer names {line:?}, which is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the pointer names {}, which is not http:// or https://",
            crate::domain::redact_url(url.as_str())
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(matches(
            "Rocky-9-GenericCloud-*.qcow2",
            "Rocky-9-GenericCloud-9.4-20240609.0.x86_64.qcow2"
        ));
        assert!(matches(
            "debian-12-*-amd64.raw",
            "debian-12-generic-amd64.raw"
        ));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "abbc"));
        assert!(!matches("*.qcow2", "x.qcow2.CHECKSUM"));
        assert!(matches("*", ""));
        assert!(matches("**a*b", "xaab"));
    }

    #[test]
    fn version_order_compares_digit_runs_as_numbers() {
        let mut v = vec![
            "img-9.10.qcow2",
            "img-9.9.qcow2",
            "img-10.0.qcow2",
            "img-9.09.qcow2",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "img-9.9.qcow2",
                "img-9.09.qcow2",
                "img-9.10.qcow2",
                "img-10.0.qcow2"
            ]
        );
        assert_eq!(version_cmp("a-20240609", "a-20231101"), Ordering::Greater);
    }

    #[test]
    fn reads_html_and_plain_listings() {
        let base = Url::parse("http://h.example/images/rocky/").unwrap();
        // The shape of python's http.server and nginx autoindex pages.
        let html = r#"<html><body><h1>Index of /images/rocky/</h1><a href="../">../</a>
<a href="Rocky-9-GenericCloud-9.3.qcow2">Rocky-9-GenericCloud-9.3.qcow2</a>
<a href='Rocky-9-GenericCloud-9.4.qcow2'>x</a>
<a href="/images/rocky/Rocky-9-GenericCloud-9.10.qcow2">x</a>
<a href="sub/">sub/</a><a href="?C=M;O=A">sort</a>
<a href="http://evil.example/images/rocky/Rocky-9-GenericCloud-99.qcow2">x</a>
<a href="Rocky%209%20space.qcow2">x</a></body></html>"#;
        let names = listed_names(&base, html);
        assert_eq!(
            names,
            [
                "Rocky 9 space.qcow2",
                "Rocky-9-GenericCloud-9.10.qcow2",
                "Rocky-9-GenericCloud-9.3.qcow2",
                "Rocky-9-GenericCloud-9.4.qcow2"
            ]
        );
        assert_eq!(
            newest_match(&names, "Rocky-9-GenericCloud-*.qcow2").unwrap(),
            "Rocky-9-GenericCloud-9.10.qcow2"
        );
        assert!(newest_match(&names, "Alma-*").is_none());
        let plain = "a-1.raw\na-2.raw  ../etc/passwd\n";
        assert_eq!(listed_names(&base, plain), ["a-1.raw", "a-2.raw"]);
    }

    #[test]
    fn a_pointer_names_a_url_or_a_relative_file() {
        let p = Url::parse("https://h.example/rocky/LATEST").unwrap();
        assert_eq!(
            pointed_url(&p, "# newest\n\nRocky-9.5.qcow2\n")
                .unwrap()
                .as_str(),
            "https://h.example/rocky/Rocky-9.5.qcow2"
        );
        assert_eq!(
            pointed_url(&p, "https://mirror.example/r.qcow2")
                .unwrap()
                .as_str(),
            "https://mirror.example/r.qcow2"
        );
        assert!(pointed_url(&p, "\n \n").unwrap_err().contains("empty"));
        assert!(pointed_url(&p, "file:///etc/passwd")
            .unwrap_err()
            .contains("not http"));
    }

    #[test]
    fn kinds_parse_with_specific_errors() {
        assert_eq!(WatchKind::parse("url", None).unwrap(), WatchKind::Url);
        assert!(WatchKind::parse("listing", None)
            .unwrap_err()
            .starts_with("pattern:"));
        assert!(WatchKind::parse("url", Some("*.raw"))
            .unwrap_err()
            .starts_with("pattern:"));
        assert!(WatchKind::parse("listing", Some("a/b"))
            .unwrap_err()
            .contains("'/'"));
        assert!(WatchKind::parse("rss", None)
            .unwrap_err()
            .starts_with("kind:"));
    }
}
