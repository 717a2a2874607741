//! Masking of personal data and secrets in the prompts and outputs a step
//! trace records: the worker masks each step's input and output before it
//! stores them. Logs do not go through it, so they must not carry prompts
//! or outputs in the first place. Conservative: it masks e-mail
//! addresses, long digit runs (card, phone and account numbers) and
//! bearer-style secrets, and leaves the rest readable.

use serde_json::Value;

/// Masks every string inside a JSON value.
pub fn mask_json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(mask_text(s)),
        Value::Array(a) => Value::Array(a.iter().map(mask_json).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), mask_json(v))).collect())
        }
        other => other.clone(),
    }
}

/// Masks one text, word by word.
pub fn mask_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            out.push_str(&mask_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&mask_word(&word));
    out
}

fn mask_word(word: &str) -> String {
    if word.is_empty() {
        return String::new();
    }
    let trimmed = word.trim_matches(|c: char| !c.is_alphanumeric());
    if is_email(trimmed) {
        return word.replace(trimmed, "[email]");
    }
    if looks_like_secret(trimmed) {
        return word.replace(trimmed, "[secret]");
    }
    let digits = trimmed.chars().filter(char::is_ascii_digit).count();
    let only_number_chars = trimmed
        .chars()
        .all(|c| c.is_ascii_digit() || "+-() .".contains(c));
    if digits >= 9 && only_number_chars {
        return word.replace(trimmed, "[number]");
    }
    word.to_string()
}

fn is_email(w: &str) -> bool {
    match w.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

fn looks_like_secret(w: &str) -> bool {
    const PREFIXES: [&str; 5] = ["sk-", "sk_", "whsec_", "ghp_", "xoxb-"];
    PREFIXES
        .iter()
        .any(|p| w.starts_with(p) && w.len() >= p.len() + 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_emails_numbers_and_keys_but_keeps_prose() {
        let masked = mask_text("Write to jane.doe@example.com, call +44 2079460000 or 4111111111111111; key sk-abcdefghijklmnopqrstuv.");
        assert!(!masked.contains("jane.doe@example.com"), "{masked}");
        assert!(!masked.contains("4111111111111111"), "{masked}");
        assert!(!masked.contains("sk-abcdefghijklmnopqrstuv"), "{masked}");
        assert!(masked.starts_with("Write to [email],"), "{masked}");
        assert_eq!(
            mask_text("Order 42 shipped in 2024."),
            "Order 42 shipped in 2024."
        );
    }

    #[test]
    fn masks_strings_inside_json() {
        let v = serde_json::json!({"a": ["x@y.io"], "n": 3});
        assert_eq!(mask_json(&v), serde_json::json!({"a": ["[email]"], "n": 3}));
    }
}
