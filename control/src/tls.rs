//! Mutual TLS for the TCP listener and for clients, with rustls.
//!
//! - TLS 1.3 only: the control plane has no old clients to serve, and the hybrid
//!   post-quantum key exchange exists only in 1.3.
//! - Key exchange: X25519MLKEM768 (X25519 combined with ML-KEM-768) first, then the
//!   classical groups for peers without it. The aws-lc-rs provider offers the hybrid
//!   group; [`provider`] puts it first explicitly rather than relying on a default that
//!   has changed between rustls releases.
//! - The server requires a client certificate that chains to the configured CA
//!   ([`WebPkiClientVerifier`]); a connection without one, or with one from another CA,
//!   fails in the handshake and never reaches a gRPC handler.
//! - ALPN `h2`, as gRPC requires.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, NamedGroup, RootCertStore, ServerConfig};

/// Errors loading certificates or building a TLS configuration; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {msg}")]
    Pem {
        what: &'static str,
        path: String,
        msg: String,
    },
    #[error("{0}")]
    Config(String),
}

/// The key exchange preferred for every connection.
pub const PREFERRED_GROUP: NamedGroup = NamedGroup::X25519MLKEM768;

/// aws-lc-rs with X25519MLKEM768 as the first key exchange group.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups.sort_by_key(|g| g.name() != PREFERRED_GROUP);
    Arc::new(p)
}

/// PEM inputs, as bytes (from files or made in tests). `label` names them in errors.
#[derive(Debug, Clone)]
pub struct Pem {
    pub label: String,
    pub bytes: Vec<u8>,
}

impl Pem {
    pub fn read(path: &Path, what: &'static str) -> Result<Pem, TlsError> {
        std::fs::read(path)
            .map(|bytes| Pem {
                label: path.display().to_string(),
                bytes,
            })
            .map_err(|e| TlsError::Pem {
                what,
                path: path.display().to_string(),
                msg: e.to_string(),
            })
    }

    pub fn from_bytes(label: &str, bytes: impl Into<Vec<u8>>) -> Pem {
        Pem {
            label: label.to_string(),
            bytes: bytes.into(),
        }
    }

    fn certs(&self, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let err = |msg: String| TlsError::Pem {
            what,
            path: self.label.clone(),
            msg,
        };
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| TlsError::Pem {
            what: "private key",
            path: self.label.clone(),
            msg: format!("no usable PEM private key: {e}"),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in self.certs("CA certificate")? {
            roots.add(c).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                path: self.label.clone(),
                msg: e.to_string(),
            })?;
        }
        Ok(roots)
    }
}

/// Server side: present `cert`/`key`, require a client certificate signed by `ca`.
pub fn server_config(cert: &Pem, key: &Pem, ca: &Pem) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.certs("certificate")?, key.key()?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.label)))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Client side: trust servers signed by `ca`, present `cert`/`key` when given.
pub fn client_config(ca: &Pem, identity: Option<(&Pem, &Pem)>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(ca.roots()?);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(cert.certs("certificate")?, key.key()?)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.label)))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_group_comes_first() {
        let p = provider();
        assert_eq!(p.kx_groups[0].name(), PREFERRED_GROUP);
        assert!(p.kx_groups.iter().any(|g| g.name() == NamedGroup::X25519));
    }

    #[test]
    fn bad_pem_names_the_file() {
        let junk = Pem::from_bytes("junk.pem", "not a certificate");
        let e = client_config(&junk, None).unwrap_err().to_string();
        assert!(e.contains("junk.pem"), "{e}");
    }
}
