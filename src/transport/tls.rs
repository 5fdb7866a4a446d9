//! The TLS side of the MQTT listeners: server configuration, the
//! swappable acceptor, and the client identity taken from the certificate.
//!
//! Only forward-secret suites are offered (rustls's ring provider has no
//! static-RSA suites), TLS 1.2 and 1.3, client certificates required and
//! verified against the configured CA(s) with webpki (chain, validity,
//! key usage) and, when `tls.crl` names a file, against its certificate
//! revocation lists. ALPN protocols are accepted as AWS IoT's port 443 does
//! (see [`ALPN`]); clients that offer no ALPN are served too. Session tickets are off, as on
//! AWS IoT.

use crate::config::{ClientCert, Tls};
use crate::metrics::HandshakeFailure;
use crate::transport::stream::{self, NotesServerName};
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// ALPN protocols every TLS listener accepts, as AWS IoT's port 443 does:
/// MQTT (`x-amzn-mqtt-ca`, `mqtt`), then HTTP (`x-amzn-http-ca`,
/// `http/1.1`: the device HTTPS endpoint, or MQTT over WebSockets).
pub const ALPN: &[&[u8]] = &[b"x-amzn-mqtt-ca", b"mqtt", b"x-amzn-http-ca", b"http/1.1"];

/// Whether an agreed ALPN protocol is MQTT's.
pub fn is_mqtt_alpn(protocol: &[u8]) -> bool {
    ALPN[..2].contains(&protocol)
}

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
    read_pem(path, "certificate", |mut pem| {
        rustls_pemfile::certs(&mut pem).collect()
    })
}

/// Reads every certificate revocation list in a PEM file.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    read_pem(path, "certificate revocation list", |mut pem| {
        rustls_pemfile::crls(&mut pem).collect()
    })
}

/// The certificates the configured revocation lists name: each by its
/// issuer (RFC 4514) and serial number, so that live connections can be
/// checked when a list changes (the handshake checks new ones itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    listed: std::collections::HashSet<(String, Vec<u8>)>,
}

impl Revoked {
    /// Reads every list in `path`; none when `path` is `None`.
    pub fn read(path: Option<&Path>) -> Result<Self, TlsError> {
        use x509_parser::prelude::FromDer;
        let mut listed = std::collections::HashSet::new();
        let Some(path) = path else {
            return Ok(Self { listed });
        };
        for der in read_crls(path)? {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                .map_err(|e| pem_error(path, format!("unreadable revocation list: {e}")))?;
            let issuer = crl.issuer().to_string();
            for entry in crl.iter_revoked_certificates() {
                listed.insert((issuer.clone(), entry.raw_serial().to_vec()));
            }
        }
        Ok(Self { listed })
    }

    /// Whether the certificate `der` is listed.
    pub fn lists(&self, der: &[u8]) -> bool {
        use x509_parser::prelude::FromDer;
        !self.listed.is_empty()
            && x509_parser::certificate::X509Certificate::from_der(der).is_ok_and(|(_, cert)| {
                self.listed
                    .contains(&(cert.issuer().to_string(), cert.raw_serial().to_vec()))
            })
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read(path)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| pem_error(path, e.to_string()))?
        .ok_or_else(|| pem_error(path, "no private key found".into()))
}

/// The items `parse` finds in a PEM file; at least one `what` is required.
fn read_pem<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&[u8]) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, TlsError> {
    let items = parse(&read(path)?).map_err(|e| pem_error(path, e.to_string()))?;
    if items.is_empty() {
        return Err(pem_error(path, format!("no {what} found")));
    }
    Ok(items)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: String) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what,
    }
}

/// The CA certificates in a PEM file, as trust roots.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| pem_error(path, e.to_string()))?;
    }
    Ok(roots)
}

/// A client configuration that trusts the CA in `ca` and presents the
/// certificate and key in `cert` and `key`, with `alpn` if given: the
/// bridge's to its upstream, and the load tool's.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: Option<&[u8]>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)?;
    config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Ok(config)
}

/// Builds the server configuration from the `[tls]` files, offering
/// [`ALPN`], requiring client certificates or not, and trusting, besides
/// `tls.ca`, the CA certificates in `registered` (PEM; the CAs registered
/// through the control plane).
///
/// Revocation lists are checked for device certificates only, and a
/// certificate whose CA published no list is accepted: a gateway trusting
/// several CAs need not hold a list for each.
pub fn server_config(
    tls: &Tls,
    client_cert: ClientCert,
    registered: &[String],
) -> Result<ServerConfig, TlsError> {
    let (ca, cert, key) = (&tls.ca, &tls.cert, &tls.key);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = read_roots(ca)?;
    for pem in registered {
        for der in rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok) {
            if let Err(e) = roots.add(der) {
                tracing::warn!(error = %e, "a registered CA certificate is not usable as a trust root");
            }
        }
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &tls.crl {
        verifier = verifier
            .with_crls(read_crls(crl)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if client_cert == ClientCert::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(NotesServerName::new(CertifiedKey::from_der(
            read_certs(cert)?,
            read_key(key)?,
            &provider,
        )?)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.send_tls13_tickets = 0;
    stream::records_after_handshake(&mut config);
    Ok(config)
}

/// A server configuration for each client-certificate mode.
#[derive(Debug)]
pub struct Configs {
    /// For listeners that require a client certificate.
    pub required: ServerConfig,
    /// For listeners where it is optional.
    pub optional: ServerConfig,
}

impl Configs {
    /// Both configurations (see [`server_config`]).
    pub fn build(tls: &Tls, registered: &[String]) -> Result<Self, TlsError> {
        Ok(Self {
            required: server_config(tls, ClientCert::Required, registered)?,
            optional: server_config(tls, ClientCert::Optional, registered)?,
        })
    }
}

/// The configurations in use; swapped whole when certificates change, so
/// live connections keep the configuration they started with.
#[derive(Debug)]
pub struct Acceptor {
    required: ArcSwap<ServerConfig>,
    optional: ArcSwap<ServerConfig>,
}

impl Acceptor {
    /// Wraps the configurations.
    pub fn new(configs: Configs) -> Self {
        Self {
            required: ArcSwap::from_pointee(configs.required),
            optional: ArcSwap::from_pointee(configs.optional),
        }
    }

    /// The configuration for one new connection (one `Arc` clone).
    pub fn current(&self, client_cert: ClientCert) -> Arc<ServerConfig> {
        match client_cert {
            ClientCert::Required => self.required.load_full(),
            ClientCert::Optional => self.optional.load_full(),
        }
    }

    /// Replaces the configurations for connections accepted from now on.
    pub fn swap(&self, configs: Configs) {
        self.required.store(Arc::new(configs.required));
        self.optional.store(Arc::new(configs.optional));
    }
}

/// A failed handshake's class in words, for the operator's log.
pub fn in_words(failure: HandshakeFailure) -> &'static str {
    match failure {
        HandshakeFailure::Timeout => "the handshake did not finish in time",
        HandshakeFailure::NoCertificate => "the client presented no certificate",
        HandshakeFailure::UnknownCa => {
            "the client's certificate is not issued by a CA the gateway trusts"
        }
        HandshakeFailure::Expired => "the client's certificate has expired or is not yet valid",
        HandshakeFailure::Revoked => "the client's certificate is on a revocation list",
        HandshakeFailure::BadCertificate => "the client's certificate is not acceptable",
        HandshakeFailure::Tls => "the client broke the TLS protocol or offered nothing in common",
        HandshakeFailure::Io => "the connection closed during the handshake",
        HandshakeFailure::BadConnect => "the first packet was not a valid CONNECT",
        HandshakeFailure::Refused => "the CONNECT was refused",
        HandshakeFailure::ConnectionLimit => "the gateway is at its connection limit",
        HandshakeFailure::BadUpgrade => "the HTTP request was no WebSocket upgrade to serve",
        HandshakeFailure::BadSignature => "the WebSocket upgrade's signature is not good",
        HandshakeFailure::UntrustedProxy => "the connection is not from a trusted proxy",
        HandshakeFailure::BadProxyHeader => "the PROXY protocol header is missing or malformed",
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
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => HandshakeFailure::Revoked,
        rustls::Error::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
        _ => HandshakeFailure::Tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_file_without_a_list_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crl.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = read_crls(&path).expect_err("no list in it");
        assert!(
            err.to_string()
                .contains("no certificate revocation list found"),
            "{err}"
        );
        let missing = read_crls(&dir.path().join("absent.pem")).expect_err("no file");
        assert!(missing.to_string().contains("absent.pem"), "{missing}");
    }
}
