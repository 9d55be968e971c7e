//! Reading an HTTP answer's body with a size cap: every external system
//! (and a guest's WinRM listener) could answer endlessly, and a body read
//! whole into memory must not grow with it.

/// The cap for API answers (JSON from clusters, Jira, Flexera, Artifactory).
pub const API_BODY_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    #[error("the answer's body is larger than {limit} bytes; refused")]
    TooLarge { limit: usize },
}

/// The body as text (lossy UTF-8), at most `limit` bytes.
pub async fn text(mut resp: reqwest::Response, limit: usize) -> Result<String, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that announces (or not) a body and then sends zeros forever.
    async fn endless(announce: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut req).await;
            let head = if announce {
                "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            };
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = if announce {
                vec![b'0'; 64 * 1024]
            } else {
                let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
                c.extend(vec![b'0'; 64 * 1024]);
                c.extend(b"\r\n");
                c
            };
            while s.write_all(&chunk).await.is_ok() {}
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn an_endless_answer_is_refused_at_the_cap() {
        for announce in [true, false] {
            let url = endless(announce).await;
            let resp = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
                .unwrap();
            let e = text(resp, 1 << 20).await.unwrap_err();
            assert!(
                matches!(e, BodyError::TooLarge { limit } if limit == 1 << 20),
                "{e}"
            );
        }
    }
}
