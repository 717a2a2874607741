//! Chunking: a document's text cut into windows of `size` tokens of the
//! real tokenizer, consecutive windows sharing `overlap` tokens, each cut
//! on a character boundary. Deterministic, so the same text always gives
//! the same chunks (and the same content hashes, which the embedding
//! cache relies on).

use crate::prompt::tokens;

/// One chunk of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub ord: i32,
    pub text: String,
    pub tokens: i32,
}

/// The chunks of `text`: windows of at most `size` tokens, the next
/// starting `size - overlap` tokens after the previous one. An empty (or
/// whitespace-only) text has no chunks.
pub fn chunk_text(tokenizer: &str, text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    let size = size.max(1);
    let step = size.saturating_sub(overlap).max(1);
    let ids = tokens::encode(tokenizer, text);
    let mut out = Vec::new();
    let mut start = 0;
    while start < ids.len() {
        let end = (start + size).min(ids.len());
        let piece = tokens::decode_lossy(tokenizer, &ids[start..end]);
        if !piece.trim().is_empty() {
            out.push(Chunk {
                ord: out.len() as i32,
                text: piece,
                tokens: (end - start) as i32,
            });
        }
        if end == ids.len() {
            break;
        }
        start += step;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunks_hold_at_most_size_tokens_and_overlap() {
        let text = (0..300)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk_text("o200k_base", &text, 50, 10);
        assert!(chunks.len() > 3, "{}", chunks.len());
        for c in &chunks {
            assert!(c.tokens <= 50);
            assert!(tokens::count_tokens("o200k_base", &c.text) <= 52);
        }
        // Overlap: the end of one chunk starts the next.
        let tail: String = chunks[0].text.chars().rev().take(8).collect::<String>();
        let tail: String = tail.chars().rev().collect();
        assert!(chunks[1].text.contains(tail.trim()), "{tail:?}");
        assert_eq!(chunk_text("o200k_base", &text, 50, 10), chunks);
    }

    #[test]
    fn short_and_empty_texts() {
        assert_eq!(chunk_text("o200k_base", "hello world", 50, 10).len(), 1);
        assert!(chunk_text("o200k_base", "   ", 50, 10).is_empty());
        assert!(chunk_text("o200k_base", "", 50, 10).is_empty());
        // An overlap as large as the size still advances.
        assert!(!chunk_text("o200k_base", "a b c d e f", 2, 5).is_empty());
    }
}
