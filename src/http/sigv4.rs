//! AWS Signature Version 4, both ways: the admin listener verifies requests
//! signed by the AWS SDKs, the CLI, or `edgegate` itself, and the
//! `edgegate` CLI signs its own. Canonicalization follows
//! spec/aws-iot-auth.md §6.2 (non-S3 services: the path is encoded twice).

use super::aws::{percent_decode, query_param};
use crate::registry::identity::hex;
use ring::{digest, hmac};
use std::fmt::Write;

/// Why a request's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Authorization` header, or not AWS4-HMAC-SHA256.
    #[error("missing or unsupported Authorization header")]
    Missing,
    /// The header does not parse.
    #[error("malformed Authorization header")]
    Malformed,
    /// The access key is not the configured one.
    #[error("unknown access key")]
    UnknownKey,
    /// The signature does not match.
    #[error("signature does not match")]
    Mismatch,
    /// The request is too old or too far in the future.
    #[error("request time is outside the allowed window")]
    Skewed,
    /// A presigned request's `X-Amz-Expires` has passed.
    #[error("the signed URL has expired")]
    Expired,
    /// The credential scope names another region (AWS's words).
    #[error("Credential should be scoped to a valid region.")]
    Region,
    /// The credential scope names another service (AWS's words).
    #[error("Credential should be scoped to correct service: '{0}'.")]
    Service(&'static str),
    /// A header the gateway may act on was not signed, so it could have
    /// been changed after signing.
    #[error("header {0} must be signed")]
    Unsigned(String),
}

/// Where a request must be signed for: the gateway's region and the
/// service of the API it calls (`iot`, `iotdata`).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The configured region.
    pub region: &'a str,
    /// The signing name of the API.
    pub service: &'static str,
}

/// Headers an SDK leaves unsigned that nothing here reads (botocore's
/// list of headers it never signs).
const UNSIGNED_OK: &[&str] = &["x-amzn-trace-id"];

/// The parts of a request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path as sent (already percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The access key id the request says it is signed with (unverified).
    pub fn access_key(&self) -> Option<&str> {
        let auth = self.header("authorization")?;
        auth.split("Credential=").nth(1)?.split('/').next()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

pub use crate::sql::template::uri_encode;

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_request(r: &Request<'_>, signed: &[&str]) -> String {
    let path = if r.path.is_empty() { "/" } else { r.path };
    let mut headers = String::new();
    for name in signed {
        let value = r.header(name).unwrap_or_default();
        let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(headers, "{name}:{collapsed}");
    }
    // Always the body's own hash: a client-supplied one is only accepted
    // (in `verify`) when it is signed and equal to this.
    let payload = sha256_hex(r.body);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        uri_encode(path, true),
        canonical_query(r.query),
        headers,
        signed.join(";"),
        payload
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &key);
        key = hmac::sign(&k, part.as_bytes()).as_ref().to_vec();
    }
    hmac::Key::new(hmac::HMAC_SHA256, &key)
}

/// The key and the string to sign for a request.
fn to_sign(
    r: &Request<'_>,
    signed: &[&str],
    amz_date: &str,
    scope: &str,
    secret: &str,
) -> (hmac::Key, String) {
    let mut parts = scope.split('/');
    let date = parts.next().unwrap_or_default();
    let region = parts.next().unwrap_or_default();
    let service = parts.next().unwrap_or_default();
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request(r, signed).as_bytes())
    );
    (signing_key(secret, date, region, service), string_to_sign)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() % 2 == 0)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// What a signer signs a request for: the credential scope, and the names
/// of every header given, lowercased and sorted.
fn signing_scope(
    r: &Request<'_>,
    (region, service): (&str, &str),
    amz_date: &str,
) -> (String, Vec<String>) {
    let scope = format!(
        "{}/{region}/{service}/aws4_request",
        amz_date.get(..8).unwrap_or_default()
    );
    let mut names: Vec<String> = r
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    (scope, names)
}

/// The `Authorization` header value for a request (which must carry `host`
/// and `x-amz-date` headers), signing every header given.
pub fn sign(
    r: &Request<'_>,
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> String {
    let amz_date = r.header("x-amz-date").unwrap_or_default();
    let (scope, names) = signing_scope(r, (region, service), amz_date);
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let (key, string_to_sign) = to_sign(r, &signed, amz_date, &scope, secret);
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={}, Signature={}",
        signed.join(";"),
        hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
    )
}

/// Checks a request's signature against the one configured key pair, for
/// `expected`'s region and service. `now` (seconds since the epoch) bounds
/// the request time to ±15 minutes. Every `x-amz-*` and `x-amzn-*` header
/// present must be signed.
pub fn verify(
    r: &Request<'_>,
    access_key: &str,
    secret: &str,
    now: i64,
    expected: Scope<'_>,
) -> Result<(), SigError> {
    let auth = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("AWS4-HMAC-SHA256 "))
        .ok_or(SigError::Missing)?;
    let mut credential = None;
    let mut signed = None;
    let mut sig = None;
    for part in auth.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => sig = Some(v),
            _ => {}
        }
    }
    let (credential, signed, sig) = match (credential, signed, sig) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => return Err(SigError::Malformed),
    };
    let (key, scope) = credential.split_once('/').ok_or(SigError::Malformed)?;
    if key != access_key {
        return Err(SigError::UnknownKey);
    }
    let amz_date = r.header("x-amz-date").ok_or(SigError::Malformed)?;
    check_scope(scope, amz_date, expected)?;
    let when = amz_seconds(amz_date).ok_or(SigError::Malformed)?;
    if (when - now).abs() > SKEW {
        return Err(SigError::Skewed);
    }
    let signed: Vec<&str> = signed.split(';').collect();
    if !signed.contains(&"host") {
        return Err(SigError::Malformed);
    }
    for (name, _) in r.headers {
        let lower = name.to_ascii_lowercase();
        if (lower.starts_with("x-amz-") || lower.starts_with("x-amzn-"))
            && !signed.contains(&lower.as_str())
            && !UNSIGNED_OK.contains(&lower.as_str())
        {
            return Err(SigError::Unsigned(lower));
        }
    }
    if r.header("x-amz-content-sha256")
        .is_some_and(|claimed| claimed != sha256_hex(r.body))
    {
        return Err(SigError::Mismatch);
    }
    let (key, string_to_sign) = to_sign(r, &signed, amz_date, scope, secret);
    let sig = unhex(sig).ok_or(SigError::Malformed)?;
    // ring compares in constant time.
    hmac::verify(&key, string_to_sign.as_bytes(), &sig).map_err(|_| SigError::Mismatch)
}

/// How far a request's time may be from the gateway's, in seconds.
const SKEW: i64 = 15 * 60;

/// Longest `X-Amz-Expires` SigV4 allows: seven days.
const MAX_EXPIRES: i64 = 7 * 24 * 3600;

/// Checks a credential scope (`date/region/service/aws4_request`).
fn check_scope(scope: &str, amz_date: &str, expected: Scope<'_>) -> Result<(), SigError> {
    let mut parts = scope.split('/');
    if parts.next() != amz_date.get(..8) {
        return Err(SigError::Malformed);
    }
    if parts.next() != Some(expected.region) {
        return Err(SigError::Region);
    }
    if parts.next() != Some(expected.service) {
        return Err(SigError::Service(expected.service));
    }
    if parts.next() != Some("aws4_request") || parts.next().is_some() {
        return Err(SigError::Malformed);
    }
    Ok(())
}

/// The access key id a presigned request says it is signed with
/// (unverified).
pub fn presigned_key(query: &str) -> Option<String> {
    query_param(query, "X-Amz-Credential")?
        .split('/')
        .next()
        .map(str::to_owned)
}

/// Whether a request carries its signature in the query.
pub fn is_presigned(query: &str) -> bool {
    query_param(query, "X-Amz-Signature").is_some()
}

/// Checks a presigned request, whose signature is in its query, as the
/// AWS IoT Device SDK signs a WebSocket URL (spec
/// aws-iot-device-services.md §6.2): the headers `X-Amz-SignedHeaders`
/// names, the query without `X-Amz-Signature`, and without
/// `X-Amz-Security-Token`, which the SDKs add after signing (a signer that
/// signed it is accepted too). `X-Amz-Expires`, when given, bounds how long
/// the URL serves; without it, the request time must be within 15 minutes.
pub fn verify_presigned(
    r: &Request<'_>,
    access_key: &str,
    secret: &str,
    now: i64,
    expected: Scope<'_>,
) -> Result<(), SigError> {
    let get = |name| query_param(r.query, name);
    if get("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
        return Err(SigError::Missing);
    }
    let credential = get("X-Amz-Credential").ok_or(SigError::Malformed)?;
    let (key, scope) = credential.split_once('/').ok_or(SigError::Malformed)?;
    if key != access_key {
        return Err(SigError::UnknownKey);
    }
    let amz_date = get("X-Amz-Date").ok_or(SigError::Malformed)?;
    check_scope(scope, &amz_date, expected)?;
    let when = amz_seconds(&amz_date).ok_or(SigError::Malformed)?;
    if when - now > SKEW {
        return Err(SigError::Skewed);
    }
    let lasts = match get("X-Amz-Expires") {
        Some(e) => e
            .parse::<i64>()
            .ok()
            .filter(|e| (1..=MAX_EXPIRES).contains(e))
            .ok_or(SigError::Malformed)?,
        None => SKEW,
    };
    if now - when > lasts {
        return Err(SigError::Expired);
    }
    let signed = get("X-Amz-SignedHeaders").ok_or(SigError::Malformed)?;
    let signed: Vec<&str> = signed.split(';').collect();
    if !signed.contains(&"host") {
        return Err(SigError::Malformed);
    }
    let sig = get("X-Amz-Signature")
        .and_then(|s| unhex(&s))
        .ok_or(SigError::Malformed)?;
    let token = get("X-Amz-Security-Token").is_some();
    for with_token in [false, true].into_iter().take(1 + usize::from(token)) {
        let query: Vec<&str> = r
            .query
            .split('&')
            .filter(|p| {
                let k = percent_decode(p.split_once('=').map_or(*p, |(k, _)| k));
                k != "X-Amz-Signature" && (with_token || k != "X-Amz-Security-Token")
            })
            .collect();
        let query = query.join("&");
        let unsigned = Request {
            query: &query,
            ..*r
        };
        let (key, string_to_sign) = to_sign(&unsigned, &signed, &amz_date, scope, secret);
        // ring compares in constant time.
        if hmac::verify(&key, string_to_sign.as_bytes(), &sig).is_ok() {
            return Ok(());
        }
    }
    Err(SigError::Mismatch)
}

/// Signs a request in its query, as the SDKs presign a WebSocket URL
/// (every header given is signed); the query to send.
pub fn presign(
    r: &Request<'_>,
    access_key: &str,
    secret: &str,
    (region, service): (&str, &str),
    amz_date: &str,
) -> String {
    let (scope, names) = signing_scope(r, (region, service), amz_date);
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={amz_date}&X-Amz-SignedHeaders={}",
        uri_encode(&format!("{access_key}/{scope}"), false),
        uri_encode(&signed.join(";"), false),
    );
    if !r.query.is_empty() {
        query = format!("{}&{query}", r.query);
    }
    let unsigned = Request {
        query: &query,
        ..*r
    };
    let (key, string_to_sign) = to_sign(&unsigned, &signed, amz_date, &scope, secret);
    let sig = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    format!("{query}&X-Amz-Signature={sig}")
}

/// `20150830T123600Z` as seconds since the epoch.
fn amz_seconds(s: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// The current time in the `x-amz-date` format.
pub fn amz_date_now() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// A URL botocore's `SigV4QueryAuth` presigned for `iotdevicegateway`.
    const BOTOCORE_URL: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261207%2Fus-east-1%2Fiotdevicegateway%2Faws4_request&X-Amz-Date=20261207T164838Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=3ecac0a008ac4c40b111a727bc9b2e1d77bc5270bfacbf344942c795b6551ec0";

    fn websocket(query: &str) -> Request<'_> {
        Request {
            method: "GET",
            path: "/mqtt",
            query,
            headers: &[("Host", "example.amazonaws.com")],
            body: b"",
        }
    }

    const GATEWAY: Scope<'static> = Scope {
        region: "us-east-1",
        service: "iotdevicegateway",
    };

    #[test]
    fn a_url_botocore_presigned_is_verified_and_reproduced() {
        let signed_at = amz_seconds("20261207T164838Z").expect("date");
        let verify = |query, now| verify_presigned(&websocket(query), KEY, SECRET, now, GATEWAY);
        assert_eq!(verify(BOTOCORE_URL, signed_at + 60), Ok(()));
        // The SDKs add the session token after signing.
        let with_token = format!("{BOTOCORE_URL}&X-Amz-Security-Token=abc%2Fdef");
        assert_eq!(verify(&with_token, signed_at + 60), Ok(()));
        assert_eq!(
            verify(BOTOCORE_URL, signed_at + 86_401),
            Err(SigError::Expired)
        );
        assert_eq!(
            verify(BOTOCORE_URL, signed_at - 3600),
            Err(SigError::Skewed)
        );
        let other_region = Scope {
            region: "eu-west-1",
            ..GATEWAY
        };
        assert_eq!(
            verify_presigned(
                &websocket(BOTOCORE_URL),
                KEY,
                SECRET,
                signed_at,
                other_region
            ),
            Err(SigError::Region)
        );
        assert_eq!(
            verify(
                &BOTOCORE_URL.replace("host", "host%3Bconnection"),
                signed_at
            ),
            Err(SigError::Mismatch)
        );
        let ours = presign(
            &Request {
                query: "X-Amz-Expires=86400",
                headers: &[("host", "example.amazonaws.com")],
                ..websocket("")
            },
            KEY,
            SECRET,
            ("us-east-1", "iotdevicegateway"),
            "20261207T164838Z",
        );
        assert_eq!(
            ours.rsplit_once("X-Amz-Signature=").map(|(_, s)| s),
            BOTOCORE_URL.rsplit_once("X-Amz-Signature=").map(|(_, s)| s)
        );
    }

    /// The "get-vanilla" case of AWS's SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let r = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let auth = sign(&r, KEY, SECRET, "us-east-1", "service");
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn what_is_signed_verifies_and_tampering_does_not() {
        let date = "20261126T115254Z";
        let now = amz_seconds(date).expect("date");
        let base = [
            ("Host", "127.0.0.1:9080"),
            ("X-Amz-Date", date),
            ("x-amzn-principal", "arn:aws:iot:us-east-1:0:cert/ab"),
        ];
        let body = br#"{"a":1}"#;
        let r = Request {
            method: "PUT",
            path: "/things/t%3A1/principals",
            query: "thingPrincipalType=EXCLUSIVE_THING&b=a%20b",
            headers: &base,
            body,
        };
        let auth = sign(&r, KEY, SECRET, "us-east-1", "iot");
        let mut headers = base.to_vec();
        headers.push(("Authorization", &auth));
        let signed = Request {
            headers: &headers,
            ..r
        };
        let iot = Scope {
            region: "us-east-1",
            service: "iot",
        };
        let verify = |r: &Request<'_>, key, secret, now| verify(r, key, secret, now, iot);
        assert_eq!(verify(&signed, KEY, SECRET, now), Ok(()));
        assert_eq!(verify(&signed, KEY, "other", now), Err(SigError::Mismatch));
        assert_eq!(
            verify(&signed, "AKIDOTHER", SECRET, now),
            Err(SigError::UnknownKey)
        );
        assert_eq!(
            verify(&signed, KEY, SECRET, now + 3600),
            Err(SigError::Skewed)
        );
        // Signed for another region or another service: refused, whatever
        // the signature.
        for (region, service, err) in [
            ("eu-west-1", "iot", SigError::Region),
            ("us-east-1", "iotdata", SigError::Service("iot")),
            ("us-east-1", "s3", SigError::Service("iot")),
        ] {
            let auth = sign(&r, KEY, SECRET, region, service);
            let mut other = base.to_vec();
            other.push(("Authorization", &auth));
            let req = Request {
                headers: &other,
                ..r
            };
            assert_eq!(
                super::verify(&req, KEY, SECRET, now, iot),
                Err(err.clone()),
                "{region}/{service}"
            );
        }
        // A header the handler reads, added after signing.
        let mut swapped = headers.clone();
        swapped.push(("X-Amzn-Principal-Extra", "arn:aws:iot:us-east-1:0:cert/cd"));
        let added = Request {
            headers: &swapped,
            ..signed
        };
        assert_eq!(
            verify(&added, KEY, SECRET, now),
            Err(SigError::Unsigned("x-amzn-principal-extra".into()))
        );
        let mut traced = headers.clone();
        traced.push(("X-Amzn-Trace-Id", "Root=1-5759e988"));
        let trace = Request {
            headers: &traced,
            ..signed
        };
        assert_eq!(
            verify(&trace, KEY, SECRET, now),
            Ok(()),
            "botocore never signs x-amzn-trace-id, and nothing reads it"
        );
        let tampered = Request {
            body: br#"{"a":2}"#,
            ..signed
        };
        assert_eq!(verify(&tampered, KEY, SECRET, now), Err(SigError::Mismatch));
        // A payload hash header cannot vouch for a different body.
        let original = sha256_hex(body);
        let mut lying = headers.clone();
        lying.push(("x-amz-content-sha256", &original));
        let replayed = Request {
            body: br#"{"a":2}"#,
            headers: &lying,
            ..signed
        };
        assert_eq!(
            verify(&replayed, KEY, SECRET, now),
            Err(SigError::Unsigned("x-amz-content-sha256".into()))
        );
        let unsigned = Request {
            headers: &headers[..3],
            ..signed
        };
        assert_eq!(verify(&unsigned, KEY, SECRET, now), Err(SigError::Missing));
    }
}
