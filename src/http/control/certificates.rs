//! Certificates and CA certificates: issued by the gateway's CA, registered
//! with or without a registered CA, their status (REVOKED is final), and
//! the CAs whose devices the gateway trusts.

use super::things::with_next;
use super::{Call, Control, by_creation, done, paginate, secs};
use crate::http::aws::{AwsError, ok};
use crate::registry::identity::issued_by;
use crate::registry::{CaCertificate, CertStatus, Certificate, ClientIdentity};
use crate::transport::pki::Ca;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

fn validation(message: impl Into<String>) -> AwsError {
    AwsError::new(
        StatusCode::BAD_REQUEST,
        "CertificateValidationException",
        message,
    )
}

/// The first certificate of a PEM text, as DER.
fn der_of(pem: &str) -> Result<Vec<u8>, AwsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|d| d.to_vec())
        .ok_or_else(|| validation("The certificate is not a valid PEM X.509 certificate"))
}

/// Whether AWS IoT accepts a key: RSA of at least 2048 bits, or EC on
/// P-256, P-384 or P-521.
fn key_ok(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    const CURVES: [&str; 3] = ["1.2.840.10045.3.1.7", "1.3.132.0.34", "1.3.132.0.35"];
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => rsa.key_size() >= 2048,
        Ok(PublicKey::EC(_)) => spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| CURVES.contains(&oid.to_id_string().as_str())),
        _ => false,
    }
}

fn check_key(cert: &X509Certificate<'_>) -> Result<(), AwsError> {
    if key_ok(cert.public_key()) {
        Ok(())
    } else {
        Err(validation("The key in the certificate is not valid"))
    }
}

/// The gateway's CA, which issues certificates.
fn issuing_ca(c: &Control) -> Result<Ca, AwsError> {
    Ca::load(&c.ca_dir).map_err(|e| {
        AwsError::invalid_request(format!(
            "this gateway has no CA key to issue certificates with ({e})"
        ))
    })
}

fn set_as_active(call: &Call<'_>) -> Result<CertStatus, AwsError> {
    Ok(if call.flag("setAsActive")? {
        CertStatus::Active
    } else {
        CertStatus::Inactive
    })
}

/// Registers what the gateway just issued, and answers with its ids.
fn issued(c: &Control, pem: &str, status: CertStatus) -> Result<(String, Value), AwsError> {
    let identity = ClientIdentity::from_der(&der_of(pem)?)
        .ok_or_else(|| validation("issued certificate does not parse"))?;
    c.registry.register_new(&identity, status)?;
    let id = identity.certificate_id;
    Ok((
        id.clone(),
        json!({
            "certificateArn": c.arn("cert", &id),
            "certificateId": id,
            "certificatePem": pem,
        }),
    ))
}

pub(super) async fn create_keys(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let status = set_as_active(call)?;
    let ca = issuing_ca(c)?;
    // RSA key generation takes a while; keep it off the reactor.
    let made = tokio::task::spawn_blocking(move || ca.issue_keys_and_certificate())
        .await
        .map_err(|e| AwsError::invalid_request(e.to_string()))?
        .map_err(|e| AwsError::invalid_request(e.to_string()))?;
    let (_, mut body) = issued(c, &made.cert, status)?;
    body["keyPair"] = json!({
        "PublicKey": made.public_key,
        "PrivateKey": made.private_key,
    });
    Ok(ok(body))
}

pub(super) fn from_csr(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let status = set_as_active(call)?;
    let input = call.json()?;
    let csr = input["certificateSigningRequest"]
        .as_str()
        .ok_or_else(|| AwsError::invalid_request("certificateSigningRequest is required"))?;
    if csr.len() > 4096 {
        return Err(AwsError::invalid_request(
            "certificateSigningRequest is longer than 4096 characters",
        ));
    }
    check_csr_key(csr)?;
    let pem = issuing_ca(c)?.sign_csr(csr).map_err(|e| {
        AwsError::invalid_request(format!("The certificate signing request is not valid: {e}"))
    })?;
    let (_, body) = issued(c, &pem, status)?;
    Ok(ok(body))
}

/// The CSR's key must be one AWS IoT accepts.
fn check_csr_key(csr: &str) -> Result<(), AwsError> {
    use x509_parser::certification_request::X509CertificationRequest;
    let invalid = || AwsError::invalid_request("The certificate signing request is not valid");
    let der = pem::parse(csr).map_err(|_| invalid())?;
    let (_, req) = X509CertificationRequest::from_der(der.contents()).map_err(|_| invalid())?;
    let good = key_ok(&req.certification_request_info.subject_pki);
    if good {
        Ok(())
    } else {
        Err(AwsError::invalid_request(
            "The key in the certificate signing request is not valid: RSA of at least 2048 bits or EC on P-256, P-384 or P-521",
        ))
    }
}

fn certificate(c: &Control, id: &str) -> Result<Certificate, AwsError> {
    c.registry
        .certificate(id)
        .ok_or_else(|| AwsError::not_found(format!("Certificate {id} does not exist")))
}

pub(super) fn describe(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let cert = certificate(c, call.label(0))?;
    let identity = ClientIdentity::from_pem(&cert.pem);
    let mut d = json!({
        "certificateArn": c.arn("cert", &cert.id),
        "certificateId": cert.id,
        "status": cert.status.name(),
        "certificatePem": cert.pem,
        "ownedBy": c.head.account,
        "creationDate": secs(cert.created_ms),
        "lastModifiedDate": secs(cert.modified_ms.max(cert.created_ms)),
        "customerVersion": cert.version,
        "transferData": {},
        "generationId": format!("{}-{}", &cert.id[..8.min(cert.id.len())], cert.version),
        "certificateMode": "DEFAULT",
    });
    if let Some(ca) = &cert.ca_id {
        d["caCertificateId"] = ca.clone().into();
    }
    if let Some(i) = identity {
        d["validity"] = json!({"notBefore": i.not_before, "notAfter": i.not_after});
    }
    Ok(ok(json!({ "certificateDescription": d })))
}

pub(super) fn update(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let id = call.label(0);
    let status = match call.query("newStatus").as_deref() {
        Some(s @ ("PENDING_TRANSFER" | "REGISTER_INACTIVE" | "PENDING_ACTIVATION")) => {
            return Err(AwsError::new(
                StatusCode::NOT_ACCEPTABLE,
                "CertificateStateException",
                format!("A certificate cannot be set to {s}"),
            ));
        }
        Some(s) => CertStatus::parse(s)
            .ok_or_else(|| AwsError::invalid_request(format!("newStatus `{s}` is not valid")))?,
        None => return Err(AwsError::invalid_request("newStatus is required")),
    };
    let before = certificate(c, id)?.status;
    c.registry.set_status(id, status)?;
    if before != status {
        tracing::info!(
            certificate_id = %id,
            from = before.name(),
            to = status.name(),
            "certificate status changed"
        );
    }
    done()
}

pub(super) fn delete(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.registry
        .delete_certificate(call.label(0), call.flag("forceDelete")?)?;
    done()
}

/// Certificates in creation order (newest first unless `isAscendingOrder`),
/// all of them or those one CA issued.
pub(super) fn list(c: &Control, call: &Call<'_>, ca: Option<&str>) -> Result<Response, AwsError> {
    let ascending = call.flag("isAscendingOrder")?;
    let mut certs: Vec<(String, Certificate)> = c
        .registry
        .certificates()
        .into_iter()
        .filter(|cert| ca.is_none_or(|ca| cert.ca_id.as_deref() == Some(ca)))
        .map(|cert| (by_creation(cert.created_ms, &cert.id, ascending), cert))
        .collect();
    certs.sort_by(|a, b| a.0.cmp(&b.0));
    let page = paginate(
        certs,
        |(k, _)| k,
        call.query("marker"),
        call.query("pageSize"),
        25,
    )?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(_, cert)| {
            json!({
                "certificateArn": c.arn("cert", &cert.id),
                "certificateId": cert.id,
                "status": cert.status.name(),
                "certificateMode": "DEFAULT",
                "creationDate": secs(cert.created_ms),
                // Beyond AWS's shape (clients ignore them): what `edgegate cert list` shows.
                "policies": cert.policies,
                "things": cert.things,
            })
        })
        .collect();
    Ok(ok(with_next(
        json!({ "certificates": items }),
        "nextMarker",
        page.next,
    )))
}

/// RegisterCertificate (its issuer must be a registered CA, which signed
/// it) and RegisterCertificateWithoutCA.
pub(super) fn register(c: &Control, call: &Call<'_>, with_ca: bool) -> Result<Response, AwsError> {
    let input = call.json()?;
    let pem = input["certificatePem"]
        .as_str()
        .ok_or_else(|| AwsError::invalid_request("certificatePem is required"))?;
    let status = match input["status"].as_str() {
        Some("PENDING_ACTIVATION") => {
            return Err(AwsError::new(
                StatusCode::NOT_ACCEPTABLE,
                "CertificateStateException",
                "Not allowed to register certificate with PENDING_ACTIVATION status",
            ));
        }
        Some(s) => CertStatus::parse(s)
            .ok_or_else(|| AwsError::invalid_request(format!("status `{s}` is not valid")))?,
        None => set_as_active(call)?,
    };
    let der = der_of(pem)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|_| validation("The certificate is not a valid X.509 certificate"))?;
    check_key(&cert)?;
    let identity =
        ClientIdentity::from_der(&der).ok_or_else(|| validation("The certificate is not valid"))?;
    if with_ca {
        let signed = match input["caCertificatePem"].as_str() {
            Some(ca_pem) => {
                let ca_der = der_of(ca_pem)?;
                let id = ClientIdentity::from_der(&ca_der)
                    .ok_or_else(|| validation("caCertificatePem is not a valid certificate"))?
                    .certificate_id;
                let ca = c
                    .registry
                    .ca_certificate(&id)
                    .map_err(|_| validation("The CA certificate is not registered"))?;
                issued_by(&identity, &ca.pem)
            }
            None => c.registry.issuer_of(&identity).is_some(),
        };
        if !signed {
            return Err(validation(
                "The certificate is not signed by a registered CA certificate",
            ));
        }
    }
    c.registry.register_new(&identity, status).map_err(|e| {
        AwsError::from(e).with("resourceArn", c.arn("cert", &identity.certificate_id))
    })?;
    Ok(ok(json!({
        "certificateArn": c.arn("cert", &identity.certificate_id),
        "certificateId": identity.certificate_id,
    })))
}

pub(super) fn register_ca(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let input = call.json()?;
    let pem = input["caCertificate"]
        .as_str()
        .ok_or_else(|| AwsError::invalid_request("caCertificate is required"))?;
    let der = der_of(pem)?;
    let (_, ca) = X509Certificate::from_der(&der)
        .map_err(|_| validation("The CA certificate is not a valid X.509 certificate"))?;
    if !ca.is_ca() {
        return Err(validation("The certificate is not a CA certificate"));
    }
    check_key(&ca)?;
    let verification = input["verificationCertificate"].as_str();
    match (
        input["certificateMode"].as_str().unwrap_or("DEFAULT"),
        verification,
    ) {
        ("DEFAULT", Some(v)) => {
            let vder = der_of(v)?;
            let (_, vcert) = X509Certificate::from_der(&vder)
                .map_err(|_| validation("The verification certificate is not valid"))?;
            let cn = vcert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok());
            if cn != Some(c.registry.registration_code().as_str()) {
                return Err(AwsError::new(
                    StatusCode::BAD_REQUEST,
                    "RegistrationCodeValidationException",
                    "The verification certificate's common name is not the registration code",
                ));
            }
            vcert.verify_signature(Some(ca.public_key())).map_err(|_| {
                validation("The verification certificate is not signed by the CA certificate")
            })?;
        }
        ("DEFAULT", None) => {
            return Err(AwsError::invalid_request(
                "verificationCertificate is required in DEFAULT mode",
            ));
        }
        ("SNI_ONLY", _) => {
            return Err(AwsError::invalid_request(
                "SNI_ONLY CA certificates are not supported by this gateway",
            ));
        }
        (other, _) => {
            return Err(AwsError::invalid_request(format!(
                "certificateMode `{other}` is not valid"
            )));
        }
    }
    let identity = ClientIdentity::from_der(&der)
        .ok_or_else(|| validation("The CA certificate is not valid"))?;
    let registered = c.registry.register_ca(
        &identity,
        call.flag("setAsActive")?,
        call.flag("allowAutoRegistration")?,
    )?;
    Ok(ok(json!({
        "certificateArn": c.arn("cacert", &registered.id),
        "certificateId": registered.id,
    })))
}

fn ca_json(c: &Control, ca: &CaCertificate) -> Value {
    json!({
        "certificateArn": c.arn("cacert", &ca.id),
        "certificateId": ca.id,
        "status": if ca.active { "ACTIVE" } else { "INACTIVE" },
        "creationDate": secs(ca.created_ms),
    })
}

pub(super) fn describe_ca(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let ca = c.registry.ca_certificate(call.label(0))?;
    let mut d = ca_json(c, &ca);
    d["certificatePem"] = ca.pem.clone().into();
    d["ownedBy"] = c.head.account.clone().into();
    d["autoRegistrationStatus"] = if ca.auto_registration {
        "ENABLE"
    } else {
        "DISABLE"
    }
    .into();
    d["lastModifiedDate"] = secs(ca.modified_ms.max(ca.created_ms)).into();
    d["customerVersion"] = ca.version.into();
    d["generationId"] = format!("{}-{}", &ca.id[..8.min(ca.id.len())], ca.version).into();
    d["certificateMode"] = "DEFAULT".into();
    if let Some(i) = ClientIdentity::from_pem(&ca.pem) {
        d["validity"] = json!({"notBefore": i.not_before, "notAfter": i.not_after});
    }
    Ok(ok(json!({ "certificateDescription": d })))
}

pub(super) fn update_ca(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let active = match call.query("newStatus").as_deref() {
        None => None,
        Some("ACTIVE") => Some(true),
        Some("INACTIVE") => Some(false),
        Some(s) => {
            return Err(AwsError::invalid_request(format!(
                "newStatus `{s}` is not ACTIVE or INACTIVE"
            )));
        }
    };
    let auto = match call.query("newAutoRegistrationStatus").as_deref() {
        None => None,
        Some("ENABLE") => Some(true),
        Some("DISABLE") => Some(false),
        Some(s) => {
            return Err(AwsError::invalid_request(format!(
                "newAutoRegistrationStatus `{s}` is not ENABLE or DISABLE"
            )));
        }
    };
    c.registry.update_ca(call.label(0), active, auto)?;
    done()
}

pub(super) fn delete_ca(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    c.registry.delete_ca(call.label(0))?;
    done()
}

pub(super) fn list_cas(c: &Control, call: &Call<'_>) -> Result<Response, AwsError> {
    let ascending = call.flag("isAscendingOrder")?;
    let mut cas: Vec<(String, CaCertificate)> = c
        .registry
        .ca_certificates()
        .into_iter()
        .map(|ca| (by_creation(ca.created_ms, &ca.id, ascending), ca))
        .collect();
    cas.sort_by(|a, b| a.0.cmp(&b.0));
    let page = paginate(
        cas,
        |(k, _)| k,
        call.query("marker"),
        call.query("pageSize"),
        25,
    )?;
    let items: Vec<Value> = page.items.iter().map(|(_, ca)| ca_json(c, ca)).collect();
    Ok(ok(with_next(
        json!({ "certificates": items }),
        "nextMarker",
        page.next,
    )))
}
