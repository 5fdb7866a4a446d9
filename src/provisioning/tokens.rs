//! Certificate ownership tokens: what CreateKeysAndCertificate and
//! CreateCertificateFromCsr hand out and RegisterThing redeems, once, within
//! an hour (spec aws-iot-device-services.md §3.4). Pure: time is passed in.
//!
//! They live in memory: after a restart a device starts its flow again,
//! as it does when a token expires. As on AWS, the certificate of a token
//! that expires unredeemed is deleted, so that claim devices asking again
//! and again cannot fill the registry.

use std::collections::HashMap;

/// How long a token may be redeemed, in seconds.
pub const LIFETIME_SECS: u64 = 3600;

/// Tokens held at once; past it, a new one is refused until some expire.
pub const MAX_TOKENS: usize = 10_000;

/// Why a token cannot be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// None was given.
    Empty,
    /// Unknown, already used, or expired.
    Unknown,
}

/// The tokens issued and not yet redeemed.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Token to (certificate id, expiry in seconds since the epoch).
    issued: HashMap<String, (String, u64)>,
}

impl Tokens {
    /// Issues `token` for `certificate_id` at `now`; false if the table is
    /// full of live tokens.
    pub fn issue(&mut self, token: String, certificate_id: &str, now: u64) -> bool {
        if self.issued.len() >= MAX_TOKENS {
            return false;
        }
        self.issued
            .insert(token, (certificate_id.to_owned(), now + LIFETIME_SECS));
        true
    }

    /// The certificate a live token stands for (the token stays until
    /// [`Tokens::redeem`]).
    pub fn certificate(&self, token: &str, now: u64) -> Result<&str, Invalid> {
        if token.is_empty() {
            return Err(Invalid::Empty);
        }
        match self.issued.get(token) {
            Some((id, expiry)) if *expiry > now => Ok(id),
            _ => Err(Invalid::Unknown),
        }
    }

    /// Uses a token up.
    pub fn redeem(&mut self, token: &str) {
        self.issued.remove(token);
    }

    /// Forgets the tokens past their hour at `now`; the certificates they
    /// stood for, which were never registered to a thing.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let mut expired = Vec::new();
        self.issued.retain(|_, (id, expiry)| {
            let live = *expiry > now;
            if !live {
                expired.push(std::mem::take(id));
            }
            live
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_once_and_for_an_hour() {
        let mut t = Tokens::default();
        assert!(t.issue("tok".into(), "cert-1", 1000));
        assert_eq!(t.certificate("tok", 1000), Ok("cert-1"));
        assert_eq!(t.certificate("tok", 1000 + LIFETIME_SECS - 1), Ok("cert-1"));
        assert_eq!(
            t.certificate("tok", 1000 + LIFETIME_SECS),
            Err(Invalid::Unknown)
        );
        assert_eq!(t.certificate("", 1000), Err(Invalid::Empty));
        assert_eq!(t.certificate("other", 1000), Err(Invalid::Unknown));
        t.redeem("tok");
        assert_eq!(t.certificate("tok", 1001), Err(Invalid::Unknown));
    }

    #[test]
    fn the_table_is_bounded_and_expired_tokens_give_their_certificates_back() {
        let mut t = Tokens::default();
        for i in 0..MAX_TOKENS {
            assert!(t.issue(format!("t{i}"), &format!("c{i}"), i as u64));
        }
        assert!(!t.issue("one more".into(), "c", 1), "all live: refused");
        let mut expired = t.expire(LIFETIME_SECS + 1);
        expired.sort();
        assert_eq!(expired, ["c0", "c1"]);
        assert!(
            t.issue("later".into(), "c", LIFETIME_SECS + 1),
            "room again"
        );
        assert_eq!(t.certificate("later", LIFETIME_SECS + 1), Ok("c"));
        assert_eq!(t.certificate("t2", LIFETIME_SECS + 1), Ok("c2"));
    }
}
