//! Token counting for templates (`truncate_tokens`): a real BPE tokenizer
//! of the model's family, from `tiktoken-rs`, whose vocabularies are
//! compiled into the binary (no download at run time). A vocabulary is
//! loaded the first time a template uses it, once per process.

use tiktoken_rs::CoreBPE;

/// The tokenizers a prompt may name (`tokenizer = "..."`).
pub const TOKENIZERS: &[&str] = &["o200k_base", "cl100k_base"];

/// The tokenizer when neither the prompt nor the model's name tells.
pub const DEFAULT_TOKENIZER: &str = "o200k_base";

/// The tokenizer's name for `model`: `explicit` if given, else the one of
/// the model's family (gpt-4o, gpt-4.1, o-series: o200k; gpt-4, gpt-3.5:
/// cl100k), else [`DEFAULT_TOKENIZER`].
pub fn tokenizer_for(model: &str, explicit: Option<&str>) -> &'static str {
    use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
    if let Some(name) = explicit.and_then(|e| TOKENIZERS.iter().find(|t| **t == e)) {
        return name;
    }
    match get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => "cl100k_base",
        _ => DEFAULT_TOKENIZER,
    }
}

fn bpe(name: &str) -> &'static CoreBPE {
    match name {
        "cl100k_base" => tiktoken_rs::cl100k_base_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
    }
}

/// How many tokens `text` is with the tokenizer `name`.
pub fn count_tokens(name: &str, text: &str) -> usize {
    bpe(name).encode_ordinary(text).len()
}

/// The tokens of `text` (for chunking).
pub fn encode(name: &str, text: &str) -> Vec<u32> {
    bpe(name).encode_ordinary(text)
}

/// The text of `ids`; a character cut at either end by the window is
/// dropped rather than shown as a replacement character.
pub fn decode_lossy(name: &str, ids: &[u32]) -> String {
    match bpe(name).decode_bytes(ids) {
        Ok(bytes) => String::from_utf8_lossy(&bytes)
            .trim_matches('\u{FFFD}')
            .to_string(),
        Err(_) => String::new(),
    }
}

/// The longest prefix of `text` of at most `max` tokens that ends on a
/// character boundary (a token can be part of a character).
pub fn truncate_tokens(name: &str, text: &str, max: usize) -> String {
    let bpe = bpe(name);
    let tokens = bpe.encode_ordinary(text);
    if tokens.len() <= max {
        return text.to_string();
    }
    let mut n = max;
    loop {
        if n == 0 {
            return String::new();
        }
        if let Ok(bytes) = bpe.decode_bytes(&tokens[..n]) {
            if let Ok(s) = String::from_utf8(bytes) {
                return s;
            }
        }
        n -= 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_models_family_picks_the_tokenizer() {
        assert_eq!(tokenizer_for("gpt-4o-mini", None), "o200k_base");
        assert_eq!(tokenizer_for("gpt-4-0613", None), "cl100k_base");
        assert_eq!(tokenizer_for("gpt-3.5-turbo", None), "cl100k_base");
        assert_eq!(tokenizer_for("smollm2", None), DEFAULT_TOKENIZER);
        assert_eq!(tokenizer_for("gpt-4o", Some("cl100k_base")), "cl100k_base");
    }

    #[test]
    fn truncation_keeps_at_most_n_tokens_and_whole_characters() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        for name in TOKENIZERS {
            let cut = truncate_tokens(name, &text, 7);
            assert_eq!(count_tokens(name, &cut), 7, "{name}: {cut:?}");
            assert!(text.starts_with(&cut));
            assert_eq!(truncate_tokens(name, "short", 7), "short");
        }
        // Multi-byte characters are never split.
        let cut = truncate_tokens("o200k_base", "日本語のテキストです", 3);
        assert!("日本語のテキストです".starts_with(&cut));
        assert!(count_tokens("o200k_base", &cut) <= 3);
    }
}
