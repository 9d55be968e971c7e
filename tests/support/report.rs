//! Checks a scan report with parsers vmscan does not own
//! (`tests/fixtures/check_report.py`: python-jsonschema against
//! `static/scan-report.schema.json`, junitparser for the JUnit XML).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check_report.py")
}

pub fn schema_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("static/scan-report.schema.json")
}

/// Whether the checkers are installed (`scripts/install-test-deps.sh`);
/// under CI their absence is an error, elsewhere the check is skipped with a note.
pub fn checkers() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema, junitparser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3 with jsonschema and junitparser is missing under CI: run scripts/install-test-deps.sh"
        );
        eprintln!("note: jsonschema/junitparser not installed; report checks skipped (scripts/install-test-deps.sh installs them)");
    }
    ok
}

fn run(args: &[&std::ffi::OsStr]) -> Value {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_report.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("check_report.py prints JSON")
}

/// Every document validates against the report schema (panics with the errors).
pub fn validate(docs: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![std::ffi::OsString::from("schema"), schema_file().into()];
    for (n, d) in docs.iter().enumerate() {
        let p = dir.path().join(format!("report-{n}.json"));
        std::fs::write(&p, d).unwrap();
        args.push(p.into());
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    assert_eq!(run(&args)["valid"], docs.len());
}

/// What junitparser reads from the XML: `{"suites": [{name, tests, failures,
/// skipped, time, cases: [{name, time, result: [{kind, message}]}]}]}`.
pub fn junit(xml: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("report.xml");
    std::fs::write(&p, xml).unwrap();
    run(&["junit".as_ref(), p.as_os_str()])
}
