//! API keys: their format, hash and scopes. A key is `llmq_sk_` followed
//! by 32 random bytes in base64url (43 characters); it is shown once and
//! only its sha256 is stored, with its first characters (the prefix) to
//! recognise it by. A plain hash is enough: the key has 256 bits of
//! entropy, so there is nothing to brute-force a slow hash against.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every key starts with.
pub const KEY_PREFIX: &str = "llmq_sk_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Characters of a key kept visible in listings: `llmq_sk_` and 8 more.
const VISIBLE: usize = KEY_PREFIX.len() + 8;

/// A freshly made key: the secret (shown once), its hash and prefix.
pub struct NewKey {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

/// Makes a new random key.
pub fn generate_key() -> NewKey {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    NewKey {
        hash: hash_key(&secret),
        prefix: secret[..VISIBLE].to_string(),
        secret,
    }
}

/// The stored form of a presented key: sha256, lower-case hex.
pub fn hash_key(presented: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(presented.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0xf)] as char);
    }
    hex
}

/// Whether a presented token could be an issued key at all (cheap
/// refusal of anything else, before any look-up).
pub fn looks_like_key(presented: &str) -> bool {
    presented.len() == KEY_PREFIX.len() + 43
        && presented.starts_with(KEY_PREFIX)
        && presented[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a key may do. A route names the scope it needs (see the API's
/// route documents); a key without it is answered 403 naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "executions:write")]
    ExecutionsWrite,
    #[serde(rename = "executions:read")]
    ExecutionsRead,
    #[serde(rename = "prompts:write")]
    PromptsWrite,
    #[serde(rename = "prompts:promote")]
    PromptsPromote,
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::ExecutionsWrite,
        Scope::ExecutionsRead,
        Scope::PromptsWrite,
        Scope::PromptsPromote,
        Scope::WebhooksManage,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ExecutionsWrite => "executions:write",
            Scope::ExecutionsRead => "executions:read",
            Scope::PromptsWrite => "prompts:write",
            Scope::PromptsPromote => "prompts:promote",
            Scope::WebhooksManage => "webhooks:manage",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, UnknownScope> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| UnknownScope(raw.to_string()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}; scopes are executions:write, executions:read, prompts:write, prompts:promote, webhooks:manage, admin")]
pub struct UnknownScope(pub String);

/// A set of scopes, as a bit set: checking one is a mask test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Self::from_iter(Scope::ALL)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & (1 << scope as u8) != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= 1 << scope as u8;
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The names, in the canonical order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_string()).collect()
    }

    pub fn parse_all<S: AsRef<str>>(raw: &[S]) -> Result<Self, UnknownScope> {
        let mut scopes = Self::default();
        for r in raw {
            scopes.insert(Scope::parse(r.as_ref())?);
        }
        Ok(scopes)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes = Self::default();
        for s in iter {
            scopes.insert(s);
        }
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_prefix_and_32_random_bytes_and_hashes_stably() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.secret.starts_with("llmq_sk_"));
        assert_eq!(a.secret.len(), 8 + 43);
        assert!(looks_like_key(&a.secret));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_key(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(a.secret.starts_with(&a.prefix));
        assert!(!looks_like_key("dev-key"));
        assert!(!looks_like_key(&format!("{}!", &a.secret[..50])));
    }

    #[test]
    fn scopes_parse_and_test_membership() {
        let s = Scopes::parse_all(&["executions:read", "admin"]).unwrap();
        assert!(s.contains(Scope::Admin) && s.contains(Scope::ExecutionsRead));
        assert!(!s.contains(Scope::ExecutionsWrite));
        assert_eq!(s.names(), vec!["executions:read", "admin"]);
        assert!(Scopes::parse_all(&["executions:delete"]).is_err());
        assert_eq!(Scopes::all().iter().count(), 6);
    }
}
