//! What can go wrong talking to OpenStack, with the API's own words.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    /// The API answered with an error status.
    #[error("{service} {method} {path}: HTTP {status}: {message}")]
    Http {
        service: &'static str,
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// No answer: connection refused or dropped, or the request timed out.
    #[error("{service} {method} {path}: {message}")]
    Transport {
        service: &'static str,
        method: String,
        path: String,
        message: String,
    },
    /// The API's TLS certificate was refused (never retried: it never heals).
    #[error(
        "{service} {method} {path}: {message} ({})",
        crate::cluster::tls::CERTIFICATE_HINT
    )]
    Certificate {
        service: &'static str,
        method: String,
        path: String,
        message: String,
    },
    /// Keystone refused the credentials (never retried).
    #[error("Keystone refused to authenticate {who}: {message}")]
    Auth { who: String, message: String },
    /// Anything else: a missing catalog entry, an unexpected answer, a failed task.
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl OsError {
    pub fn other(message: impl Into<String>) -> OsError {
        OsError::Other {
            message: message.into(),
            retryable: false,
        }
    }

    /// A request that got no answer: a refused certificate, or a transport
    /// failure worth retrying.
    pub fn unanswered(
        service: &'static str,
        method: impl Into<String>,
        path: impl Into<String>,
        e: &reqwest::Error,
    ) -> OsError {
        let (method, path, message) = (method.into(), path.into(), super::http::describe(e));
        if crate::cluster::tls::certificate_rejected(e) {
            OsError::Certificate {
                service,
                method,
                path,
                message,
            }
        } else {
            OsError::Transport {
                service,
                method,
                path,
                message,
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OsError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether a later try (of the job's stage) can help.
    pub fn retryable(&self) -> bool {
        match self {
            // A 409 that was worth retrying is retried where it happens
            // (Nova's busy servers); the others (ambiguous network…) stay.
            OsError::Http { status, .. } => *status >= 500 || *status == 429,
            OsError::Transport { .. } => true,
            OsError::Certificate { .. } | OsError::Auth { .. } => false,
            OsError::Other { retryable, .. } => *retryable,
        }
    }
}

/// The message of an OpenStack error body: Nova `{"badRequest":{"message"}}`,
/// Keystone `{"error":{"message"}}`, Neutron `{"NeutronError":{"message"}}`,
/// or Glance's plain text / HTML.
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return clip(m);
        }
        if let Some(obj) = v.as_object() {
            for inner in obj.values() {
                if let Some(m) = inner.get("message").and_then(Value::as_str) {
                    return clip(m);
                }
            }
        }
        return clip(body);
    }
    let mut text = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        "(no message)".into()
    } else {
        clip(&words.join(" "))
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_message_of_each_api_shape() {
        assert_eq!(
            error_message(r#"{"badRequest":{"code":400,"message":"Invalid flavorRef"}}"#),
            "Invalid flavorRef"
        );
        assert_eq!(
            error_message(
                r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message(
                r#"{"NeutronError":{"type":"NetworkNotFound","message":"Network x could not be found.","detail":""}}"#
            ),
            "Network x could not be found."
        );
        assert_eq!(
            error_message("<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1>No image found with ID abc<br /><br /></body></html>"),
            "404 Not Found 404 Not Found No image found with ID abc"
        );
        assert_eq!(error_message(""), "(no message)");
    }
}
