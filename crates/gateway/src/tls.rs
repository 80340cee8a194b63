//! TLS termination: the certificate the gateway presents, replaceable while it
//! runs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{GatewayConfigError, TlsConfig};

/// The certificate in force: new connections get the one set last.
#[derive(Debug)]
pub(crate) struct Certificate {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificate {
    /// The certificate and key `config` names, read now.
    pub(crate) fn load(config: &TlsConfig) -> Result<Certificate, GatewayConfigError> {
        Ok(Certificate {
            current: ArcSwap::from_pointee(certified_key(config)?),
        })
    }

    /// Reads the files again; new connections present what they now hold.
    pub(crate) fn replace(&self, config: &TlsConfig) -> Result<(), GatewayConfigError> {
        self.current.store(Arc::new(certified_key(config)?));
        Ok(())
    }

    /// A server configuration that presents this certificate (HTTP/1.1, the
    /// ring provider, TLS 1.2 and 1.3).
    pub(crate) fn server_config(
        self: &Arc<Self>,
    ) -> Result<Arc<rustls::ServerConfig>, GatewayConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayConfigError::new("tls", &e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn certified_key(config: &TlsConfig) -> Result<CertifiedKey, GatewayConfigError> {
    let certs =
        read_certs(&config.cert).map_err(|why| GatewayConfigError::new("tls.cert", &why))?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        GatewayConfigError::new(
            "tls.key",
            &format!("{}: no PEM private key: {e}", config.key.display()),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        GatewayConfigError::new("tls.key", &format!("{}: {e}", config.key.display()))
    })?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        GatewayConfigError::new(
            "tls.key",
            &format!("does not match the certificate in tls.cert: {e}"),
        )
    })?;
    Ok(certified)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
