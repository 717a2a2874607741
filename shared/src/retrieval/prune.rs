//! Pruning: from candidates ranked by score to the chunks that go into
//! the prompt. In order: drop those under the minimum score, rank by
//! score, drop near-duplicates of a better-ranked chunk (cosine of their
//! embeddings at or over the threshold), keep at most `top_k`, and fit
//! them into the token budget counted with the prompt's real tokenizer
//! (a chunk that does not fit is skipped; a smaller one after it may
//! still fit). Every dropped candidate says why.

use serde::Serialize;

use super::vector::cosine;
use crate::prompt::tokens::count_tokens;

/// A candidate chunk with its query similarity.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub document_id: String,
    pub ord: i32,
    pub text: String,
    pub metadata: serde_json::Value,
    pub score: f64,
    pub embedding: Vec<f32>,
}

/// The bounds of one pruning.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    pub top_k: usize,
    pub min_score: f64,
    pub max_tokens: usize,
    pub duplicate_threshold: f64,
    pub tokenizer: &'a str,
}

/// A chunk that goes into the prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Selected {
    pub document_id: String,
    pub ord: i32,
    pub text: String,
    pub metadata: serde_json::Value,
    pub score: f64,
    pub tokens: usize,
}

/// Why a candidate was left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropped {
    pub document_id: String,
    pub ord: i32,
    pub score: f64,
    /// `below_min_score`, `duplicate`, `over_top_k` or `over_budget`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pruned {
    pub selected: Vec<Selected>,
    pub dropped: Vec<Dropped>,
    /// Tokens the selected chunks take.
    pub tokens: usize,
}

pub fn prune(mut candidates: Vec<Candidate>, limits: Limits<'_>) -> Pruned {
    let mut out = Pruned::default();
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.document_id.cmp(&b.document_id))
            .then(a.ord.cmp(&b.ord))
    });
    let mut kept: Vec<&Candidate> = Vec::new();
    for c in &candidates {
        let reason = if c.score < limits.min_score {
            Some("below_min_score")
        } else if kept
            .iter()
            .any(|k| cosine(&k.embedding, &c.embedding) >= limits.duplicate_threshold)
        {
            Some("duplicate")
        } else if out.selected.len() >= limits.top_k {
            Some("over_top_k")
        } else {
            let tokens = count_tokens(limits.tokenizer, &c.text);
            if out.tokens + tokens > limits.max_tokens {
                Some("over_budget")
            } else {
                out.tokens += tokens;
                out.selected.push(Selected {
                    document_id: c.document_id.clone(),
                    ord: c.ord,
                    text: c.text.clone(),
                    metadata: c.metadata.clone(),
                    score: c.score,
                    tokens,
                });
                kept.push(c);
                None
            }
        };
        if let Some(reason) = reason {
            out.dropped.push(Dropped {
                document_id: c.document_id.clone(),
                ord: c.ord,
                score: c.score,
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, text: &str, score: f64, embedding: Vec<f32>) -> Candidate {
        Candidate {
            document_id: id.into(),
            ord: 0,
            text: text.into(),
            metadata: serde_json::Value::Null,
            score,
            embedding,
        }
    }

    fn limits(max_tokens: usize) -> Limits<'static> {
        Limits {
            top_k: 10,
            min_score: 0.1,
            max_tokens,
            duplicate_threshold: 0.95,
            tokenizer: "o200k_base",
        }
    }

    #[test]
    fn ranks_drops_duplicates_and_low_scores() {
        let out = prune(
            vec![
                cand("low", "low", 0.05, vec![0.0, 0.0, 1.0]),
                cand("b", "second", 0.7, vec![0.0, 1.0, 0.0]),
                cand("a", "first", 0.9, vec![1.0, 0.0, 0.0]),
                cand("a-copy", "first", 0.89, vec![1.0, 0.01, 0.0]),
            ],
            limits(100),
        );
        let ids: Vec<_> = out
            .selected
            .iter()
            .map(|s| s.document_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let reasons: Vec<_> = out
            .dropped
            .iter()
            .map(|d| (d.document_id.as_str(), d.reason))
            .collect();
        assert_eq!(
            reasons,
            [("a-copy", "duplicate"), ("low", "below_min_score")]
        );
    }

    #[test]
    fn the_selected_chunks_fit_the_token_budget() {
        let long = "many words in this rather long chunk of text ".repeat(10);
        let out = prune(
            vec![
                cand("long", &long, 0.9, vec![1.0, 0.0]),
                cand("short", "a short one", 0.8, vec![0.0, 1.0]),
            ],
            limits(20),
        );
        assert!(out.tokens <= 20);
        assert_eq!(out.selected.len(), 1);
        assert_eq!(out.selected[0].document_id, "short");
        assert_eq!(out.dropped[0].reason, "over_budget");
    }
}
