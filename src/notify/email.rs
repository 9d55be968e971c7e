//! Email over SMTP (lettre, rustls): plain, STARTTLS or TLS, optional login.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::SendError;
use crate::config::{EmailConfig, SmtpSecurity};

/// One message, already rendered.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: Vec<Mailbox>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Sends mail; a fake can stand in for tests of the outbox.
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: &Mail) -> Result<(), SendError>;
}

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    pub fn new(cfg: &EmailConfig) -> anyhow::Result<Self> {
        let host = cfg.host.trim();
        let builder = match cfg.security {
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
        };
        let mut builder = builder
            .port(cfg.port())
            .timeout(Some(Duration::from_secs(cfg.timeout_secs.max(1))));
        if let Some(user) = &cfg.username {
            let pass = cfg
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), pass));
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            from: cfg
                .from
                .parse()
                .map_err(|e| anyhow::anyhow!("notify.email.from: {e}"))?,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone());
        for to in &mail.to {
            b = b.to(to.clone());
        }
        let msg = b
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| SendError::permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(msg).await {
            Ok(_) => Ok(()),
            // 5xx: the server refused for good (unknown mailbox, relay denied…).
            Err(e) if e.is_permanent() => Err(SendError::permanent(format!(
                "SMTP server refused the message: {e}"
            ))),
            Err(e) => Err(SendError::retry(format!("SMTP: {}", chain(&e)))),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::domain::with_causes(e.to_string(), e)
}

/// Minimal HTML escaping for text put into the HTML part.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}
