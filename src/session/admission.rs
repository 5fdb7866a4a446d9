//! Admission: whether a certificate may be served at all (as the
//! registration mode says, for MQTT and HTTPS alike), and whether a CONNECT
//! may proceed (`iot:Connect`, and the will's `iot:Publish`). Every refusal
//! is counted and logged; a certificate waiting for activation is announced
//! (JITR).

use super::authz::{Authz, ConnectFacts, Grant};
use super::conn::{Credentials, Shared};
use super::state::connect::Refused;
use crate::authorizers::Asked;
use crate::codec;
use crate::metrics::HandshakeFailure;
use crate::policy::eval::{Action, ResourceType};
use crate::registry::{CertStatus, ClientIdentity, Principal, Refusal};
use std::net::SocketAddr;

/// Admits a certificate as the registration mode says, for MQTT (with its
/// client id) and HTTPS (without); a refusal is counted, logged, and for a
/// certificate waiting for activation announced (JITR), whichever way it
/// came in.
pub fn admit(shared: &Shared, id: &ClientIdentity, client_id: &str) -> Option<Principal> {
    let auth = &shared.config.auth;
    let (admitted, _) = shared
        .registry
        .admit(id, client_id, auth.registration, &auth.provisioning);
    match admitted {
        Ok(p) => Some(p),
        Err(refusal) => {
            use crate::metrics::Refused;
            let kind = match &refusal {
                Refusal::Unknown => Refused::Unknown,
                Refusal::NotActive(CertStatus::Revoked) => Refused::Revoked,
                Refusal::NotActive(CertStatus::PendingActivation) => Refused::PendingActivation,
                Refusal::NotActive(_) => Refused::Inactive,
                Refusal::CaInactive => Refused::CaInactive,
                Refusal::Listed => Refused::Listed,
            };
            shared.metrics.principal_refused(kind);
            if refusal == Refusal::NotActive(CertStatus::PendingActivation) {
                announce_pending(shared, id);
            }
            crate::refusal!(
                &id.certificate_id,
                kind.label(),
                client_id,
                why = %refusal,
                "certificate refused"
            );
            None
        }
    }
}

/// Admits the principal behind a CONNECT and checks `iot:Connect` (and the
/// will's `iot:Publish`); on refusal, the CONNACK reason code.
pub fn connect(
    shared: &Shared,
    credentials: &Credentials,
    domain_name: Option<&str>,
    client_id: &str,
    peer: SocketAddr,
    persistent: bool,
    will: Option<&codec::Will>,
) -> Result<Authz, Refused> {
    let auth = &shared.config.auth;
    let metrics = &shared.metrics;
    let devices = || shared.policies.clone();
    let (identity, principal, store, vars) = match credentials {
        Credentials::Certificate(id) => {
            let principal = admit(shared, id, client_id).ok_or(Refused::NOT_AUTHORIZED)?;
            (Some(&**id), principal, devices(), &[][..])
        }
        Credentials::Anonymous => (
            None,
            Principal::anonymous(&auth.anonymous_policies),
            devices(),
            &[][..],
        ),
        Credentials::Granted(g) => (
            None,
            Principal::anonymous(&g.policies),
            g.store.clone(),
            &g.vars[..],
        ),
        Credentials::Unauthenticated => {
            metrics.principal_refused(crate::metrics::Refused::Unauthenticated);
            crate::refusal!(
                &peer.ip().to_string(),
                "unauthenticated",
                client_id,
                %peer,
                "no certificate and no other credentials"
            );
            return Err(Refused::NOT_AUTHORIZED);
        }
    };
    let facts = ConnectFacts {
        client_id: Some(client_id),
        peer: Some(peer.ip()),
        persistent,
        will_topic: will.map(|w| w.topic.as_str()),
        domain_name,
        vars,
    };
    let Some(mut authz) = Authz::new(identity, principal, facts, store, &shared.arn_head) else {
        return Err(Refused::NO_POLICY_CONTEXT);
    };
    if let Credentials::Granted(g) = credentials {
        authz = authz.granted_to(&g.principal);
    }
    let mut ok = authz.allows(
        metrics,
        client_id,
        Action::Connect,
        ResourceType::Client,
        client_id,
    );
    if let Some(w) = will {
        let topic = w.topic.as_str();
        ok = ok
            && authz.allows(
                metrics,
                client_id,
                Action::Publish,
                ResourceType::Topic,
                topic,
            );
        if w.retain {
            ok = ok
                && authz.allows(
                    metrics,
                    client_id,
                    Action::RetainPublish,
                    ResourceType::Topic,
                    topic,
                );
        }
    }
    if ok {
        Ok(authz)
    } else {
        Err(Refused::NOT_AUTHORIZED)
    }
}

/// Asks the custom authorizer of `asked` about a client, by `deadline`: its
/// grant, or why not, counted and logged, for the caller to answer as its
/// protocol does.
pub async fn custom(
    shared: &Shared,
    asked: Asked,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<Grant, String> {
    let asking = shared
        .authorizers
        .authorize(&asked.presented, &asked.connection);
    let why = match tokio::time::timeout_at(deadline, asking).await {
        Ok(Ok(verdict)) => return Ok(Grant::custom(&verdict, asked)),
        Ok(Err(refusal)) => refusal.to_string(),
        Err(_) => "the custom authorizer did not decide in time".to_owned(),
    };
    shared.metrics.handshake_failed(HandshakeFailure::Refused);
    crate::refusal!(
        &peer.ip().to_string(),
        "custom_auth",
        %peer,
        why,
        "custom authorizer refused the client"
    );
    Err(why)
}

/// JITR: every connect of a certificate waiting for activation announces it
/// on `$aws/events/certificates/registered/<caCertificateId>` (spec §2.6).
fn announce_pending(shared: &Shared, identity: &ClientIdentity) {
    let Some(cert) = shared.registry.certificate(&identity.certificate_id) else {
        return;
    };
    let Some(ca_id) = cert.ca_id else {
        return;
    };
    let payload = serde_json::json!({
        "certificateId": cert.id,
        "caCertificateId": ca_id,
        "timestamp": cert.created_ms / 1000,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": shared.arn_head.account,
        "certificateRegistrationTimestamp": null,
    });
    shared.sessions.publish_event(
        &format!("$aws/events/certificates/registered/{ca_id}"),
        payload.to_string(),
    );
}
