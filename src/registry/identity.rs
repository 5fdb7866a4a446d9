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

/// The distinguished-name attributes AWS IoT names in policy variables
/// (spec aws-iot-auth.md §1.7), with the last arc of their OID (2.5.4.n).
const ATTRIBUTES: [(&str, u64); 13] = [
    ("CommonName", 3),
    ("Surname", 4),
    ("SerialNumber", 5),
    ("Country", 6),
    ("State", 8),
    ("Organization", 10),
    ("OrganizationalUnit", 11),
    ("Title", 12),
    ("GivenName", 42),
    ("Initials", 43),
    ("GenerationQualifier", 44),
    ("DistinguishedNameQualifier", 46),
    ("Pseudonym", 65),
];

impl Name {
    fn from_x509(name: &X509Name<'_>) -> Self {
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_owned) };
        let values = ATTRIBUTES
            .iter()
            .filter_map(|&(attr, arc)| {
                let oid = x509_parser::der_parser::oid::Oid::from(&[2, 5, 4, arc]).ok()?;
                let found: Vec<String> = name
                    .iter_by_oid(&oid)
                    .filter_map(|a| a.as_str().ok().map(str::to_owned))
                    .collect();
                (!found.is_empty()).then_some((attr, found))
            })
            .collect();
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
    /// Subject and issuer alternative names by type, as their policy
    /// variables name them (`Subject.AlternativeName.DNSName`, ...).
    pub alt_names: Vec<(String, Vec<String>)>,
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
            alt_names: alt_names(&cert),
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
        let mut available = vec!["iot:Certificate.SerialNumber".to_owned()];
        let names = [("Subject", &self.subject), ("Issuer", &self.issuer)]
            .into_iter()
            .flat_map(|(side, name)| {
                name.values
                    .iter()
                    .map(move |(attr, values)| (format!("iot:Certificate.{side}.{attr}"), values))
            });
        let alt = self
            .alt_names
            .iter()
            .map(|(name, values)| (format!("iot:Certificate.{name}"), values));
        for (key, values) in names.chain(alt) {
            // AWS leaves values with wildcard characters, or longer than
            // 1024 characters, unsubstituted (spec §1.7): they stay unresolved.
            let usable: Vec<String> = values
                .iter()
                .filter(|v| v.len() <= 1024 && !v.contains(['*', '$', '+', '?', '#']))
                .cloned()
                .collect();
            let Some(first) = usable.first() else {
                continue;
            };
            ctx.set(&key, first.clone());
            // `.1` is the second value; `.List` all of them, at most five.
            for (i, v) in usable.iter().enumerate().skip(1) {
                ctx.set(&format!("{key}.{i}"), v.clone());
            }
            ctx.set_all(&format!("{key}.List"), usable.into_iter().take(5).collect());
            available.push(key);
        }
        // The names of the certificate variables that have values [inferred:
        // AWS documents the key but not the form of its values; the full
        // variable names are what a policy can compare them with].
        ctx.set_all("iot:Certificate.AvailableKeys", available);
    }
}

/// The subject's and the issuer's alternative names, by policy variable.
fn alt_names(cert: &X509Certificate<'_>) -> Vec<(String, Vec<String>)> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |side: &str, names: &[GeneralName<'_>]| {
        for name in names {
            let (kind, value) = match name {
                GeneralName::RFC822Name(v) => ("RFC822Name", (*v).to_owned()),
                GeneralName::DNSName(v) => ("DNSName", (*v).to_owned()),
                GeneralName::URI(v) => ("UniformResourceIdentifier", (*v).to_owned()),
                GeneralName::DirectoryName(n) => ("DirectoryName", n.to_string()),
                GeneralName::IPAddress(b) => match ip_text(b) {
                    Some(ip) => ("IPAddress", ip),
                    None => continue,
                },
                _ => continue,
            };
            let key = format!("{side}.AlternativeName.{kind}");
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, values)) => values.push(value),
                None => out.push((key, vec![value])),
            }
        }
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => add("Subject", &san.general_names),
            ParsedExtension::IssuerAlternativeName(ian) => add("Issuer", &ian.general_names),
            _ => {}
        }
    }
    out
}

/// An IP address from its 4 or 16 bytes.
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::IpAddr::from(b).to_string()),
        _ => None,
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
    fn every_name_attribute_and_alternative_name_is_a_variable() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "dev-9");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 12]), "Sensor");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-42");
        params.subject_alt_names = vec![
            SanType::DnsName("dev-9.example".try_into().expect("dns")),
            SanType::DnsName("dev-9.local".try_into().expect("dns")),
            SanType::IpAddress("10.1.2.3".parse().expect("ip")),
            SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
            SanType::URI("spiffe://site/dev-9".try_into().expect("uri")),
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let mut ctx = Context::new();
        ClientIdentity::from_der(cert.der())
            .expect("parses")
            .add_to(&mut ctx);
        let one = |k: &str| ctx.get(k).map(|v| v.join(","));
        // (policy variable, value)
        let cases = [
            ("iot:Certificate.Subject.Title", "Sensor"),
            ("iot:Certificate.Subject.SerialNumber", "SN-42"),
            (
                "iot:Certificate.Subject.AlternativeName.DNSName",
                "dev-9.example",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.DNSName.1",
                "dev-9.local",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.DNSName.List",
                "dev-9.example,dev-9.local",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.IPAddress",
                "10.1.2.3",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.RFC822Name",
                "ops@example.com",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.UniformResourceIdentifier",
                "spiffe://site/dev-9",
            ),
        ];
        for (key, want) in cases {
            assert_eq!(one(key).as_deref(), Some(want), "{key}");
        }
        let available = ctx
            .get("iot:Certificate.AvailableKeys")
            .expect("available keys");
        for key in [
            "iot:Certificate.Subject.CommonName",
            "iot:Certificate.Subject.AlternativeName.DNSName",
            "iot:Certificate.SerialNumber",
        ] {
            assert!(available.iter().any(|k| k == key), "{key} in {available:?}");
        }
        assert!(
            !available.iter().any(|k| k.contains("Organization")),
            "only variables that have values: {available:?}"
        );
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
