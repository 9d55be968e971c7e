//! Remote shells into scan VMs (SSH for Linux, WinRM for Windows).
//! Stages talk to this trait only.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

pub mod keys;
mod lines;
pub mod ssh;
pub mod winrm;

pub use keys::SshKey;
pub use ssh::{SshOptions, SshShell};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("authentication as {user} failed: {reason}")]
    Auth { user: String, reason: String },
    #[error("host key changed for {addr}: recorded {recorded}, now {seen}")]
    HostKeyMismatch {
        addr: String,
        recorded: String,
        seen: String,
    },
    #[error("{what} timed out after {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("{0}")]
    Protocol(String),
    #[error("remote file {path}: {reason}")]
    File { path: String, reason: String },
    /// A WS-Management SOAP fault: code/subcode, WSManFault code and text.
    #[error("{what}: WS-Management fault {fault}")]
    Fault {
        what: String,
        fault: String,
        timed_out: bool,
    },
}

/// What a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub exit_status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Which stream a line came from, for the job log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub type OnLine<'a> = &'a (dyn Fn(Stream, &str) + Send + Sync);

#[async_trait]
pub trait RemoteShell: Send + Sync {
    /// Runs a shell command line (the caller quotes arguments with [`quote`]).
    /// Each output line is passed to `on_line` as it arrives.
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Result<CommandOutput, RemoteError>;
    async fn upload(
        &self,
        local: &Path,
        remote: &str,
        timeout: Duration,
    ) -> Result<(), RemoteError>;
    /// Reads at most `max_bytes` of a remote file.
    async fn read_file(
        &self,
        remote: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError>;
    async fn close(&self);
}

/// Quotes one argument for a POSIX shell.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_anything_dangerous() {
        assert_eq!(quote("/var/log/x.log"), "/var/log/x.log");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
