//! Secrets at rest: sealed with ChaCha20-Poly1305 under the configured
//! `webhooks.encryption_key`, stored as nonce (12 bytes) then ciphertext.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::signing::Secret;
use super::WebhookError;

const NONCE: usize = 12;

/// Seals and opens secrets. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct Sealer(ChaCha20Poly1305);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// From the configured key (base64 of 32 bytes); an empty one means
    /// the fixed development key, which the caller should warn about.
    pub fn from_config(key: &str) -> Result<Self, WebhookError> {
        let bytes = if key.is_empty() {
            Sha256::digest(b"llmq development webhook key: not for production").to_vec()
        } else {
            STANDARD
                .decode(key.trim())
                .map_err(|_| WebhookError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(WebhookError::BadKey);
        }
        Ok(Self(ChaCha20Poly1305::new(Key::from_slice(&bytes))))
    }

    pub fn seal(&self, secret: &Secret) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        // Encrypting into a Vec only fails for absurd lengths.
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), secret.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Secret, WebhookError> {
        if sealed.len() <= NONCE {
            return Err(WebhookError::Unsealable);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE);
        self.0
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map(Secret::from_bytes)
            .map_err(|_| WebhookError::Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let secret = Secret::generate();
        let a = Sealer::from_config("").unwrap();
        let sealed = a.seal(&secret);
        assert!(!sealed
            .windows(secret.as_bytes().len())
            .any(|w| w == secret.as_bytes()));
        assert_eq!(a.open(&sealed).unwrap(), secret);
        let b = Sealer::from_config(&STANDARD.encode([7u8; 32])).unwrap();
        assert!(b.open(&sealed).is_err());
        assert!(Sealer::from_config("c2hvcnQ=").is_err());
    }
}
