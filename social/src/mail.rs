//! Outgoing mail (the sign-up e-mail code). SMTP when configured; otherwise the message is logged,
//! so the embedded default works with no mail server.

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How to reach the SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port (587 for STARTTLS, 465 for TLS, 25 or anything else for plain).
    pub port: u16,
    /// `starttls`, `tls` or `none` (plain: only for a local relay or tests).
    pub security: String,
    /// User name, when the server wants authentication.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// The From address.
    pub from: String,
}

/// Sending failed.
#[derive(Debug, thiserror::Error)]
#[error("mail: {0}")]
pub struct MailError(pub String);

/// Something that delivers a plain-text mail.
#[async_trait]
pub trait Mailer: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `body` to `to` with `subject`.
    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError>;
}

/// Logs mails instead of sending them (no SMTP configured).
#[derive(Debug, Default)]
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        tracing::info!(%to, %subject, %body, "mail (no SMTP configured; logged instead of sent)");
        Ok(())
    }
}

/// Sends through an SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for `cfg`.
    pub fn new(cfg: &SmtpConfig) -> Result<Self, MailError> {
        let err = |e: &dyn std::fmt::Display| MailError(e.to_string());
        let mut builder = match cfg.security.as_str() {
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(|e| err(&e))?,
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                .map_err(|e| err(&e))?,
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
            other => return Err(MailError(format!("unknown SMTP security {other:?}"))),
        }
        .port(cfg.port)
        .timeout(Some(std::time::Duration::from_secs(10)));
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        let from = cfg.from.parse::<Mailbox>().map_err(|e| err(&e))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| MailError(e.to_string()))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body.to_owned())
            .map_err(|e| MailError(e.to_string()))?;
        self.transport
            .send(msg)
            .await
            .map_err(|e| MailError(e.to_string()))?;
        Ok(())
    }
}
