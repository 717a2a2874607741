//! A small Server-Sent Events client for tests: it parses the real wire
//! format (`id:`, `event:`, `data:` fields, a blank line ending an event,
//! `:` comments) from the response body as it arrives.

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    /// The id as a lifecycle sequence number.
    pub fn seq(&self) -> Option<i64> {
        self.id.as_deref().and_then(|id| id.parse().ok())
    }
}

/// What the stream gave next.
#[derive(Clone, Debug, PartialEq)]
pub enum SseItem {
    Event(SseEvent),
    Comment(String),
}

pub struct SseClient {
    response: Response,
    buffer: String,
    /// Fields of the event being read.
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
    ended: bool,
}

impl SseClient {
    /// Reads a `200 text/event-stream` response.
    pub fn new(response: Response) -> Self {
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type:?}"
        );
        Self {
            response,
            buffer: String::new(),
            id: None,
            event: None,
            data: Vec::new(),
            ended: false,
        }
    }

    /// The next event or comment; None once the server closed the stream.
    /// Panics if nothing comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(at) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=at).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(item) = self.line(line) {
                    return Some(item);
                }
            }
            if self.ended {
                return None;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
                .expect("reading the event stream");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => self.ended = true,
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            if self.data.is_empty() {
                // No data: nothing to dispatch (e.g. after a comment).
                self.id = None;
                self.event = None;
                return None;
            }
            let event = self.event.take().unwrap_or_else(|| "message".into());
            let data = std::mem::take(&mut self.data).join("\n");
            let id = self.id.take();
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data:?}"));
            return Some(SseItem::Event(SseEvent { id, event, data }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseItem::Comment(comment.trim().to_string()));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => self.id = Some(value),
            "event" => self.event = Some(value),
            "data" => self.data.push(value),
            _ => {}
        }
        None
    }

    /// The next event, skipping comments; None at the end of the stream.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            match self.next(timeout).await? {
                SseItem::Event(e) => return Some(e),
                SseItem::Comment(_) => {}
            }
        }
    }

    /// Every event until the server closes the stream.
    pub async fn until_closed(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event(timeout).await {
            events.push(e);
        }
        events
    }
}
