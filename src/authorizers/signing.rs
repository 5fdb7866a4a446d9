//! Token signatures (spec aws-iot-device-services.md §5.2): RSA with
//! SHA-256 over the token's bytes, base64, checked against each of the
//! authorizer's public keys so that keys can be rotated.

use crate::sql::eval::base64_decode;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// An RSA public key, as ring reads it (PKCS#1 `RSAPublicKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    /// Reads a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo, as
    /// `openssl rsa -pubout` writes it) or `RSA PUBLIC KEY`.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let block = pem::parse(text).map_err(|e| format!("not a PEM public key: {e}"))?;
        match block.tag() {
            "RSA PUBLIC KEY" => Ok(Self(block.contents().to_vec())),
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(block.contents())
                    .map_err(|e| format!("not a public key: {e}"))?;
                Ok(Self(spki.subject_public_key.data.to_vec()))
            }
            other => Err(format!("a `{other}` block is not a public key")),
        }
    }

    /// Whether `signature` (base64) signs `token` with this key.
    pub fn verifies(&self, token: &str, signature: &str) -> bool {
        let Some(sig) = base64_decode(signature.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(token.as_bytes(), &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    /// A fresh RSA key: its public key, and a signer of tokens.
    fn key() -> (PublicKey, impl Fn(&str) -> String) {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
        let pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let der = private.to_pkcs8_der().expect("der");
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()).expect("pair");
        let sign = move |token: &str| {
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                token.as_bytes(),
                &mut sig,
            )
            .expect("sign");
            crate::sql::eval::base64_encode(&sig)
        };
        (PublicKey::from_pem(&pem).expect("read"), sign)
    }

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let (public, sign) = key();
        let (other, _) = key();
        let sig = sign("allow-me");
        assert!(public.verifies("allow-me", &sig));
        assert!(!public.verifies("allow-you", &sig));
        assert!(!other.verifies("allow-me", &sig));
        assert!(!public.verifies("allow-me", "not base64!"));
        assert!(
            PublicKey::from_pem("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
