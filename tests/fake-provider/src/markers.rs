//! Prompt markers: parsing of `[[fault:...]]` fault-injection markers and `[[tool:NAME {args}]]`
//! tool-call markers, deciding which fault applies to the n-th request with a given key, and
//! stripping markers from text.

use std::ops::Range;

use serde_json::Value;

/// An injected failure mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 429 with `Retry-After: retry_after`.
    RateLimit { retry_after: u64 },
    /// 500 `server_error`.
    ServerError,
    /// 400 `invalid_request_error`.
    BadRequest,
    /// Never answer.
    Hang,
    /// 200 with a truncated JSON body.
    Malformed,
    /// 200 with a NUL character (`\u0000`) inside the answer's text.
    Nul,
    /// 200 with an answer that is not JSON at all.
    NotJson,
    /// 200 with a JSON object that breaks any schema requiring properties
    /// or forbidding extra ones.
    WrongJson,
}

impl Fault {
    /// The outcome label recorded in [`crate::CallRecord::outcome`].
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Fault::RateLimit { .. } => "429",
            Fault::ServerError => "500",
            Fault::BadRequest => "400",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Nul => "nul",
            Fault::NotJson => "not_json",
            Fault::WrongJson => "wrong_json",
        }
    }

    /// Faults of the answer's content: their `times=N` counts rounds of a
    /// repair conversation (1 + the assistant messages in the request),
    /// not requests, so a retried request is answered the same way.
    fn counts_rounds(&self) -> bool {
        matches!(self, Fault::NotJson | Fault::WrongJson)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Latency(u64),
    /// Between the chunks of a streamed answer.
    ChunkDelay(u64),
    Fault(Fault),
}

/// One parsed `[[fault:...]]` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FaultMarker {
    effect: Effect,
    /// Applies only to the first `times` requests with the same key (`None` = always).
    times: Option<u64>,
    /// Applies only from this round of the conversation on (1 + the assistant messages).
    from_round: Option<u64>,
}

/// One parsed `[[tool:NAME {json args}]]` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ToolMarker {
    pub(crate) name: String,
    /// JSON text of the arguments (compact), `{}` when none were given.
    pub(crate) arguments: String,
}

/// What to do with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Latency override from a `latency=MS` marker.
    pub(crate) latency_ms: Option<u64>,
    /// Pause between the chunks of a streamed answer (`chunk_delay=MS`).
    pub(crate) chunk_delay_ms: Option<u64>,
    /// First applicable fault, if any.
    pub(crate) fault: Option<Fault>,
}

impl Plan {
    /// The outcome label recorded for this plan.
    pub(crate) fn outcome(&self) -> &'static str {
        self.fault.as_ref().map_or("ok", Fault::outcome)
    }
}

enum Token {
    Fault(Option<FaultMarker>),
    Tool(ToolMarker),
}

const FAULT_OPEN: &str = "[[fault:";
const TOOL_OPEN: &str = "[[tool:";
const CLOSE: &str = "]]";

/// Finds every marker in `text`, with its byte span.
fn scan(text: &str) -> Vec<(Range<usize>, Token)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(rel) = text[pos..].find("[[") {
        let start = pos + rel;
        let rest = &text[start..];
        if let Some(body) = rest.strip_prefix(FAULT_OPEN) {
            if let Some(end) = body.find(CLOSE) {
                let stop = start + FAULT_OPEN.len() + end + CLOSE.len();
                out.push((start..stop, Token::Fault(parse_fault(&body[..end]))));
                pos = stop;
                continue;
            }
        } else if rest.starts_with(TOOL_OPEN) {
            if let Some((len, marker)) = parse_tool(rest) {
                out.push((start..start + len, Token::Tool(marker)));
                pos = start + len;
                continue;
            }
        }
        pos = start + 2;
    }
    out
}

/// Parses the inside of a fault marker, e.g. `429:retry_after=2:times=3`.
fn parse_fault(spec: &str) -> Option<FaultMarker> {
    let mut parts = spec.split(':').map(str::trim);
    let head = parts.next()?;
    let mut retry_after = 1;
    let mut times = None;
    let mut from_round = None;
    for part in parts {
        let (k, v) = part.split_once('=')?;
        let v: u64 = v.trim().parse().ok()?;
        match k.trim() {
            "retry_after" => retry_after = v,
            "times" => times = Some(v),
            "from_round" => from_round = Some(v),
            _ => return None,
        }
    }
    let effect = match head {
        "429" => Effect::Fault(Fault::RateLimit { retry_after }),
        "500" => Effect::Fault(Fault::ServerError),
        "400" => Effect::Fault(Fault::BadRequest),
        "hang" => Effect::Fault(Fault::Hang),
        "malformed" => Effect::Fault(Fault::Malformed),
        "nul" => Effect::Fault(Fault::Nul),
        "not_json" => Effect::Fault(Fault::NotJson),
        "wrong_json" => Effect::Fault(Fault::WrongJson),
        other => match other.strip_prefix("chunk_delay=") {
            Some(ms) => Effect::ChunkDelay(ms.trim().parse().ok()?),
            None => Effect::Latency(other.strip_prefix("latency=")?.trim().parse().ok()?),
        },
    };
    Some(FaultMarker {
        effect,
        times,
        from_round,
    })
}

/// Parses a tool marker at the start of `text`; returns its byte length and content.
fn parse_tool(text: &str) -> Option<(usize, ToolMarker)> {
    let body = text.strip_prefix(TOOL_OPEN)?;
    let name_len = body
        .find(|c: char| c.is_whitespace() || c == ']')
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() {
        return None;
    }
    let after_name = &body[name_len..];
    let trimmed = after_name.trim_start();
    let args_at = TOOL_OPEN.len() + name_len + (after_name.len() - trimmed.len());

    // Preferred form: a JSON value followed by `]]` (the JSON may itself contain `]]`).
    if trimmed.starts_with(['{', '[']) {
        let mut values = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        if let Some(Ok(value)) = values.next() {
            let consumed = values.byte_offset();
            let tail = &trimmed[consumed..];
            let tail_trimmed = tail.trim_start();
            if tail_trimmed.starts_with(CLOSE) {
                let len = args_at + consumed + (tail.len() - tail_trimmed.len()) + CLOSE.len();
                let arguments = serde_json::to_string(&value).unwrap_or_else(|_| "{}".into());
                return Some((
                    len,
                    ToolMarker {
                        name: name.to_owned(),
                        arguments,
                    },
                ));
            }
        }
    }

    // Fallback: everything up to the first `]]` is the (possibly non-JSON) argument text.
    let end = trimmed.find(CLOSE)?;
    let raw = trimmed[..end].trim();
    let arguments = if raw.is_empty() {
        "{}".to_owned()
    } else {
        raw.to_owned()
    };
    Some((
        args_at + end + CLOSE.len(),
        ToolMarker {
            name: name.to_owned(),
            arguments,
        },
    ))
}

/// All well-formed fault markers in `text`, in order of appearance.
pub(crate) fn fault_markers(text: &str) -> Vec<FaultMarker> {
    scan(text)
        .into_iter()
        .filter_map(|(_, t)| match t {
            Token::Fault(m) => m,
            Token::Tool(_) => None,
        })
        .collect()
}

/// All tool markers in `text`, in order of appearance.
pub(crate) fn tool_markers(text: &str) -> Vec<ToolMarker> {
    scan(text)
        .into_iter()
        .filter_map(|(_, t)| match t {
            Token::Tool(m) => Some(m),
            Token::Fault(_) => None,
        })
        .collect()
}

/// `text` with every fault and tool marker removed.
pub(crate) fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (span, _) in scan(text) {
        out.push_str(&text[pos..span.start]);
        out.push(' ');
        pos = span.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Decides what happens to the `attempt`-th (1-based) request carrying `markers`, in `round`
/// (1-based) of its conversation: the last applicable latency marker wins, and the first
/// applicable fault marker wins.
pub(crate) fn plan(markers: &[FaultMarker], attempt: u64, round: u64) -> Plan {
    let mut plan = Plan::default();
    for m in markers {
        let count = match &m.effect {
            Effect::Fault(f) if f.counts_rounds() => round,
            _ => attempt,
        };
        if m.times.is_some_and(|n| count > n) || m.from_round.is_some_and(|n| round < n) {
            continue;
        }
        match &m.effect {
            Effect::Latency(ms) => plan.latency_ms = Some(*ms),
            Effect::ChunkDelay(ms) => plan.chunk_delay_ms = Some(*ms),
            Effect::Fault(f) => {
                if plan.fault.is_none() {
                    plan.fault = Some(f.clone());
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_markers() {
        let m = fault_markers(
            "a [[fault:429:retry_after=3:times=2]] b [[fault:latency=50]] [[fault:bogus]] [[fault:hang]]",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(
            plan(&m, 1, 1),
            Plan {
                latency_ms: Some(50),
                chunk_delay_ms: None,
                fault: Some(Fault::RateLimit { retry_after: 3 })
            }
        );
        assert_eq!(plan(&m, 3, 1).fault, Some(Fault::Hang));
        let slow = fault_markers("[[fault:chunk_delay=40]] text");
        assert_eq!(plan(&slow, 1, 1).chunk_delay_ms, Some(40));
    }

    #[test]
    fn times_limits_fault() {
        let m = fault_markers("[[fault:500:times=2]]");
        assert_eq!(plan(&m, 1, 1).outcome(), "500");
        assert_eq!(plan(&m, 2, 1).outcome(), "500");
        assert_eq!(plan(&m, 3, 1).outcome(), "ok");
        let always = fault_markers("[[fault:400]]");
        assert_eq!(plan(&always, 99, 1).outcome(), "400");
    }

    #[test]
    fn parses_tool_markers_with_nested_brackets() {
        let text =
            r#"call [[tool:get_weather {"city": "Paris", "days": [[1]]}]] now [[tool:ping]]"#;
        let tools = tool_markers(text);
        assert_eq!(
            tools,
            vec![
                ToolMarker {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris","days":[[1]]}"#.into()
                },
                ToolMarker {
                    name: "ping".into(),
                    arguments: "{}".into()
                },
            ]
        );
        let stripped = strip(text);
        assert!(!stripped.contains("[["), "{stripped}");
        assert_eq!(
            stripped.split_whitespace().collect::<Vec<_>>(),
            ["call", "now"]
        );
    }

    #[test]
    fn output_faults_count_conversation_rounds_not_requests() {
        let m = fault_markers("[[fault:wrong_json:times=1]] [[fault:not_json:times=2]]");
        // A retried first request is still round 1.
        assert_eq!(plan(&m, 5, 1).outcome(), "wrong_json");
        assert_eq!(plan(&m, 1, 2).outcome(), "not_json");
        assert_eq!(plan(&m, 1, 3).outcome(), "ok");
    }

    #[test]
    fn strip_removes_fault_markers_only() {
        assert_eq!(
            strip("hello [[fault:500]]world [[not a marker]]")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["hello", "world", "[[not", "a", "marker]]"]
        );
    }
}
