//! Signing keys for access tokens: Ed25519, identified by their RFC 7638 thumbprint.
//!
//! The newest key signs; older keys stay published (and accepted) until every token
//! they signed has expired. Keys come from `auth.signing_key`, or from the key file
//! in the data directory, created on first start and extended by
//! `agora admin rotate-signing-key`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use agora_kernel::Timestamp;
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "identity-signing-keys.json";

/// One key pair.
struct KeyPair {
    kid: String,
    /// The public key, base64url: the JWK `x` value.
    x: String,
    encoding: EncodingKey,
}

impl KeyPair {
    fn from_pkcs8(der: &[u8]) -> anyhow::Result<KeyPair> {
        let signing = SigningKey::from_pkcs8_der(der)
            .map_err(|e| anyhow!("not an Ed25519 PKCS#8 private key: {e}"))?;
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        Ok(KeyPair {
            kid: thumbprint(&x),
            x,
            encoding: EncodingKey::from_ed_der(der),
        })
    }
}

/// The RFC 7638 thumbprint of an Ed25519 public key: a stable key id.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new random key, as PKCS#8 DER.
fn generate() -> anyhow::Result<Vec<u8>> {
    let mut seed = [0_u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
    let der = SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|e| anyhow!("encoding the key: {e}"))?;
    Ok(der.as_bytes().to_vec())
}

/// The keys in force: the newest signs, all verify.
pub struct KeyRing {
    /// Newest first; never empty.
    keys: Vec<KeyPair>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The key file: newest key first.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    created_at: i64,
    /// PKCS#8 DER, base64.
    pkcs8: String,
}

impl KeyRing {
    /// A new key in the form `auth.signing_key` takes (base64 of PKCS#8 DER):
    /// what `agora up` gives every service of a development fleet.
    pub fn new_config_key() -> anyhow::Result<String> {
        Ok(STANDARD.encode(generate()?))
    }

    /// One configured key (`auth.signing_key`: base64 of PKCS#8 DER).
    pub fn from_config(base64_pkcs8: &str) -> anyhow::Result<KeyRing> {
        let der = STANDARD
            .decode(base64_pkcs8.trim())
            .context("`auth.signing_key` is not base64")?;
        let key = KeyPair::from_pkcs8(&der).context("`auth.signing_key`")?;
        Ok(KeyRing { keys: vec![key] })
    }

    /// The keys in `data_dir`'s key file, creating the file with a new key when
    /// there is none. Keys whose tokens have all expired (retired longer ago than
    /// `access_ttl_ms`) are left out.
    pub fn load_or_create(
        data_dir: &Path,
        now: Timestamp,
        access_ttl_ms: i64,
    ) -> anyhow::Result<KeyRing> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            let file = KeyFile {
                keys: vec![StoredKey::new(generate()?, now)?],
            };
            write_key_file(&path, &file)?;
            tracing::info!(path = %path.display(), "created a new token signing key");
        }
        let file = read_key_file(&path)?;
        let keys = still_needed(file.keys, now, access_ttl_ms)
            .iter()
            .map(|key| {
                let der = STANDARD.decode(&key.pkcs8).with_context(|| {
                    format!("{}: key {} is not base64", path.display(), key.kid)
                })?;
                KeyPair::from_pkcs8(&der)
                    .with_context(|| format!("{}: key {}", path.display(), key.kid))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if keys.is_empty() {
            bail!("{} holds no key", path.display());
        }
        Ok(KeyRing { keys })
    }

    /// Adds a new signing key to `data_dir`'s key file, keeping the previous ones
    /// whose tokens may still be valid. Running servers use it after a restart.
    /// Returns the new key's id.
    pub fn rotate(data_dir: &Path, now: Timestamp, access_ttl_ms: i64) -> anyhow::Result<String> {
        let path = data_dir.join(KEY_FILE);
        let new = StoredKey::new(generate()?, now)?;
        let kid = new.kid.clone();
        let mut keys = vec![new];
        if path.exists() {
            keys.extend(read_key_file(&path)?.keys);
        }
        let keys = still_needed(keys, now, access_ttl_ms);
        write_key_file(&path, &KeyFile { keys })?;
        Ok(kid)
    }

    /// The id of the key that signs.
    pub fn current_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Signs `claims` with the newest key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).context("signing an access token")
    }

    /// Every key's public half, by key id, for the authenticator.
    pub fn verification_keys(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        self.keys
            .iter()
            .map(|k| {
                let key = DecodingKey::from_ed_components(&k.x)
                    .map_err(|e| anyhow!("public key {}: {e}", k.kid))?;
                Ok((k.kid.clone(), key))
            })
            .collect()
    }

    /// The public keys as a JSON Web Key Set (RFC 7517), newest first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.x,
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

impl StoredKey {
    fn new(der: Vec<u8>, now: Timestamp) -> anyhow::Result<StoredKey> {
        Ok(StoredKey {
            kid: KeyPair::from_pkcs8(&der)?.kid,
            created_at: now.as_millis(),
            pkcs8: STANDARD.encode(der),
        })
    }
}

/// The keys (newest first) still needed at `now`: the newest, and each older one
/// whose successor was made less than a token lifetime ago, as tokens it signed
/// may still be valid.
fn still_needed(keys: Vec<StoredKey>, now: Timestamp, access_ttl_ms: i64) -> Vec<StoredKey> {
    let mut successor_created: Option<i64> = None;
    keys.into_iter()
        .take_while(|key| {
            let needed = successor_created.is_none_or(|s| s + access_ttl_ms >= now.as_millis());
            successor_created = Some(key.created_at);
            needed
        })
        .collect()
}

fn read_key_file(path: &Path) -> anyhow::Result<KeyFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read the signing keys in {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a signing key file", path.display()))
}

/// Writes the file readable by its owner only, replacing the old one atomically.
fn write_key_file(path: &Path, file: &KeyFile) -> anyhow::Result<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
    }
    let tmp: PathBuf = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options
        .open(&tmp)
        .with_context(|| format!("Failed to write {}", tmp.display()))?;
    out.write_all(&serde_json::to_vec_pretty(file)?)?;
    out.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("Failed to replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[derive(Serialize, Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    #[test]
    fn the_first_start_creates_a_key_that_later_starts_reuse() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let now = Timestamp::from_millis(10 * HOUR);
        let first = KeyRing::load_or_create(dir.path(), now, HOUR)?;
        let again = KeyRing::load_or_create(dir.path(), now, HOUR)?;
        assert_eq!(first.current_kid(), again.current_kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn a_rotated_key_signs_and_the_previous_one_verifies_until_its_tokens_expire()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let t0 = Timestamp::from_millis(10 * HOUR);
        let old = KeyRing::load_or_create(dir.path(), t0, HOUR)?;
        let new_kid = KeyRing::rotate(dir.path(), Timestamp::from_millis(11 * HOUR), HOUR)?;

        let soon =
            KeyRing::load_or_create(dir.path(), Timestamp::from_millis(11 * HOUR + 1), HOUR)?;
        assert_eq!(soon.current_kid(), new_kid);
        let keys = soon.verification_keys()?;
        assert!(
            keys.contains_key(old.current_kid()),
            "the previous key still verifies"
        );
        assert_eq!(soon.jwks()["keys"].as_array().map(Vec::len), Some(2));

        let later =
            KeyRing::load_or_create(dir.path(), Timestamp::from_millis(12 * HOUR + 1), HOUR)?;
        assert!(!later.verification_keys()?.contains_key(old.current_kid()));
        Ok(())
    }

    #[test]
    fn a_token_signed_by_the_ring_verifies_with_its_published_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ring = KeyRing::load_or_create(dir.path(), Timestamp::from_millis(0), HOUR)?;
        let exp =
            u64::try_from(agora_kernel::Clock::now(&agora_kernel::SystemClock).as_millis() / 1000)?
                + 60;
        let token = ring.sign(&Claims {
            sub: "x".into(),
            exp,
        })?;
        let header = jsonwebtoken::decode_header(&token)?;
        assert_eq!(header.alg, Algorithm::EdDSA);
        let keys = ring.verification_keys()?;
        let key = keys
            .get(header.kid.as_deref().unwrap_or_default())
            .ok_or_else(|| anyhow!("kid"))?;
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Claims>(&token, key, &validation)?;
        assert_eq!(decoded.claims.sub, "x");
        Ok(())
    }

    #[test]
    fn a_configured_key_must_be_an_ed25519_pkcs8_key() {
        assert!(KeyRing::from_config("not base64!").is_err());
        assert!(KeyRing::from_config(&STANDARD.encode(b"garbage")).is_err());
        let der = generate().unwrap_or_default();
        let ring = KeyRing::from_config(&STANDARD.encode(&der));
        assert!(ring.is_ok());
    }
}
