//! Object storage: blobs under keys — product images and their renditions,
//! exports — on the local disk (the default, under `<data_dir>/objects`) or in
//! an S3-compatible bucket, through the `object_store` crate.
//!
//! Keys are checked ([`ObjectKey`]): lowercase ASCII segments joined by `/`, so
//! no key can climb out of its directory or mean two things to two backends.
//! Writes are whole (a reader never sees half an object): the local backend
//! writes a temporary file and renames it, S3 makes an object visible once its
//! upload completes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::config::{Config, StorageBackend};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A checked object key: 1 to 512 bytes of segments of `a-z 0-9 . _ -` joined
/// by `/`, no segment empty or made of dots only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// `raw` as a key, or why it is not one.
    pub fn parse(raw: &str) -> Result<ObjectKey, &'static str> {
        if raw.is_empty() || raw.len() > MAX_KEY_LEN {
            return Err("must be 1 to 512 bytes");
        }
        for segment in raw.split('/') {
            if segment.is_empty() || segment.bytes().all(|b| b == b'.') {
                return Err("must not have empty or dot-only segments");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                return Err("must be made of a-z 0-9 . _ - and /");
            }
        }
        Ok(ObjectKey(raw.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The content type its extension names: what objects are stored as.
    pub fn content_type(&self) -> &'static str {
        match self.0.rsplit_once('.').map(|(_, ext)| ext) {
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            Some("csv") => "text/csv; charset=utf-8",
            Some("json") => "application/json",
            Some("txt") => "text/plain; charset=utf-8",
            Some("html") => "text/html; charset=utf-8",
            _ => "application/octet-stream",
        }
    }

    /// The last segment without its extension: for content-addressed keys
    /// (`images/<sha256>.png`), the content hash, fit for an entity tag.
    pub fn stem(&self) -> &str {
        let name = self.0.rsplit('/').next().unwrap_or(&self.0);
        name.split('.').next().unwrap_or(name)
    }

    fn path(&self) -> StorePath {
        // Checked above: every segment is a valid object_store path part.
        StorePath::from(self.0.as_str())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under that key.
    #[error("no object {0}")]
    NotFound(ObjectKey),
    /// The backend failed (unreachable, refused, a disk error).
    #[error("object storage failed: {0:#}")]
    Unavailable(anyhow::Error),
}

impl StorageError {
    fn from_store(key: &ObjectKey, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.clone()),
            other => StorageError::Unavailable(other.into()),
        }
    }
}

/// An object being read: its size, and its bytes as they arrive.
pub struct Object {
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub body: BoxStream<'static, Result<Bytes, StorageError>>,
}

/// The object storage. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    backend: StorageBackend,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStorage({})", self.store)
    }
}

impl ObjectStorage {
    /// The storage `config.storage` asks for.
    pub fn from_config(config: &Config) -> anyhow::Result<ObjectStorage> {
        match config.storage.backend {
            StorageBackend::Local => Self::local(&config.storage_path()),
            StorageBackend::S3 => {
                let s = &config.storage;
                // The usual AWS_* variables (credentials, session token,
                // instance roles) first; the configured settings win.
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s.s3_bucket)
                    .with_region(&s.s3_region)
                    .with_allow_http(s.s3_allow_http);
                if let Some(endpoint) = &s.s3_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) = (&s.s3_access_key_id, &s.s3_secret_access_key) {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret.expose());
                }
                Self::s3(builder)
            }
        }
    }

    /// Files under `dir`, created if missing.
    pub fn local(dir: &Path) -> anyhow::Result<ObjectStorage> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "Failed to create the object storage directory {} (`storage.path`)",
                dir.display()
            )
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("Failed to open {} (`storage.path`)", dir.display()))?;
        Ok(ObjectStorage {
            store: Arc::new(store),
            backend: StorageBackend::Local,
        })
    }

    /// A bucket of an S3-compatible service, as `builder` describes it.
    pub fn s3(builder: AmazonS3Builder) -> anyhow::Result<ObjectStorage> {
        // reqwest's rustls takes the process's crypto provider: ring, as the
        // rest of the tree. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = builder
            .build()
            .context("The S3 settings are incomplete (`storage.s3_*`)")?;
        Ok(ObjectStorage {
            store: Arc::new(store),
            backend: StorageBackend::S3,
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> StorageBackend {
        self.backend
    }

    /// Stores `bytes` under `key`, replacing what was there. The object is
    /// visible whole or not at all.
    pub async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&key.path(), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_store(key, e))
    }

    /// The object under `key`, streamed.
    pub async fn get(&self, key: &ObjectKey) -> Result<Object, StorageError> {
        let found = self
            .store
            .get(&key.path())
            .await
            .map_err(|e| StorageError::from_store(key, e))?;
        let size = found.meta.size;
        let key = key.clone();
        let body = found
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| StorageError::from_store(&key, e)))
            .boxed();
        Ok(Object { size, body })
    }

    /// The whole object under `key`.
    pub async fn read(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let found = self
            .store
            .get(&key.path())
            .await
            .map_err(|e| StorageError::from_store(key, e))?;
        found
            .bytes()
            .await
            .map_err(|e| StorageError::from_store(key, e))
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        match self.store.head(&key.path()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::from_store(key, e)),
        }
    }

    /// Removes the object under `key`; removing a missing one is no error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::from_store(key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> ObjectKey {
        ObjectKey::parse(raw).expect("a valid key")
    }

    #[test]
    fn keys_stay_inside_their_directory() {
        for bad in [
            "",
            "/images/a.png",
            "images//a.png",
            "images/",
            "../a.png",
            "images/../../etc/passwd",
            "images/./a.png",
            "Images/a.png",
            "images/a b.png",
            "images\\a.png",
            "images/%2e%2e/a",
            &"a".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(key("images/ab/0f.png").as_str(), "images/ab/0f.png");
        assert_eq!(key("a.b-c_d").content_type(), "application/octet-stream");
        assert_eq!(key("x/y.jpg").content_type(), "image/jpeg");
        assert_eq!(key("renditions/ab12-128.jpg").stem(), "ab12-128");
        assert_eq!(key("noext").stem(), "noext");
    }

    /// The contract both backends keep; each backend's test runs it.
    async fn keeps_objects(storage: &ObjectStorage) {
        let k = key(&format!("tests/{}/a.txt", uuid::Uuid::now_v7().simple()));
        assert!(!storage.exists(&k).await.expect("head"));
        assert!(matches!(
            storage.read(&k).await,
            Err(StorageError::NotFound(_))
        ));
        storage
            .put(&k, Bytes::from_static(b"first"))
            .await
            .expect("put");
        storage
            .put(&k, Bytes::from_static(b"second"))
            .await
            .expect("put again");
        assert!(storage.exists(&k).await.expect("head"));
        assert_eq!(&storage.read(&k).await.expect("read")[..], b"second");
        let object = storage.get(&k).await.expect("get");
        assert_eq!(object.size, 6);
        let streamed: Vec<Bytes> = object
            .body
            .map(|c| c.expect("a chunk"))
            .collect::<Vec<_>>()
            .await;
        assert_eq!(streamed.concat(), b"second");
        storage.delete(&k).await.expect("delete");
        storage.delete(&k).await.expect("delete twice");
        assert!(!storage.exists(&k).await.expect("head"));
    }

    #[tokio::test]
    async fn the_local_backend_keeps_objects_under_its_directory() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let storage = ObjectStorage::local(&dir.path().join("objects")).expect("storage");
        keeps_objects(&storage).await;
        storage
            .put(&key("images/x.png"), Bytes::from_static(b"png"))
            .await
            .expect("put");
        assert_eq!(
            std::fs::read(dir.path().join("objects/images/x.png")).expect("the file"),
            b"png"
        );
    }

    /// Against the S3-compatible server at `AGORA_TEST_S3_URL` (moto, started
    /// by `.ci/run`), in a bucket of its own.
    #[tokio::test]
    #[ignore = "needs an S3-compatible server: set AGORA_TEST_S3_URL (see docs/operations.md)"]
    async fn the_s3_backend_keeps_objects() {
        let url = std::env::var("AGORA_TEST_S3_URL").expect("AGORA_TEST_S3_URL");
        let bucket = format!("agora-test-{}", uuid::Uuid::now_v7().simple());
        create_bucket(&url, &bucket).await;
        let storage = ObjectStorage::s3(
            AmazonS3Builder::new()
                .with_endpoint(&url)
                .with_allow_http(true)
                .with_bucket_name(&bucket)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test"),
        )
        .expect("storage");
        keeps_objects(&storage).await;
    }

    /// Creates `bucket` on the S3-compatible server at `url` (moto takes an
    /// unsigned request).
    pub(crate) async fn create_bucket(url: &str, bucket: &str) {
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", url.trim_end_matches('/')))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(created.status().is_success(), "{}", created.status());
    }
}
