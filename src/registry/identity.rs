//! Who is on the other end of a connection, read from its client
//! certificate: the AWS certificate id and the subject and issuer fields
//! that policy variables refer to.

use crate::policy::compile::Context;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

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
    /// Every value of the attributes policies can name, in certificate order,
    /// by AWS's attribute name (`CommonName`, `OrganizationalUnit`, ...).
    pub values: Vec<(&'static str, Vec<String>)>,
}

impl Name {
    fn from_x509(name: &X509Name<'_>) -> Self {
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_owned) };
        let all = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            it.filter_map(|a| a.as_str().ok().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        let values = vec![
            ("CommonName", all(&mut name.iter_common_name())),
            ("Organization", all(&mut name.iter_organization())),
            (
                "OrganizationalUnit",
                all(&mut name.iter_organizational_unit()),
            ),
            ("Country", all(&mut name.iter_country())),
            ("State", all(&mut name.iter_state_or_province())),
        ];
        Self {
            values,
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
    /// Serial number in decimal, as `${iot:Certificate.SerialNumber}` gives it.
    pub serial_decimal: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// The certificate, PEM encoded, for the registry.
    pub pem: String,
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
            serial_decimal: cert.serial.to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            pem: pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
        })
    }

    /// The identity of the first certificate in a PEM text.
    pub fn from_pem(pem: &str) -> Option<Self> {
        Self::from_der(&first_der(pem)?)
    }

    /// Adds the certificate's policy variables (spec/aws-iot-auth.md §1.7).
    pub fn add_to(&self, ctx: &mut Context) {
        ctx.set("iot:CertificateId", self.certificate_id.clone());
        ctx.set("iot:Certificate.SerialNumber", self.serial_decimal.clone());
        for (side, name) in [("Subject", &self.subject), ("Issuer", &self.issuer)] {
            for (attr, values) in &name.values {
                // AWS leaves values with wildcard characters, or longer than
                // 1024 characters, unsubstituted (spec §1.7): they stay unresolved.
                let usable: Vec<String> = values
                    .iter()
                    .filter(|v| v.len() <= 1024 && !v.contains(['*', '$', '+', '?', '#']))
                    .cloned()
                    .collect();
                let key = format!("iot:Certificate.{side}.{attr}");
                if let Some(first) = usable.first() {
                    ctx.set(&key, first.clone());
                }
                // `.1` is the second value; `.List` all of them, at most five.
                for (i, v) in usable.iter().enumerate().skip(1) {
                    ctx.set(&format!("{key}.{i}"), v.clone());
                }
                if !usable.is_empty() {
                    ctx.set_all(&format!("{key}.List"), usable.into_iter().take(5).collect());
                }
            }
        }
    }
}

/// Whether the CA certificate `ca_pem` signed `cert`: several CAs may share
/// a subject (every `edgegate cert ca` has the same one), so the subject
/// alone does not name the issuer.
pub fn issued_by(cert: &ClientIdentity, ca_pem: &str) -> bool {
    let (Some(leaf), Some(ca)) = (first_der(&cert.pem), first_der(ca_pem)) else {
        return false;
    };
    match (
        X509Certificate::from_der(&leaf),
        X509Certificate::from_der(&ca),
    ) {
        (Ok((_, leaf)), Ok((_, ca))) => leaf.verify_signature(Some(ca.public_key())).is_ok(),
        _ => false,
    }
}

/// The DER of the first certificate in a PEM text.
fn first_der(pem: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
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

/// A random (version 4) UUID, as thing ids and `newuuid()` are.
pub fn uuid_v4() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
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
        let der = first_der(&dev.cert).expect("pem");
        let id = ClientIdentity::from_der(&der).expect("parses");
        assert_eq!(id.subject.common_name.as_deref(), Some("thing-7"));
        assert_eq!(id.issuer.common_name.as_deref(), Some("test CA"));
        assert_eq!(id.issuer.organization.as_deref(), Some("edgegate"));
        assert_eq!(id.certificate_id.len(), 64);
        let want = hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
        assert_eq!(id.certificate_id, want);
        assert!(id.not_before < id.not_after);
    }

    #[test]
    fn the_issuer_is_the_ca_whose_key_signed_not_the_first_with_the_subject() {
        let (first, second) = (
            Ca::generate("same name").expect("ca"),
            Ca::generate("same name").expect("ca"),
        );
        let dev = second
            .issue_device("d", KeyKind::EcdsaP256)
            .expect("device");
        let id = ClientIdentity::from_pem(&dev.cert).expect("parses");
        assert!(!issued_by(&id, &first.pem.cert));
        assert!(issued_by(&id, &second.pem.cert));
        assert!(!issued_by(&id, "not a certificate"));
    }

    #[test]
    fn attribute_values_with_wildcards_stay_unresolved() {
        let ca = Ca::generate("test CA").expect("ca");
        for (cn, usable) in [("plain-7", true), ("evil#", false), ("star*", false)] {
            let dev = ca.issue_device(cn, KeyKind::EcdsaP256).expect("device");
            let mut ctx = Context::new();
            ClientIdentity::from_pem(&dev.cert)
                .expect("parses")
                .add_to(&mut ctx);
            let got = ctx.get("iot:Certificate.Subject.CommonName");
            assert_eq!(got.is_some(), usable, "{cn}");
            assert_eq!(
                ctx.get("iot:Certificate.Subject.CommonName.List").is_some(),
                usable
            );
            assert_eq!(
                ctx.get("iot:Certificate.Issuer.CommonName"),
                Some(&["test CA".to_owned()][..])
            );
        }
    }
}
