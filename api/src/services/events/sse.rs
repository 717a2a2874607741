//! The Server-Sent Events wire format: `id:`, `event:` and one `data:`
//! line of JSON per event, a blank line after each; `:` comments keep
//! idle connections open.

use actix_web::web::Bytes;

/// One frame of an event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Event {
        id: Option<String>,
        event: &'static str,
        /// One line of JSON.
        data: String,
    },
    /// A keep-alive comment.
    Comment,
}

impl Frame {
    pub fn event(id: Option<String>, event: &'static str, data: &serde_json::Value) -> Self {
        Self::Event {
            id,
            event,
            data: data.to_string(),
        }
    }

    pub fn encode(&self) -> Bytes {
        match self {
            Self::Event { id, event, data } => {
                let mut out = String::with_capacity(data.len() + 48);
                if let Some(id) = id {
                    out.push_str("id: ");
                    out.push_str(id);
                    out.push('\n');
                }
                out.push_str("event: ");
                out.push_str(event);
                out.push_str("\ndata: ");
                // serde_json never writes a raw newline; be safe anyway.
                out.push_str(&data.replace('\n', "\\n"));
                out.push_str("\n\n");
                Bytes::from(out)
            }
            Self::Comment => Bytes::from_static(b": keep-alive\n\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sse() {
        let f = Frame::event(Some("3".into()), "status", &serde_json::json!({"a": 1}));
        assert_eq!(
            &f.encode()[..],
            b"id: 3\nevent: status\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(&Frame::Comment.encode()[..], b": keep-alive\n\n");
    }
}
