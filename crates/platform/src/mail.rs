//! Outgoing mail: messages built with lettre, sent to the configured SMTP
//! server, or written as `.eml` files to the mail directory when none is set
//! (development, the monolith's default).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Config;

/// Where messages go. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    to: Destination,
}

#[derive(Clone)]
enum Destination {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        server: String,
    },
    Dir(PathBuf),
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.to {
            Destination::Smtp { server, .. } => write!(f, "Mailer(smtp {server})"),
            Destination::Dir(dir) => write!(f, "Mailer(dir {})", dir.display()),
        }
    }
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The SMTP server accepted it.
    Sent,
    /// It was written to this file.
    Written(PathBuf),
}

impl Mailer {
    /// The mailer `config.mail` asks for.
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        let mail = &config.mail;
        let from: Mailbox = mail
            .from
            .parse()
            .with_context(|| format!("`mail.from` {:?} is not an address", mail.from))?;
        let Some(url) = &mail.smtp_url else {
            return Mailer::dir(from, &config.mail_dir());
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .context("`mail.smtp_url` is not a usable SMTP URL")?
            .timeout(Some(Duration::from_millis(mail.smtp_timeout_ms)));
        if let (Some(user), Some(password)) = (&mail.smtp_username, &mail.smtp_password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Mailer {
            from,
            to: Destination::Smtp {
                transport: builder.build(),
                server: url.clone(),
            },
        })
    }

    /// Writes messages from `from` as files under `dir`, created if missing.
    pub fn dir(from: Mailbox, dir: &Path) -> anyhow::Result<Mailer> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "Failed to create the mail directory {} (`mail.dir`)",
                dir.display()
            )
        })?;
        Ok(Mailer {
            from,
            to: Destination::Dir(dir.to_path_buf()),
        })
    }

    /// The sender of every message.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Sends `message`. In the mail directory it is `<name>.eml` (`name`: 1–200
    /// of `A-Z a-z 0-9 - _ .`), so sending the same name again replaces the
    /// file rather than adding one; the file appears whole or not at all.
    pub async fn send(&self, name: &str, message: Message) -> anyhow::Result<Delivery> {
        match &self.to {
            Destination::Smtp { transport, server } => {
                transport
                    .send(message)
                    .await
                    .with_context(|| format!("sending mail through {server}"))?;
                Ok(Delivery::Sent)
            }
            Destination::Dir(dir) => {
                anyhow::ensure!(
                    (1..=200).contains(&name.len())
                        && !name.starts_with('.')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                    "{name:?} cannot name a mail file"
                );
                let path = dir.join(format!("{name}.eml"));
                let dir = dir.clone();
                let bytes = message.formatted();
                let target = path.clone();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
                    std::io::Write::write_all(&mut file, &bytes)?;
                    file.as_file().sync_all()?;
                    file.persist(&target)?;
                    Ok(())
                })
                .await
                .context("the mail writer")?
                .with_context(|| format!("writing {}", path.display()))?;
                Ok(Delivery::Written(path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(mailer: &Mailer, subject: &str) -> Message {
        Message::builder()
            .from(mailer.from().clone())
            .to("Ada <ada@example.com>".parse().expect("mailbox"))
            .subject(subject)
            .body(String::from("Hello"))
            .expect("message")
    }

    #[tokio::test]
    async fn without_a_server_messages_are_files_named_by_the_caller() {
        let dir = tempfile::tempdir().expect("dir");
        let mailer = Mailer::dir("Shop <shop@example.com>".parse().expect("from"), dir.path())
            .expect("mailer");
        let first = mailer
            .send("receipt-1", message(&mailer, "First"))
            .await
            .expect("sent");
        assert_eq!(first, Delivery::Written(dir.path().join("receipt-1.eml")));
        mailer
            .send("receipt-1", message(&mailer, "Again"))
            .await
            .expect("sent again");
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(files, ["receipt-1.eml"], "a repeat replaces, never adds");
        let text = std::fs::read_to_string(dir.path().join("receipt-1.eml")).expect("read");
        assert!(text.contains("Subject: Again"), "{text}");
        assert!(text.contains("From: Shop <shop@example.com>"), "{text}");

        for bad in ["", "../x", ".hidden", "a/b", "with space"] {
            assert!(
                mailer.send(bad, message(&mailer, "x")).await.is_err(),
                "{bad:?} is refused"
            );
        }
    }

    /// Through the SMTP server at `AGORA_TEST_SMTP_URL` (aiosmtpd, started by
    /// `.ci/run`), which delivers into the maildir `AGORA_TEST_SMTP_MAILDIR`.
    #[tokio::test]
    #[ignore = "needs an SMTP server: set AGORA_TEST_SMTP_URL and AGORA_TEST_SMTP_MAILDIR (see docs/operations.md)"]
    async fn an_smtp_server_receives_the_message() {
        let url = std::env::var("AGORA_TEST_SMTP_URL").expect("AGORA_TEST_SMTP_URL");
        let maildir = std::env::var("AGORA_TEST_SMTP_MAILDIR").expect("AGORA_TEST_SMTP_MAILDIR");
        let mut config = Config::default();
        config.mail.smtp_url = Some(url);
        let mailer = Mailer::from_config(&config).expect("mailer");
        let subject = format!("test {}", uuid::Uuid::now_v7());
        let sent = mailer
            .send("ignored-by-smtp", message(&mailer, &subject))
            .await
            .expect("the server takes it");
        assert_eq!(sent, Delivery::Sent);
        let arrived = std::fs::read_dir(std::path::Path::new(&maildir).join("new"))
            .expect("the maildir")
            .filter_map(|e| std::fs::read_to_string(e.expect("entry").path()).ok())
            .any(|text| text.contains(&subject) && text.contains("ada@example.com"));
        assert!(arrived, "{subject} is in {maildir}/new");
    }

    #[tokio::test]
    async fn an_smtp_server_that_is_not_there_is_an_error() {
        let mut config = Config::default();
        // Nothing listens on port 9 of loopback (discard, not served here).
        config.mail.smtp_url = Some("smtp://127.0.0.1:9".to_string());
        config.mail.smtp_timeout_ms = 2000;
        let mailer = Mailer::from_config(&config).expect("mailer");
        assert!(mailer.send("x", message(&mailer, "x")).await.is_err());
    }
}
