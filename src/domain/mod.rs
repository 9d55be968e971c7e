//! Domain types shared by every layer, each parsed once at the edge.

mod checksum;
mod ids;
mod os;
mod redact;
mod role;
mod size;
mod source;
mod state;

pub use checksum::{Checksum, ChecksumAlgo, ChecksumError, ChecksumSpec};
pub use ids::{BatchId, JobId};
pub use os::{detected_os, effective_os, OsChoice, OsFamily, OsFamilyError};
pub use redact::redact_url;
pub use role::{Role, RoleError};
pub use size::{DiskSize, DiskSizeError, MAX_DISK_BYTES};
pub use source::{percent_decode, SourceUrl, SourceUrlError};
pub use state::{JobState, StageName, StageState};

/// Milliseconds since the Unix epoch; the one time representation in the store.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats a millisecond timestamp for people (UTC, RFC 3339, second precision).
pub fn fmt_millis(ms: Millis) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// `head`, then each cause of `e` whose text it does not hold yet, joined by
/// ": " (reqwest's and lettre's Display hide the cause that says why).
pub fn with_causes(mut head: String, e: &dyn std::error::Error) -> String {
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !head.contains(&m) {
            head.push_str(": ");
            head.push_str(&m);
        }
        src = c.source();
    }
    head
}

/// Formats a byte count with binary units ("1.5 GiB").
/// Escapes text for XML (or HTML) element content and attribute values:
/// the one escaper of the SOAP clients, the Nutanix disk XML and the SVG charts.
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Formats a duration in milliseconds compactly ("850 ms", "12.3 s", "4m 05s").
pub fn fmt_duration_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_and_durations_for_people() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(fmt_duration_ms(850), "850 ms");
        assert_eq!(fmt_duration_ms(12_300), "12.3 s");
        assert_eq!(fmt_duration_ms(245_000), "4m 05s");
        assert_eq!(fmt_duration_ms(3_900_000), "1h 05m");
    }
}
