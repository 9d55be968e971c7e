//! The report as JUnit XML, the format CI systems show natively: one
//! `<testsuite>` per scan, one `<testcase>` per stage. A failed stage is a
//! `<failure>` whose message is the stage's error; stages that did not run
//! are `<skipped>`; times are in seconds.

use std::fmt::Write;

use super::{ScanReport, StageOutcome};

/// XML 1.0 text: markup escaped, and characters XML cannot carry at all
/// (control characters a guest's log may hold) dropped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Element text keeps its line breaks (escaped like attributes otherwise).
fn text(s: &str) -> String {
    esc(s).replace("&#10;", "\n")
}

pub fn render_junit(r: &ScanReport) -> String {
    let counted = |o: StageOutcome| r.stages.iter().filter(|s| s.outcome == o).count();
    let failures = counted(StageOutcome::Failed)
        + counted(StageOutcome::Cancelled)
        + counted(StageOutcome::Interrupted);
    let skipped = counted(StageOutcome::Skipped)
        + counted(StageOutcome::LeftOut)
        + counted(StageOutcome::Pending)
        + counted(StageOutcome::Running)
        + counted(StageOutcome::Waiting);
    let time: f64 = r.stages.iter().filter_map(|s| s.duration_secs).sum();
    let image = r
        .publication
        .as_ref()
        .map(|p| format!("{} {}", p.name, p.version))
        .or_else(|| r.image.file_name.clone())
        .unwrap_or_else(|| r.job.id.clone());
    let classname = format!("vmscan.{}", image.replace([' ', '.'], "_"));
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"vmscan\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        r.stages.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\" timestamp=\"{}\" id=\"{}\">",
        esc(&format!("vmscan scan of {image}")),
        r.stages.len(),
        esc(r.job.started_at.as_deref().unwrap_or(&r.job.requested_at)),
        esc(&r.job.id),
    );
    x.push_str("    <properties>\n");
    let mut prop = |k: &str, v: &str| {
        let _ = writeln!(
            x,
            "      <property name=\"{}\" value=\"{}\"/>",
            esc(k),
            esc(v)
        );
    };
    prop("job_id", &r.job.id);
    prop("source_url", &r.image.source_url);
    if let Some(h) = &r.image.sha256 {
        prop("sha256", h);
    }
    prop(
        "checksum_verified",
        if r.image.checksum.verified {
            "true"
        } else {
            "false"
        },
    );
    if let Some(c) = &r.cluster {
        prop("cluster", c);
    }
    if let Some(o) = &r.guest_os.name {
        prop("guest_os", o);
    }
    prop("vmscan_version", &r.generator.vmscan_version);
    prop("config_sha256", &r.generator.config_sha256);
    prop(
        "outcome",
        &format!("{:?}", r.verdict.outcome).to_lowercase(),
    );
    x.push_str("    </properties>\n");
    for s in &r.stages {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            esc(&s.name),
            esc(&classname),
            s.duration_secs.unwrap_or(0.0)
        );
        let error = s.error.as_deref().unwrap_or("");
        match s.outcome {
            StageOutcome::Passed => {
                x.push_str("/>\n");
                continue;
            }
            StageOutcome::Failed | StageOutcome::Interrupted => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    esc(if error.is_empty() { "failed" } else { error }),
                    s.outcome.as_str(),
                    text(error)
                );
            }
            StageOutcome::Cancelled => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\" type=\"cancelled\"/>",
                    esc(if error.is_empty() {
                        "cancelled by user"
                    } else {
                        error
                    })
                );
            }
            _ => {
                let why = s.note.as_deref().unwrap_or(s.outcome.as_str());
                let _ = writeln!(x, ">\n      <skipped message=\"{}\"/>", esc(why));
            }
        }
        x.push_str("    </testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
