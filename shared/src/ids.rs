//! Names and keys that travel through the system as strings but must not
//! be mixed up: the tenant that owns a row, a prompt's registry name, a
//! label, a client's idempotency key. Each is parsed once at the edge
//! (`parse` says why a value is refused) and is valid from then on.
//! Execution ids are `crate::execution::ExecutionId`, the one id type.

use std::fmt;

use serde::Serialize;

use crate::prompt::validate_name;

/// Why a name or key was refused; the message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The organisation that owns an execution; everything a caller sees
    /// is its own tenant's. Set by authentication, never by a request body.
    TenantId
);
string_id!(
    /// A prompt's name in the registry (a-z, 0-9, `-`, `_`, `.`, up to 64).
    PromptName
);
string_id!(
    /// A label pointing at a prompt version, such as `production`.
    Label
);
string_id!(
    /// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
    IdempotencyKey
);

/// The organisation that owns the prompt files and the rows written
/// before organisations existed; the configured development keys are its.
pub const DEFAULT_TENANT: &str = "default";

impl TenantId {
    /// Tenants come from configuration or the key store, not from clients.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// An organisation id as an admin gives it: the registry's name rules
    /// (a-z, 0-9, `-`, `_`, `.`, up to 64).
    pub fn parse(id: &str) -> Result<Self, InvalidId> {
        validate_name(id).map_err(InvalidId)?;
        Ok(Self(id.to_string()))
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TENANT
    }

    /// The registry key of this organisation's prompt `name`: the name
    /// itself for `default`, `<org>/<name>` for any other. A client's
    /// prompt name cannot contain `/`, so no organisation can name
    /// another's prompt, and every prompt, label, version and execution
    /// row of an organisation is its own by construction.
    pub fn prompt_key(&self, name: &str) -> String {
        if self.is_default() {
            name.to_string()
        } else {
            format!("{}/{name}", self.0)
        }
    }

    /// What `prompt_key` is prefixed with (empty for `default`).
    pub fn prompt_namespace(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            format!("{}/", self.0)
        }
    }
}

/// The name a client knows a stored prompt by (its registry key without
/// the organisation).
pub fn public_prompt_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

impl PromptName {
    pub fn parse(name: &str) -> Result<Self, InvalidId> {
        validate_name(name).map_err(InvalidId)?;
        Ok(Self(name.to_string()))
    }
}

impl Label {
    /// The label a request that names neither a version nor a label gets.
    pub fn production() -> Self {
        Self(crate::prompt::DEFAULT_LABEL.to_string())
    }

    pub fn parse(label: &str) -> Result<Self, InvalidId> {
        validate_name(label).map_err(InvalidId)?;
        Ok(Self(label.to_string()))
    }
}

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<Self, InvalidId> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidId(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(Self(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_registry_rules() {
        assert_eq!(
            PromptName::parse("summarize").unwrap().as_str(),
            "summarize"
        );
        assert!(PromptName::parse("Summarize").is_err());
        assert!(PromptName::parse("").is_err());
        assert!(Label::parse("a\0b").is_err());
        assert_eq!(Label::production().as_str(), "production");
    }

    #[test]
    fn an_organisations_prompts_are_keyed_under_its_id() {
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(acme.prompt_key("summarize"), "acme/summarize");
        assert_eq!(
            TenantId::new(DEFAULT_TENANT).prompt_key("summarize"),
            "summarize"
        );
        assert_eq!(public_prompt_name("acme/summarize"), "summarize");
        assert_eq!(public_prompt_name("summarize"), "summarize");
        assert!(TenantId::parse("Acme/x").is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("with space").is_err());
        assert!(IdempotencyKey::parse("nul\0").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
