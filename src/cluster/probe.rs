//! Is the guest's remote shell up? A TCP connect is not enough for SSH: with
//! user-mode forwarding or a NAT the port accepts before sshd listens.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// The SSH identification line ("SSH-2.0-…"), if the port sends one within 3 s.
pub async fn ssh_banner(host: &str, port: u16) -> Option<String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .ok()?
    .ok()?;
    let mut buf = [0u8; 255];
    let mut n = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while n < buf.len() {
        let left = until.checked_duration_since(Instant::now())?;
        let k = tokio::time::timeout(left, s.read(&mut buf[n..]))
            .await
            .ok()?
            .ok()?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..n]);
    let line = text.lines().next()?.trim().to_string();
    line.starts_with("SSH-").then_some(line)
}

/// Whether a TCP connection is accepted within 3 s (WinRM has no banner).
pub async fn port_answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits for the guest's remote shell on `port`: an SSH banner (returned), or
/// for Windows a WinRM port that accepts a connection (`None`, WinRM has no
/// banner). `Err` names the port that was still silent after `limit`.
pub async fn wait_for_shell(
    host: &str,
    port: u16,
    windows: bool,
    limit: Duration,
    poll: Duration,
) -> Result<Option<String>, &'static str> {
    let start = Instant::now();
    loop {
        if windows {
            if port_answers(host, port).await {
                return Ok(None);
            }
        } else if let Some(b) = ssh_banner(host, port).await {
            return Ok(Some(b));
        }
        if start.elapsed() >= limit {
            return Err(if windows { "winrm port" } else { "ssh port" });
        }
        tokio::time::sleep(poll).await;
    }
}
