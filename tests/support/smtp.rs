//! A real SMTP server for tests: Python's aiosmtpd (`tests/fixtures/smtp_sink.py`)
//! as a child process on a free port; every received message is read back
//! decoded (envelope, subject, text and HTML parts).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

/// One message as the server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub to: String,
    pub content_type: String,
    pub text: String,
    pub html: String,
    pub raw: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_sink.py");
        let port = free_port();
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 tests/fixtures/smtp_sink.py (needs aiosmtpd: scripts/install-test-deps.sh)");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("SMTP sink starts within 20 s")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("READY"), "SMTP sink did not start");
        SmtpSink {
            port,
            dir,
            _child: child,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                Received {
                    mail_from: s("mail_from"),
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    subject: s("subject"),
                    to: s("to"),
                    content_type: s("content_type"),
                    text: s("text"),
                    html: s("html"),
                    raw: s("raw"),
                }
            })
            .collect()
    }

    /// Waits until a message whose subject contains `needle` arrives.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Received {
        let start = Instant::now();
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m.subject.contains(needle))
            {
                return m;
            }
            if start.elapsed() > timeout {
                let got: Vec<String> = self.messages().into_iter().map(|m| m.subject).collect();
                panic!(
                    "no message with subject containing {needle:?} within {timeout:?}; got {got:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
