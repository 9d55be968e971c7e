//! A real `vmscan` process (serve or worker) configured through the
//! environment, killed with SIGKILL when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Daemon {
    child: Child,
    env: Vec<(String, String)>,
    /// The dashboard URL (`serve` only), without a trailing slash.
    pub base: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn start<K: AsRef<str>>(args: &[&str], env: &[(K, String)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscan"));
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("VMSCAN_LOG", "warn");
        for (k, v) in env {
            cmd.env(k.as_ref(), v);
        }
        let mut child = cmd.spawn().expect("vmscan starts");
        let mut base = None;
        if args.first() == Some(&"serve") {
            // The first line names the dashboard URL.
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            // Keep draining stdout so the daemon never writes into a closed pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            let url = line
                .trim()
                .strip_prefix("vmscan dashboard: ")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
            base = Some(url.trim_end_matches('/').to_string());
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.clone()))
            .collect();
        Daemon { child, env, base }
    }

    /// A token from `vmscan token create` on this daemon's database.
    pub fn token(&self, user: &str, role: &str) -> String {
        cli_token(&self.env, user, role)
    }

    /// A client with an admin token made by the CLI.
    pub fn admin_client(&self) -> reqwest::Client {
        super::client_with_token(&self.token("admin", "admin"))
    }

    pub fn base(&self) -> &str {
        self.base.as_deref().expect("a serve process")
    }
}

/// Runs `vmscan token create --user USER --role ROLE` with `env`; its stdout
/// is the token and nothing else.
pub fn cli_token<K: AsRef<str>>(env: &[(K, String)], user: &str, role: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscan"));
    cmd.args(["token", "create", "--user", user, "--role", role])
        .env("VMSCAN_LOG", "warn");
    for (k, v) in env {
        cmd.env(k.as_ref(), v);
    }
    let out = cmd.output().expect("vmscan token create runs");
    assert!(
        out.status.success(),
        "vmscan token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        token.lines().count(),
        1,
        "stdout is the token only: {token:?}"
    );
    token.trim().to_string()
}
