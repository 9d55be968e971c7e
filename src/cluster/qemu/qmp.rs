//! A minimal QMP (QEMU Machine Protocol) client: one JSON object per line,
//! a greeting, `qmp_capabilities`, then commands whose replies are matched by
//! id while asynchronous events are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: no answer within {0} s")]
    Timeout(u64),
    #[error("QMP: connection closed")]
    Closed,
    #[error("QMP: unexpected message {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// A QMP session over any byte stream (a unix socket in production).
pub struct Qmp<S> {
    io: BufReader<S>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp<tokio::net::UnixStream> {
    /// Connects to QEMU's QMP socket and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout(timeout.as_secs()))?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Qmp::handshake(stream, timeout).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qmp<S> {
    /// Reads the greeting and sends `qmp_capabilities`.
    pub async fn handshake(stream: S, timeout: Duration) -> Result<Self, QmpError> {
        let mut qmp = Qmp {
            io: BufReader::new(stream),
            next_id: 1,
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.io.get_mut().write_all(line.as_bytes()).await?;
        self.io.get_mut().flush().await?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to a command we gave up on earlier: not ours.
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(reply.to_string()));
        }
    }

    /// `query-status`: "running", "paused", "shutdown", "prelaunch" …
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let ret = self.execute("query-status", None).await?;
        ret.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(ret.to_string()))
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(self.timeout, self.io.read_line(&mut line))
                .await
                .map_err(|_| QmpError::Timeout(self.timeout.as_secs()))??;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            return serde_json::from_str(text).map_err(|_| QmpError::Protocol(text.to_string()));
        }
    }
}

/// Connects, runs one command, disconnects.
pub async fn command(path: &Path, command: &str, timeout: Duration) -> Result<Value, QmpError> {
    let mut qmp = Qmp::connect(path, timeout).await?;
    qmp.execute(command, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake QEMU: greets, then answers each line with `reply(request)`.
    fn fake_qemu(
        reply: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&l).unwrap();
                for out in reply(&req) {
                    w.write_all(out.as_bytes()).await.unwrap();
                }
            }
        });
        client
    }

    fn ok(req: &Value, ret: Value) -> String {
        format!("{}\r\n", json!({"return": ret, "id": req["id"]}))
    }

    #[tokio::test]
    async fn negotiates_then_skips_events_to_find_the_reply() {
        let stream = fake_qemu(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, json!({}))],
            "query-status" => vec![
                "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1}}\r\n".into(),
                // Two objects in one write: framing is by line, not by read.
                format!(
                    "{{\"event\": \"NIC_RX_FILTER_CHANGED\"}}\r\n{}",
                    ok(req, json!({"status": "running", "running": true}))
                ),
            ],
            _ => vec![],
        });
        let mut qmp = Qmp::handshake(stream, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(qmp.status().await.unwrap(), "running");
    }

    #[tokio::test]
    async fn reports_a_command_error_with_its_class_and_description() {
        let stream = fake_qemu(|req| match req["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(req, json!({}))],
            _ => vec![format!(
                "{}\n",
                json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": req["id"]})
            )],
        });
        let mut qmp = Qmp::handshake(stream, Duration::from_secs(2))
            .await
            .unwrap();
        let err = qmp.execute("nope", None).await.unwrap_err().to_string();
        assert!(err.contains("nope failed: CommandNotFound"), "{err}");
    }

    #[tokio::test]
    async fn sends_one_json_object_per_line_with_arguments() {
        let (client, mut server) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let mut qmp = Qmp {
                io: BufReader::new(client),
                next_id: 7,
                timeout: Duration::from_millis(200),
            };
            qmp.execute("system_powerdown", Some(json!({"force": true})))
                .await
        });
        let mut buf = vec![0u8; 256];
        let n = server.read(&mut buf).await.unwrap();
        let sent = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            sent.ends_with('\n') && sent.matches('\n').count() == 1,
            "{sent:?}"
        );
        let v: Value = serde_json::from_str(sent.trim()).unwrap();
        assert_eq!(v["execute"], "system_powerdown");
        assert_eq!(v["arguments"]["force"], true);
        assert_eq!(v["id"], 7);
        // No reply: the call times out instead of hanging.
        assert!(matches!(task.await.unwrap(), Err(QmpError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_not_a_hang() {
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let err = Qmp::handshake(client, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Closed), "{err}");
    }
}
