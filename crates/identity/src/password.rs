//! Password hashing: argon2id, off the async worker threads, bounded in number.

use std::sync::Arc;

use agora_platform::config::Argon2Config;
use anyhow::{Context, anyhow};
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::{OnceCell, Semaphore};

use crate::domain::Password;

/// Hashes and checks passwords.
///
/// Each hash takes `memory_kib` of memory and tens of milliseconds of one core, so
/// it runs on the blocking pool, and a semaphore bounds how many run at once: a
/// burst of logins queues instead of exhausting memory.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of nothing in particular, checked when the account does not exist so
    /// that the answer takes as long as for a real account.
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher with the configured cost.
    pub fn new(config: &Argon2Config) -> anyhow::Result<PasswordHasher> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| anyhow!("invalid argon2 parameters: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(PasswordHasher {
            params,
            permits: Arc::new(Semaphore::new(cores * 2)),
            dummy: Arc::new(OnceCell::new()),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let mut salt = [0_u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow!("no randomness for the salt: {e}"))?;
        let argon2 = self.argon2();
        let password = password.clone();
        self.run(move || {
            let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("salt: {e}"))?;
            Ok(argon2
                .hash_password(password.expose().as_bytes(), &salt)
                .map_err(|e| anyhow!("argon2: {e}"))?
                .to_string())
        })
        .await
    }

    /// Whether `password` matches `hash`. With no hash (no such account, or one
    /// without a password) it checks a dummy hash and answers `false`, taking the
    /// same time. The cost parameters are read from the hash itself, so hashes
    /// made under older settings still verify.
    pub async fn verify(&self, password: &Password, hash: Option<&str>) -> anyhow::Result<bool> {
        let (hash, real) = match hash {
            Some(h) => (h.to_string(), true),
            None => (self.dummy_hash().await?, false),
        };
        let argon2 = self.argon2();
        let password = password.clone();
        let matches = self
            .run(move || {
                let parsed = PasswordHash::new(&hash).map_err(|e| anyhow!("stored hash: {e}"))?;
                Ok(argon2
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(real && matches)
    }

    async fn dummy_hash(&self) -> anyhow::Result<String> {
        self.dummy
            .get_or_try_init(|| async {
                self.hash(&Password::new("not a real password".into()))
                    .await
            })
            .await
            .cloned()
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("the password hasher is closed")?;
        tokio::task::spawn_blocking(work)
            .await
            .context("the password hashing task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        let config = Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        PasswordHasher::new(&config).expect("valid parameters")
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() -> anyhow::Result<()> {
        let h = cheap();
        let pw = Password::new("correct horse battery".into());
        let hash = h.hash(&pw).await?;
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(h.verify(&pw, Some(&hash)).await?);
        let wrong = Password::new("correct horse battery!".into());
        assert!(!h.verify(&wrong, Some(&hash)).await?);
        Ok(())
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() -> anyhow::Result<()> {
        let h = cheap();
        let pw = Password::new("correct horse battery".into());
        assert_ne!(h.hash(&pw).await?, h.hash(&pw).await?);
        Ok(())
    }

    #[tokio::test]
    async fn no_account_never_matches() -> anyhow::Result<()> {
        let h = cheap();
        assert!(
            !h.verify(&Password::new("not a real password".into()), None)
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn hashes_made_with_other_costs_still_verify() -> anyhow::Result<()> {
        let pw = Password::new("correct horse battery".into());
        let old = cheap().hash(&pw).await?;
        let newer = PasswordHasher::new(&Argon2Config {
            memory_kib: 128,
            iterations: 2,
            parallelism: 1,
        })?;
        assert!(newer.verify(&pw, Some(&old)).await?);
        Ok(())
    }
}
