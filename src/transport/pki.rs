//! Certificate material the gateway makes for itself: a local CA, the
//! server certificate and device certificates signed by that CA.
//!
//! ECDSA P-256 is the default everywhere (small, fast handshakes, what AWS
//! IoT recommends for constrained devices); RSA 2048 is available for
//! device stacks that cannot do ECC. Private keys are written with mode 0600.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Why certificate material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Generating, parsing or signing failed.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// RSA key generation failed.
    #[error("RSA key generation failed: {0}")]
    Rsa(String),
}

/// The key algorithm of a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256.
    Rsa2048,
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Pem {
    /// Certificate PEM.
    pub cert: String,
    /// Private key PEM (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").field("key", &"<redacted>").finish()
    }
}

/// A CA able to sign certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate and key.
    pub pem: Pem,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

fn new_key(kind: KeyKind) -> Result<KeyPair, PkiError> {
    match kind {
        KeyKind::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
        KeyKind::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| PkiError::Rsa(e.to_string()))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| PkiError::Rsa(e.to_string()))?;
            Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                &der.as_bytes().into(),
                &rcgen::PKCS_RSA_SHA256,
            )?)
        }
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl Ca {
    /// Creates a new self-signed CA (ECDSA P-256, ten years).
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = new_key(KeyKind::EcdsaP256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "edgegate");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, PkiError> {
        let key_pair = KeyPair::from_pem(key)?;
        let issuer = Issuer::from_ca_cert_pem(cert, key_pair)?;
        Ok(Self {
            issuer,
            pem: Pem {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
        })
    }

    /// Loads a CA from `ca.pem` and `ca.key` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join("ca.pem"))?;
        let key = read(&dir.join("ca.key"))?;
        Self::from_pem(&cert, &key)
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Pem, PkiError> {
        let key = new_key(KeyKind::EcdsaP256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("edgegate"),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 825);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Issues a device (client) certificate with the given common name.
    pub fn issue_device(&self, common_name: &str, kind: KeyKind) -> Result<Pem, PkiError> {
        self.issue_device_valid(common_name, kind, -1, 825)
    }

    /// Issues a device certificate valid from `from_days` to `to_days` relative to now
    /// (tests use a window in the past to make an expired certificate).
    pub fn issue_device_valid(
        &self,
        common_name: &str,
        kind: KeyKind,
        from_days: i64,
        to_days: i64,
    ) -> Result<Pem, PkiError> {
        let key = new_key(kind)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(from_days);
        params.not_after = now + Duration::days(to_days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What CreateKeysAndCertificate hands out: the only copy of the private key.
pub struct Issued {
    /// Certificate PEM.
    pub cert: String,
    /// Private key PEM, PKCS#1 (`RSA PRIVATE KEY`) as AWS IoT gives it.
    pub private_key: String,
    /// Public key PEM (`PUBLIC KEY`).
    pub public_key: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Client-auth parameters valid to the end of 2049, as AWS-issued
/// certificates are (spec/aws-iot-auth.md §2.3).
fn aws_issued(params: &mut CertificateParams) {
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = time::macros::datetime!(2049-12-31 23:59:59 UTC);
}

impl Ca {
    /// A new RSA 2048 key and a certificate for it (`CN=AWS IoT Certificate`),
    /// as AWS IoT's CreateKeysAndCertificate makes them.
    pub fn issue_keys_and_certificate(&self) -> Result<Issued, PkiError> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let rsa_err = |e: &dyn std::fmt::Display| PkiError::Rsa(e.to_string());
        let private =
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| rsa_err(&e))?;
        let pkcs8 = private.to_pkcs8_der().map_err(|e| rsa_err(&e))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &pkcs8.as_bytes().into(),
            &rcgen::PKCS_RSA_SHA256,
        )?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "AWS IoT Certificate");
        aws_issued(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            private_key: private
                .to_pkcs1_pem(LineEnding::LF)
                .map_err(|e| rsa_err(&e))?
                .to_string(),
            public_key: private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| rsa_err(&e))?,
        })
    }

    /// Signs a certificate signing request (its signature already checked
    /// by the parse) with the CSR's subject and key.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        aws_issued(&mut csr.params);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file, creating its directory; private keys get mode 0600,
/// whatever mode a file already there had.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut f = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(contents.as_bytes()).map_err(io)
}

/// Writes `NAME.pem` and `NAME.key` into `dir`.
pub fn write_pair(dir: &Path, name: &str, pem: &Pem) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write(&cert, &pem.cert, false)?;
    write(&key, &pem.key, true)?;
    Ok((cert, key))
}

/// What first-run generation created: the device's and the operator's
/// certificates (PEM), for registration.
#[derive(Debug, Clone)]
pub struct FirstRun {
    /// The device certificate, PEM.
    pub device: String,
    /// The operator certificate, PEM.
    pub operator: String,
}

/// The device made on first run.
pub const FIRST_DEVICE: &str = "device-1";

/// The operator made on first run: it may watch every thing's topics.
pub const FIRST_OPERATOR: &str = "operator";

/// Creates the CA, the server certificate, a device certificate and an
/// operator certificate in `certs_dir` unless the CA, server certificate and
/// key already exist.
/// Returns what was created, or `None` if nothing was needed.
pub fn ensure_first_run(
    certs_dir: &Path,
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Option<FirstRun>, PkiError> {
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok(None);
    }
    let ca = match Ca::load(certs_dir) {
        Ok(ca) => ca,
        Err(_) => {
            let ca = Ca::generate("edgegate local CA")?;
            write(&certs_dir.join("ca.key"), &ca.pem.key, true)?;
            ca
        }
    };
    write(ca_path, &ca.pem.cert, false)?;
    let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
    write(cert_path, &server.cert, false)?;
    write(key_path, &server.key, true)?;
    let device = ca.issue_device(FIRST_DEVICE, KeyKind::EcdsaP256)?;
    write_pair(certs_dir, FIRST_DEVICE, &device)?;
    let operator = ca.issue_device(FIRST_OPERATOR, KeyKind::EcdsaP256)?;
    write_pair(certs_dir, FIRST_OPERATOR, &operator)?;
    Ok(Some(FirstRun {
        device: device.cert,
        operator: operator.cert,
    }))
}
