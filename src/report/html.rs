//! The report as one self-contained, printable HTML page: inline CSS, no
//! scripts, no external assets, so a saved copy reads without vmscan.

use std::sync::LazyLock;

use askama::Template;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{ReportError, ScanReport, StageOutcome};
use crate::domain::fmt_bytes;

/// The page's whole style sheet (its hash goes into [`REPORT_CSP`]).
const CSS: &str = r#"
:root { --ok: #1a7f37; --bad: #b42318; --warn: #9a6700; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 13px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0 auto; max-width: 960px; padding: 24px; }
header { display: flex; justify-content: space-between; align-items: baseline; border-bottom: 2px solid #1f2328; padding-bottom: 6px; margin-bottom: 12px; }
h1 { font-size: 20px; margin: 0; }
h2 { font-size: 14px; margin: 16px 0 4px; border-bottom: 1px solid var(--line); padding-bottom: 2px; }
.verdict { font-size: 15px; font-weight: 600; padding: 8px 12px; border-radius: 6px; margin: 8px 0; border: 1px solid; }
.verdict.passed { color: var(--ok); border-color: var(--ok); background: #dafbe1; }
.verdict.failed { color: var(--bad); border-color: var(--bad); background: #ffebe9; }
.verdict.cancelled { color: var(--warn); border-color: var(--warn); background: #fff8c5; }
.verdict .error { display: block; font-weight: 400; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 2px 6px; border-bottom: 1px solid var(--line); }
th { font-weight: 600; white-space: nowrap; }
table.kv th { width: 28%; color: var(--muted); font-weight: 500; }
.mono, code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.muted { color: var(--muted); }
.o-passed { color: var(--ok); font-weight: 600; }
.o-failed, .o-interrupted { color: var(--bad); font-weight: 600; }
.o-cancelled, .o-waiting, .o-running { color: var(--warn); font-weight: 600; }
.o-skipped, .o-left_out, .o-pending { color: var(--muted); }
#stages td:first-child { white-space: nowrap; }
td.err { color: var(--bad); font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; white-space: pre-wrap; word-break: break-word; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 24px; }
footer { margin-top: 16px; border-top: 1px solid var(--line); padding-top: 4px; font-size: 11px; color: var(--muted); }
@page { size: A4; margin: 10mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 9px; line-height: 1.3; }
  .mono, code, td.err, .verdict .error { font-size: 8.5px; }
  h1 { font-size: 15px; }
  h2 { font-size: 11px; margin: 8px 0 2px; }
  th, td { padding: 1px 4px; }
  h2 { break-after: avoid; }
  table, .verdict, section { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
  .verdict { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

/// The report page's own policy: its one style sheet by hash, nothing else.
pub static REPORT_CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(CSS.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
});

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage<'a> {
    r: &'a ScanReport,
    css: &'static str,
}

impl ReportPage<'_> {
    fn bytes(&self, b: &Option<u64>) -> String {
        match b {
            Some(b) => format!("{} ({b} bytes)", fmt_bytes(*b)),
            None => "—".into(),
        }
    }

    fn secs(&self, s: &Option<f64>) -> String {
        match s {
            Some(s) => crate::domain::fmt_duration_ms((s * 1000.0) as i64),
            None => "—".into(),
        }
    }

    fn outcome_class(&self, o: &StageOutcome) -> String {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// `2026-05-28T20:26:41Z` → `20:26:41` (the date is in the header rows).
    fn clock(&self, t: &Option<String>) -> String {
        match t {
            Some(t) => t
                .split_once('T')
                .map(|(_, c)| c.trim_end_matches('Z').to_string())
                .unwrap_or_else(|| t.clone()),
            None => String::new(),
        }
    }

    fn outcome_class_of_verdict(&self) -> String {
        serde_json::to_value(self.r.verdict.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn checksum_method(&self) -> &'static str {
        use super::ChecksumMethod::*;
        match self.r.image.checksum.method {
            GivenDigest => "digest given with the submission",
            SumsFile => "checksum file named in the submission",
            NotGiven => "no checksum was given: the download was NOT verified",
            NotChecked => "the checksum stage did not finish",
        }
    }

    fn title(&self) -> String {
        self.r
            .publication
            .as_ref()
            .map(|p| format!("{} {}", p.name, p.version))
            .or_else(|| self.r.image.file_name.clone())
            .unwrap_or_else(|| self.r.job.id.clone())
    }
}

pub fn render_html(r: &ScanReport) -> Result<String, ReportError> {
    ReportPage { r, css: CSS }
        .render()
        .map_err(|e| ReportError::Render(e.to_string()))
}
