//! The TLS side of the MQTT listeners: server configuration, the
//! swappable acceptor, and the client identity taken from the certificate.
//!
//! Only forward-secret suites are offered (rustls's ring provider has no
//! static-RSA suites), TLS 1.2 and 1.3, client certificates required and
//! verified against the configured CA(s) with webpki (chain, validity,
//! key usage). ALPN `x-amzn-mqtt-ca` and `mqtt` are accepted as AWS IoT does;
//! clients that offer no ALPN are served too. Session tickets are off, as on
//! AWS IoT.

use crate::metrics::HandshakeFailure;
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// ALPN protocols accepted, as on AWS IoT.
pub const ALPN: [&[u8]; 2] = [b"x-amzn-mqtt-ca", b"mqtt"];

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was missing or wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.display().to_string(),
            what: "no private key found".into(),
        })
}

/// Builds the server configuration from the CA, certificate and key files.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: ca.display().to_string(),
            what: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, read_key(key)?)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The acceptor in use; swapped whole when certificates change, so live
/// connections keep the configuration they started with.
#[derive(Debug)]
pub struct Acceptor(ArcSwap<ServerConfig>);

impl Acceptor {
    /// Wraps a configuration.
    pub fn new(config: ServerConfig) -> Self {
        Self(ArcSwap::from_pointee(config))
    }

    /// The acceptor for one new connection (one `Arc` clone).
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn swap(&self, config: ServerConfig) {
        self.0.store(Arc::new(config));
    }
}

/// Classifies a failed handshake for the metrics.
pub fn classify(err: &std::io::Error) -> HandshakeFailure {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return HandshakeFailure::Io;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            HandshakeFailure::UnknownCa
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => HandshakeFailure::Expired,
        rustls::Error::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
        _ => HandshakeFailure::Tls,
    }
}

/// Subject or issuer fields of a certificate that policies may refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Name {
    /// CN
    pub common_name: Option<String>,
    /// O
    pub organization: Option<String>,
    /// OU
    pub organizational_unit: Option<String>,
    /// C
    pub country: Option<String>,
    /// ST
    pub state: Option<String>,
    /// L
    pub locality: Option<String>,
    /// The whole name in RFC 4514 form.
    pub rfc4514: String,
}

impl Name {
    fn from_x509(name: &X509Name<'_>) -> Self {
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_owned) };
        Self {
            common_name: first(&mut name.iter_common_name()),
            organization: first(&mut name.iter_organization()),
            organizational_unit: first(&mut name.iter_organizational_unit()),
            country: first(&mut name.iter_country()),
            state: first(&mut name.iter_state_or_province()),
            locality: first(&mut name.iter_locality()),
            rfc4514: name.to_string(),
        }
    }
}

/// Who is on the other end of a connection, from its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// AWS certificate id: lowercase hex SHA-256 of the DER encoding.
    pub certificate_id: String,
    /// Subject fields.
    pub subject: Name,
    /// Issuer fields.
    pub issuer: Name,
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

impl ClientIdentity {
    /// Reads the identity from a DER certificate (already verified by the handshake).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        Some(Self {
            certificate_id: hex(digest.as_ref()),
            subject: Name::from_x509(cert.subject()),
            issuer: Name::from_x509(cert.issuer()),
            serial_number: hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::pki::{Ca, KeyKind};

    #[test]
    fn identity_from_generated_certificate() {
        let ca = Ca::generate("test CA").expect("ca");
        let dev = ca
            .issue_device("thing-7", KeyKind::EcdsaP256)
            .expect("device");
        let der = rustls_pemfile::certs(&mut dev.cert.as_bytes())
            .next()
            .expect("one cert")
            .expect("pem");
        let id = ClientIdentity::from_der(&der).expect("parses");
        assert_eq!(id.subject.common_name.as_deref(), Some("thing-7"));
        assert_eq!(id.issuer.common_name.as_deref(), Some("test CA"));
        assert_eq!(id.issuer.organization.as_deref(), Some("edgegate"));
        assert_eq!(id.certificate_id.len(), 64);
        let want = hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
        assert_eq!(id.certificate_id, want);
        assert!(id.not_before < id.not_after);
    }
}
