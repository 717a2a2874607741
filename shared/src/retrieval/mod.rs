//! Retrieval's domain: documents and their statuses, chunking by tokens
//! with overlap (`chunk`), embeddings as stored (`vector`), and the
//! pruning that turns ranked candidates into a prompt's context
//! (`prune`). Storage is `crate::db::collections`; the worker owns the
//! embedding calls (the `indexer` role and the `retrieve` step).

pub mod chunk;
pub mod prune;
pub mod vector;

use serde::{Deserialize, Serialize};

/// Where a document is in its indexing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentStatus {
    /// Upserted; its chunks for this text (or the collection's current
    /// model) are not all embedded yet.
    Pending,
    /// Every chunk of its text is embedded with the collection's model.
    Indexed,
    /// Indexing gave up (a terminal error, or its attempts are spent).
    Failed,
}

impl DocumentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Indexed => "indexed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "indexed" => Self::Indexed,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// How a retrieval ended, as the template sees it (`retrieval.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalStatus {
    Ok,
    Empty,
    Failed,
    TimedOut,
}

impl RetrievalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Empty => "empty",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    /// The execution flag this status raises, if any.
    pub fn flag(self) -> Option<&'static str> {
        match self {
            Self::Ok => None,
            Self::Empty => Some(flags::RETRIEVAL_EMPTY),
            Self::Failed => Some(flags::RETRIEVAL_FAILED),
            Self::TimedOut => Some(flags::RETRIEVAL_TIMED_OUT),
        }
    }
}

/// Flags an execution can carry (`flags` on the resource).
pub mod flags {
    pub const RETRIEVAL_EMPTY: &str = "retrieval_empty";
    pub const RETRIEVAL_FAILED: &str = "retrieval_failed";
    pub const RETRIEVAL_TIMED_OUT: &str = "retrieval_timed_out";
    /// The fallback collection or query was used.
    pub const RETRIEVAL_FALLBACK: &str = "retrieval_fallback";
}

/// sha256 (hex) of a text: the content hash of documents and chunks.
pub fn content_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
