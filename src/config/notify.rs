//! `[notify]`: who hears about scans (email over SMTP, a Jira ticket per scan)
//! and how the outbox retries. Secrets are redacted whenever config is shown.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// How often the delivery loop looks for due notifications.
    pub poll_interval_ms: u64,
    /// Attempts before a notification is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles with every failed attempt.
    pub backoff_secs: u64,
    /// Longest delay between two attempts (a Jira `Retry-After` may ask for more).
    pub max_backoff_secs: u64,
    /// A delivery claimed by a process that died is taken over after this long.
    pub lease_secs: u64,
    /// The "scan started" email waits this long for the Jira ticket so it can link it.
    pub jira_link_wait_secs: u64,
    /// Log lines quoted in the "scan failed" email.
    pub log_lines: i64,
    /// Jobs of a batch (a manifest) are told about once, in one summary
    /// email and Jira ticket when the last one ends, instead of per image.
    /// false: each image is told about as a single submission is, and no summary.
    pub batch_summary: bool,
    /// How often each delivery loop looks for batches whose last job ended
    /// without passing through a worker (cancelled before it started,
    /// failed by the reaper, a crash between the two writes).
    pub batch_sweep_secs: u64,
    pub email: EmailConfig,
    pub jira: JiraConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// No TLS (a relay on localhost or a trusted network).
    None,
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    pub enabled: bool,
    pub host: String,
    /// 0: the usual port for `security` (25, 587 or 465).
    pub port: u16,
    pub security: SmtpSecurity,
    /// SMTP login; no authentication when empty.
    pub username: Option<String>,
    /// Set it with `VMSCAN_NOTIFY__EMAIL__PASSWORD`; never shown.
    #[serde(serialize_with = "redact")]
    pub password: Option<SecretString>,
    /// Sender, e.g. `vmscan <vmscan@example.com>`.
    pub from: String,
    /// Always told about every scan (eng_sam_admins), besides the requester.
    pub admins: Vec<String>,
    pub timeout_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JiraDeployment {
    /// Data Center / Server: REST API v2, `Authorization: Bearer <personal access token>`.
    Server,
    /// Cloud: REST API v3, basic auth `user:api_token`, Atlassian Document Format bodies.
    Cloud,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JiraConfig {
    pub enabled: bool,
    /// e.g. `https://jira.example.com` (no `/rest/...`).
    pub base_url: String,
    pub deployment: JiraDeployment,
    /// Cloud only: the account email the API token belongs to.
    pub user: Option<String>,
    /// Personal access token (Server) or API token (Cloud). Set it with
    /// `VMSCAN_NOTIFY__JIRA__TOKEN`; never shown.
    #[serde(serialize_with = "redact")]
    pub token: Option<SecretString>,
    pub project: String,
    pub issue_type: String,
    pub labels: Vec<String>,
    /// Prefix of the ticket summary; the image name follows.
    pub summary_prefix: String,
    /// Workflow transition applied when a scan succeeds; empty: none.
    pub success_transition: String,
    /// Workflow transition applied when a scan fails or is cancelled; empty: none.
    pub failure_transition: String,
    pub timeout_secs: u64,
}

fn redact<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            poll_interval_ms: 1000,
            max_attempts: 8,
            backoff_secs: 30,
            max_backoff_secs: 3600,
            lease_secs: 120,
            jira_link_wait_secs: 60,
            log_lines: 20,
            batch_summary: true,
            batch_sweep_secs: 30,
            email: EmailConfig::default(),
            jira: JiraConfig::default(),
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            enabled: false,
            host: String::new(),
            port: 0,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: String::new(),
            admins: Vec::new(),
            timeout_secs: 30,
        }
    }
}

impl Default for JiraConfig {
    fn default() -> Self {
        JiraConfig {
            enabled: false,
            base_url: String::new(),
            deployment: JiraDeployment::Server,
            user: None,
            token: None,
            project: String::new(),
            issue_type: "Task".into(),
            labels: vec!["vm-scan".into()],
            summary_prefix: "VM image scan: ".into(),
            success_transition: "Done".into(),
            failure_transition: String::new(),
            timeout_secs: 30,
        }
    }
}

impl EmailConfig {
    /// The port in effect.
    pub fn port(&self) -> u16 {
        match (self.port, self.security) {
            (0, SmtpSecurity::None) => 25,
            (0, SmtpSecurity::Starttls) => 587,
            (0, SmtpSecurity::Tls) => 465,
            (p, _) => p,
        }
    }
}

impl NotifyConfig {
    pub fn any_enabled(&self) -> bool {
        self.email.enabled || self.jira.enabled
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_attempts < 1 {
            return bad("notify.max_attempts must be at least 1");
        }
        if self.lease_secs < 5 {
            return bad("notify.lease_secs must be at least 5");
        }
        let e = &self.email;
        if e.enabled {
            if e.host.trim().is_empty() {
                return bad("notify.email.host is empty (the SMTP server)");
            }
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                return bad(
                    "notify.email.from must be an address such as \"vmscan <vmscan@example.com>\"",
                );
            }
            for a in &e.admins {
                if a.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "notify.email.admins: {a:?} is not an email address"
                    )));
                }
            }
            if e.password.is_some() && e.username.is_none() {
                return bad("notify.email.password is set but notify.email.username is not");
            }
        }
        let j = &self.jira;
        if j.enabled {
            if url::Url::parse(&j.base_url).is_err() {
                return bad("notify.jira.base_url must be a URL such as https://jira.example.com");
            }
            if j.project.trim().is_empty() {
                return bad("notify.jira.project is empty (the project key, e.g. OPS)");
            }
            if j.token.is_none() {
                return bad("notify.jira.token is not set (use VMSCAN_NOTIFY__JIRA__TOKEN)");
            }
            if j.deployment == JiraDeployment::Cloud && j.user.is_none() {
                return bad(
                    "notify.jira.user is required for Jira Cloud (the API token's account email)",
                );
            }
        }
        Ok(())
    }
}
