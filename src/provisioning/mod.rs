//! Fleet provisioning by claim (spec aws-iot-device-services.md §3): a
//! device connected with a claim certificate asks, over MQTT, for its own
//! certificate (CreateKeysAndCertificate or CreateCertificateFromCsr) and
//! then for its thing (RegisterThing with a template of
//! `[[provisioning.templates]]` or of the control plane). `template` is the
//! template language (pure), `catalog` the templates with their versions,
//! `tokens` the certificate ownership tokens (pure), `hook` the
//! pre-provisioning hook, `service` the internal client of the router that
//! answers, to the requester alone.

pub mod catalog;
pub mod hook;
pub mod service;
pub mod template;
pub mod tokens;

/// The request topics (JSON; the CBOR forms are not served).
pub const REQUEST_FILTERS: [&str; 3] = [
    "$aws/certificates/create/json",
    "$aws/certificates/create-from-csr/json",
    "$aws/provisioning-templates/+/provision/json",
];

/// One request, as its topic names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// CreateKeysAndCertificate.
    CreateKeys,
    /// CreateCertificateFromCsr.
    FromCsr,
    /// RegisterThing with the template of this name.
    Register(&'a str),
}

impl<'a> Request<'a> {
    /// The request a topic names, if it is one.
    pub fn of(topic: &'a str) -> Option<Self> {
        match topic {
            "$aws/certificates/create/json" => Some(Self::CreateKeys),
            "$aws/certificates/create-from-csr/json" => Some(Self::FromCsr),
            _ => topic
                .strip_prefix("$aws/provisioning-templates/")?
                .strip_suffix("/provision/json")
                .filter(|name| !name.is_empty() && !name.contains('/'))
                .map(Self::Register),
        }
    }
}

/// Whether `topic` is one the provisioning service answers on: clients may
/// subscribe to these but not publish to them.
pub fn is_response_topic(topic: &str) -> bool {
    // Every client publish asks this: an ordinary topic is answered at once.
    if !topic.starts_with("$aws/") {
        return false;
    }
    let Some(request) = topic
        .strip_suffix("/accepted")
        .or_else(|| topic.strip_suffix("/rejected"))
    else {
        return false;
    };
    let request = request
        .strip_suffix("/json")
        .or_else(|| request.strip_suffix("/cbor"))
        .unwrap_or(request);
    request == "$aws/certificates/create"
        || request == "$aws/certificates/create-from-csr"
        || request.starts_with("$aws/provisioning-templates/") && request.ends_with("/provision")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_requests_and_answers() {
        assert_eq!(
            Request::of("$aws/certificates/create/json"),
            Some(Request::CreateKeys)
        );
        assert_eq!(
            Request::of("$aws/certificates/create-from-csr/json"),
            Some(Request::FromCsr)
        );
        assert_eq!(
            Request::of("$aws/provisioning-templates/Fleet/provision/json"),
            Some(Request::Register("Fleet"))
        );
        assert_eq!(
            Request::of("$aws/provisioning-templates//provision/json"),
            None
        );
        assert_eq!(Request::of("$aws/certificates/create/cbor"), None);
        for answer in [
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create-from-csr/json/rejected",
            "$aws/provisioning-templates/Fleet/provision/json/accepted",
            "$aws/certificates/create/cbor/rejected",
        ] {
            assert!(is_response_topic(answer), "{answer}");
        }
        for other in [
            "$aws/certificates/create/json",
            "things/lamp/accepted",
            "$aws/things/lamp/shadow/get/accepted",
        ] {
            assert!(!is_response_topic(other), "{other}");
        }
    }
}
