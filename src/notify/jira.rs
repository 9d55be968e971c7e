//! Jira REST client: Data Center/Server (API v2, Bearer personal access
//! token, plain-text bodies) and Cloud (API v3, basic email:token, ADF bodies).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::SendError;
use crate::config::{JiraConfig, JiraDeployment};
use crate::store::notify::JiraIssue;

/// What vmscan does with a ticket.
#[async_trait]
pub trait IssueTracker: Send + Sync {
    async fn create_issue(&self, summary: &str, description: &str) -> Result<JiraIssue, SendError>;
    async fn comment(&self, key: &str, text: &str) -> Result<(), SendError>;
    /// Applies the workflow transition called `name` (case-insensitive).
    async fn transition(&self, key: &str, name: &str) -> Result<(), SendError>;
}

pub struct JiraClient {
    http: reqwest::Client,
    base: String,
    cfg: JiraConfig,
}

impl JiraClient {
    pub fn new(cfg: &JiraConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .build()?;
        Ok(JiraClient {
            http,
            base: cfg.base_url.trim_end_matches('/').to_string(),
            cfg: cfg.clone(),
        })
    }

    fn version(&self) -> u8 {
        match self.cfg.deployment {
            JiraDeployment::Server => 2,
            JiraDeployment::Cloud => 3,
        }
    }

    /// A text body in the form this API version wants.
    fn body(&self, text: &str) -> Value {
        match self.cfg.deployment {
            JiraDeployment::Server => Value::String(text.to_string()),
            JiraDeployment::Cloud => adf(text),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SendError> {
        let url = format!("{}/rest/api/{}/{}", self.base, self.version(), path);
        let token = self
            .cfg
            .token
            .as_ref()
            .map(|t| t.expose_secret().to_string())
            .unwrap_or_default();
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(reqwest::header::ACCEPT, "application/json");
        req = match self.cfg.deployment {
            JiraDeployment::Server => req.bearer_auth(token),
            JiraDeployment::Cloud => {
                req.basic_auth(self.cfg.user.clone().unwrap_or_default(), Some(token))
            }
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let what = format!("Jira {method} /{path}");
        let resp = req.send().await.map_err(|e| {
            SendError::retry(format!("{what}: cannot reach Jira: {}", without_url(&e)))
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = match crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT).await
        {
            Ok(t) => t,
            Err(e) if status.is_success() => {
                return Err(SendError::retry(format!("Jira's answer: {e}")))
            }
            Err(_) => String::new(),
        };
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let msg = format!("{what} → {}: {}", status, error_text(&text));
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => SendError {
                message: format!("{msg} (rate limited or unavailable; retrying)"),
                retryable: true,
                retry_after: retry_after.map(Duration::from_secs),
            },
            StatusCode::UNAUTHORIZED => SendError::permanent(format!(
                "{msg} (check notify.jira.token{})",
                if self.cfg.deployment == JiraDeployment::Cloud {
                    " and notify.jira.user"
                } else {
                    ""
                }
            )),
            s if s.is_server_error() => SendError::retry(msg),
            _ => SendError::permanent(msg),
        })
    }
}

/// reqwest errors name the URL; say what failed without repeating it.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s
            .replace(&format!(" ({u})"), "")
            .replace(u.as_str(), "<jira>");
    }
    crate::domain::with_causes(s, e)
}

/// Jira's error body: `{"errorMessages":[…],"errors":{field: msg}}`, sometimes
/// `errorMessage` or `message`; else the raw text, shortened.
pub fn error_text(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        let t = body.trim();
        return if t.is_empty() {
            "(empty body)".into()
        } else {
            t.chars().take(300).collect()
        };
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(a) = v.get("errorMessages").and_then(Value::as_array) {
        parts.extend(a.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if let Some(o) = v.get("errors").and_then(Value::as_object) {
        parts.extend(
            o.iter()
                .map(|(k, m)| format!("{k}: {}", m.as_str().unwrap_or(&m.to_string()))),
        );
    }
    for k in ["errorMessage", "message"] {
        if let Some(m) = v.get(k).and_then(Value::as_str) {
            parts.push(m.to_string());
        }
    }
    if parts.is_empty() {
        v.to_string().chars().take(300).collect()
    } else {
        parts.join("; ")
    }
}

/// Plain text as an Atlassian Document Format document: one paragraph per line.
pub fn adf(text: &str) -> Value {
    let paragraphs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| json!({"type": "paragraph", "content": [{"type": "text", "text": l}]}))
        .collect();
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

#[async_trait]
impl IssueTracker for JiraClient {
    async fn create_issue(&self, summary: &str, description: &str) -> Result<JiraIssue, SendError> {
        let body = json!({"fields": {
            "project": {"key": self.cfg.project},
            "summary": summary,
            "description": self.body(description),
            "issuetype": {"name": self.cfg.issue_type},
            "labels": self.cfg.labels,
        }});
        let v = self.call(Method::POST, "issue", Some(body)).await?;
        let key = v.get("key").and_then(Value::as_str).ok_or_else(|| {
            SendError::permanent(format!("Jira created an issue but sent no key: {v}"))
        })?;
        Ok(JiraIssue {
            key: key.to_string(),
            url: format!("{}/browse/{key}", self.base),
        })
    }

    async fn comment(&self, key: &str, text: &str) -> Result<(), SendError> {
        self.call(
            Method::POST,
            &format!("issue/{key}/comment"),
            Some(json!({"body": self.body(text)})),
        )
        .await
        .map(|_| ())
    }

    async fn transition(&self, key: &str, name: &str) -> Result<(), SendError> {
        let v = self
            .call(Method::GET, &format!("issue/{key}/transitions"), None)
            .await?;
        let list = v
            .get("transitions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let found = list.iter().find(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        let Some(id) = found.and_then(|t| t.get("id")).and_then(|i| match i {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }) else {
            let names: Vec<&str> = list.iter().filter_map(|t| t["name"].as_str()).collect();
            return Err(SendError::permanent(format!(
                "Jira transition {name:?} is not available for {key} (available: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        self.call(
            Method::POST,
            &format!("issue/{key}/transitions"),
            Some(json!({"transition": {"id": id}})),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_jira_errors() {
        assert_eq!(
            error_text(
                r#"{"errorMessages":["Project 'X' does not exist"],"errors":{"summary":"required"}}"#
            ),
            "Project 'X' does not exist; summary: required"
        );
        assert_eq!(error_text(""), "(empty body)");
    }

    #[test]
    fn adf_has_one_paragraph_per_line() {
        let d = adf("a\n\nb");
        assert_eq!(d["type"], "doc");
        assert_eq!(d["version"], 1);
        assert_eq!(d["content"].as_array().unwrap().len(), 2);
        assert_eq!(d["content"][1]["content"][0]["text"], "b");
    }
}
