//! One function per `llmq` command. Each answers an exit code or a
//! `CliError`; people get short readable output, `--json` gets the API's
//! answer as JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use llmq_shared::prompt::validate_name;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{CliError, Client};
use super::{exit, KeysCommand, OrgsCommand, PromptsCommand};

/// Where and how results are printed.
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else the human text.
    fn show(&self, value: &Value, human: impl FnOnce() -> String) -> Result<(), CliError> {
        let text = if self.json {
            serde_json::to_string_pretty(value).unwrap_or_default()
        } else {
            human()
        };
        line(text.trim_end())
    }
}

fn line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`llmq ... | head`) is not an error worth a code.
    let _ = writeln!(out, "{text}");
    Ok(())
}

fn checked<'a>(what: &str, name: &'a str) -> Result<&'a str, CliError> {
    validate_name(name).map_err(|e| CliError::Usage(format!("{what}: {e}")))?;
    Ok(name)
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn rule_text(rule: &Value) -> String {
    let targets = rule["targets"].as_array().cloned().unwrap_or_default();
    let mut text = if targets.len() == 1 {
        format!("v{}", s(&targets[0], "/version"))
    } else {
        targets
            .iter()
            .map(|t| format!("v{}:{}", s(t, "/version"), s(t, "/weight")))
            .collect::<Vec<_>>()
            .join(",")
    };
    if let Some(segments) = rule["segments"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = segments
            .iter()
            .map(|(name, t)| format!("{name}={}", rule_text(&json!({"targets": t}))))
            .collect();
        text.push_str(&format!(" [segments {}]", parts.join(" ")));
    }
    text
}

pub async fn prompts(
    client: &Client,
    out: &Output,
    command: PromptsCommand,
) -> Result<u8, CliError> {
    match command {
        PromptsCommand::List => {
            let body = client.get("/v1/prompts", &[]).await?;
            out.show(&body, || {
                let mut text =
                    format!("{:<24} {:>7} {:>8}  LABELS\n", "NAME", "LATEST", "VERSIONS");
                for p in body["prompts"].as_array().into_iter().flatten() {
                    let labels: Vec<String> = p["labels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l.as_str().map(str::to_string))
                        .collect();
                    text.push_str(&format!(
                        "{:<24} {:>7} {:>8}  {}\n",
                        s(p, "/name"),
                        format!("v{}", s(p, "/latest_version")),
                        s(p, "/versions"),
                        labels.join(", ")
                    ));
                }
                text
            })?;
        }
        PromptsCommand::Show { name, version } => {
            let name = checked("name", &name)?;
            match version {
                Some(v) => {
                    let body = client
                        .get(&format!("/v1/prompts/{name}/versions/{v}"), &[])
                        .await?;
                    out.show(&body, || {
                        format!(
                            "{name} v{v} ({}, {})\n{}",
                            s(&body, "/source"),
                            s(&body, "/created_at"),
                            serde_json::to_string_pretty(&body["definition"]).unwrap_or_default()
                        )
                    })?;
                }
                None => {
                    let body = client.get(&format!("/v1/prompts/{name}"), &[]).await?;
                    out.show(&body, || {
                        let mut text = format!("{name}\n\nVERSION  SOURCE  CREATED\n");
                        for v in body["versions"].as_array().into_iter().flatten() {
                            text.push_str(&format!(
                                "{:<8} {:<7} {}\n",
                                format!("v{}", s(v, "/version")),
                                s(v, "/source"),
                                s(v, "/created_at")
                            ));
                        }
                        text.push_str(
                            "\nLABEL            TARGET                PROTECTED  UPDATED BY\n",
                        );
                        for l in body["labels"].as_array().into_iter().flatten() {
                            text.push_str(&format!(
                                "{:<16} {:<21} {:<10} {}\n",
                                s(l, "/label"),
                                rule_text(l),
                                if l["protected"].as_bool() == Some(true) {
                                    "yes"
                                } else {
                                    "no"
                                },
                                s(l, "/updated_by")
                            ));
                        }
                        text
                    })?;
                }
            }
        }
        PromptsCommand::Diff { name, from, to } => {
            let name = checked("name", &name)?;
            let query = [
                ("from", Some(from.to_string())),
                ("to", Some(to.to_string())),
            ];
            let body = client
                .get(&format!("/v1/prompts/{name}/diff"), &query)
                .await?;
            out.show(&body, || {
                let mut text = format!("{name}: v{from} -> v{to}\n");
                let changes = body["changes"].as_array().cloned().unwrap_or_default();
                if changes.is_empty() {
                    text.push_str("no differences\n");
                }
                for c in changes {
                    let path = s(&c, "/path");
                    if !c["from"].is_null() {
                        text.push_str(&format!("- {path}: {}\n", c["from"]));
                    }
                    if !c["to"].is_null() {
                        text.push_str(&format!("+ {path}: {}\n", c["to"]));
                    }
                }
                text
            })?;
        }
        PromptsCommand::Push { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .canonicalize()
                    .ok()
                    .and_then(|p| {
                        p.parent()
                            .and_then(|d| d.file_name())
                            .map(|n| n.to_string_lossy().into_owned())
                    })
                    .ok_or_else(|| {
                        CliError::Usage("give --name: the file has no directory to name it".into())
                    })?,
            };
            let name = checked("name", &name)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let definition: Value = figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&text),
            )
            .extract()
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let url = client.url(&format!("/v1/prompts/{name}/versions"), &[])?;
            let (status, body) = client.send(Method::POST, url, Some(&definition)).await?;
            out.show(&body, || {
                if status == reqwest::StatusCode::CREATED {
                    format!("created {name} v{}", s(&body, "/version"))
                } else {
                    format!(
                        "{name} v{} already has this content; nothing created",
                        s(&body, "/version")
                    )
                }
            })?;
        }
        PromptsCommand::Promote {
            name,
            label,
            target,
            reason,
        } => {
            let (name, label) = (checked("name", &name)?, checked("label", &label)?);
            let mut body = parse_target(&target)?;
            if let Some(reason) = reason {
                body["reason"] = reason.into();
            }
            let url = client.url(&format!("/v1/prompts/{name}/labels/{label}"), &[])?;
            let (_, moved) = client.send(Method::PUT, url, Some(&body)).await?;
            out.show(&moved, || move_text(name, &moved))?;
        }
        PromptsCommand::Rollback {
            name,
            label,
            reason,
        } => {
            let (name, label) = (checked("name", &name)?, checked("label", &label)?);
            let url = client.url(&format!("/v1/prompts/{name}/labels/{label}/rollback"), &[])?;
            let body = json!({ "reason": reason });
            let (_, moved) = client.send(Method::POST, url, Some(&body)).await?;
            out.show(&moved, || move_text(name, &moved))?;
        }
        PromptsCommand::History { name, label } => {
            let (name, label) = (checked("name", &name)?, checked("label", &label)?);
            let body = client
                .get(&format!("/v1/prompts/{name}/labels/{label}/history"), &[])
                .await?;
            out.show(&body, || {
                let mut text = String::from(
                    "WHEN                            ACTOR       FROM -> TO  REASON\n",
                );
                for m in body["moves"].as_array().into_iter().flatten() {
                    let from = if m["from"].is_null() {
                        "-".into()
                    } else {
                        rule_text(&m["from"])
                    };
                    text.push_str(&format!(
                        "{:<31} {:<11} {from} -> {}  {}\n",
                        s(m, "/moved_at"),
                        s(m, "/actor"),
                        rule_text(&m["to"]),
                        s(m, "/reason")
                    ));
                }
                text
            })?;
        }
        PromptsCommand::Stats { name, label, since } => {
            let name = checked("name", &name)?;
            let body = client
                .get(
                    &format!("/v1/prompts/{name}/stats"),
                    &[("label", label), ("since", since)],
                )
                .await?;
            out.show(&body, || {
                let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
                let num = |v: &Value, d: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
                let mut text = String::from(
                    "VERSION  EXECUTIONS  SUCCESS  INVALID_OUTPUT  P50_MS  P95_MS  TOKENS  COST_USD\n",
                );
                for v in body["versions"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "{:<8} {:>10}  {:>7}  {:>14}  {:>6}  {:>6}  {:>6}  {:>8}\n",
                        format!("v{}", s(v, "/version")),
                        s(v, "/executions"),
                        pct(&v["success_rate"]),
                        pct(&v["invalid_output_rate"]),
                        num(&v["p50_latency_ms"], 0),
                        num(&v["p95_latency_ms"], 0),
                        num(&v["tokens_per_execution"], 0),
                        num(&v["cost_per_execution_usd"], 6),
                    ));
                }
                text
            })?;
        }
    }
    Ok(exit::OK)
}

/// `4` → one version; `3:90,4:10` → weighted targets.
pub fn parse_target(raw: &str) -> Result<Value, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "target {raw:?}: give a version (4) or weights (3:90,4:10)"
        ))
    };
    if let Ok(v) = raw.trim().parse::<i32>() {
        return Ok(json!({ "version": v }));
    }
    let mut targets = Vec::new();
    for part in raw.split(',') {
        let (v, w) = part.split_once(':').ok_or_else(bad)?;
        let version: i32 = v
            .trim()
            .trim_start_matches('v')
            .parse()
            .map_err(|_| bad())?;
        let weight: u32 = w.trim().parse().map_err(|_| bad())?;
        targets.push(json!({ "version": version, "weight": weight }));
    }
    Ok(json!({ "targets": targets }))
}

fn move_text(name: &str, moved: &Value) -> String {
    let from = if moved["from"].is_null() {
        "(new)".into()
    } else {
        rule_text(&moved["from"])
    };
    format!(
        "{name} {}: {from} -> {}",
        s(moved, "/label"),
        rule_text(&moved["to"])
    )
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Prints an execution's status changes and finished steps from its event
/// stream; answers the final resource (`done`), or None when the stream
/// ended without it.
async fn follow_events(
    client: &Client,
    out: &Output,
    id: &str,
    last: &mut String,
) -> Result<Option<Value>, CliError> {
    let mut done = None;
    client
        .events(&format!("/v1/executions/{id}/events"), |event, data| {
            match event {
                "status" => {
                    let status = s(&data, "/status");
                    if status != *last && !out.json {
                        let _ = line(&format!("{id} {status}"));
                    }
                    *last = status;
                }
                "step" if data["phase"] == "finished" && !out.json => {
                    let _ = line(&format!(
                        "{id} step {} {} ({} ms)",
                        s(&data, "/kind"),
                        s(&data, "/status"),
                        data["latency_ms"].as_f64().unwrap_or_default().round()
                    ));
                }
                "done" => {
                    done = Some(data);
                    return false;
                }
                _ => {}
            }
            true
        })
        .await?;
    Ok(done)
}

/// What `run` submits.
pub struct RunSpec {
    pub name: String,
    pub input: String,
    pub label: Option<String>,
    pub version: Option<i32>,
    pub user: Option<String>,
    pub segment: Option<String>,
    pub timeout: Duration,
}

/// Submits and follows the execution (its event stream, long polls if
/// that ends early) until it ends.
pub async fn run(client: &Client, out: &Output, spec: RunSpec) -> Result<u8, CliError> {
    let name = checked("name", &spec.name)?;
    let raw = match spec.input.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{path}: {e}")))?
        }
        None => spec.input.clone(),
    };
    let input: Value = serde_json::from_str(&raw)
        .map_err(|e| CliError::Usage(format!("--input is not JSON: {e}")))?;
    let mut body = json!({ "prompt": name, "input": input });
    for (k, v) in [
        ("label", spec.label),
        ("user", spec.user),
        ("segment", spec.segment),
    ] {
        if let Some(v) = v {
            body[k] = v.into();
        }
    }
    if let Some(v) = spec.version {
        body["version"] = v.into();
    }
    let url = client.url("/v1/executions", &[])?;
    let (_, mut execution) = client.send(Method::POST, url, Some(&body)).await?;
    let id = s(&execution, "/id");
    if !out.json {
        line(&format!(
            "{id} {} ({} v{}{})",
            s(&execution, "/status"),
            name,
            s(&execution, "/prompt/version"),
            execution["prompt"]["arm"]
                .as_str()
                .map(|a| format!(", {a}"))
                .unwrap_or_default()
        ))?;
    }
    let started = Instant::now();
    let mut last = s(&execution, "/status");
    if !is_terminal(&last) {
        // Its events as they happen; if the stream ends before `done` (or
        // takes longer than --timeout-secs), the long polls below finish.
        let follow = follow_events(client, out, &id, &mut last);
        if let Ok(Ok(Some(done))) = tokio::time::timeout(spec.timeout, follow).await {
            execution = done;
            last = s(&execution, "/status");
        }
    }
    while !is_terminal(&last) {
        if started.elapsed() > spec.timeout {
            eprintln!(
                "llmq: stopped following {id} after {:?}; it goes on",
                spec.timeout
            );
            return Ok(exit::EXECUTION_FAILED);
        }
        execution = client
            .get(
                &format!("/v1/executions/{id}"),
                &[("wait", Some("2".into()))],
            )
            .await?;
        let status = s(&execution, "/status");
        if status != last && !out.json {
            line(&format!("{id} {status}"))?;
        }
        last = status;
    }
    if out.json {
        out.show(&execution, String::new)?;
    } else if last == "succeeded" {
        let output = match &execution["output"] {
            Value::String(text) => text.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        line(&output)?;
    } else {
        eprintln!(
            "llmq: {id} {last}: {}: {}",
            s(&execution, "/error/code"),
            s(&execution, "/error/message")
        );
    }
    Ok(if last == "succeeded" {
        exit::OK
    } else {
        exit::EXECUTION_FAILED
    })
}

fn org_line(o: &Value) -> String {
    format!(
        "{:<24} {:<24} {}",
        s(o, "/id"),
        s(o, "/name"),
        s(o, "/created_at")
    )
}

pub async fn orgs(client: &Client, out: &Output, command: OrgsCommand) -> Result<u8, CliError> {
    match command {
        OrgsCommand::Create { id, name } => {
            let id = checked("id", &id)?;
            let url = client.url("/v1/orgs", &[])?;
            let body = json!({"id": id, "name": name});
            let (_, created) = client.send(Method::POST, url, Some(&body)).await?;
            out.show(&created, || {
                format!("created organisation {}", s(&created, "/id"))
            })?;
        }
        OrgsCommand::List => {
            let body = client.get("/v1/orgs", &[]).await?;
            out.show(&body, || {
                let mut text = format!("{:<24} {:<24} CREATED\n", "ID", "NAME");
                for o in body["organisations"].as_array().into_iter().flatten() {
                    text.push_str(&org_line(o));
                    text.push('\n');
                }
                text
            })?;
        }
        OrgsCommand::Show { id } => {
            let id = checked("id", &id)?;
            let body = client.get(&format!("/v1/orgs/{id}"), &[]).await?;
            out.show(&body, || org_line(&body))?;
        }
    }
    Ok(exit::OK)
}

fn key_line(k: &Value) -> String {
    let scopes: Vec<String> = k["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let state = if !k["revoked_at"].is_null() {
        format!("revoked {}", s(k, "/revoked_at"))
    } else if !k["expires_at"].is_null() {
        format!("expires {}", s(k, "/expires_at"))
    } else {
        "active".into()
    };
    format!(
        "{:<36} {:<16} {:<14} {:<10} {}  [{}]",
        s(k, "/id"),
        s(k, "/prefix"),
        s(k, "/name"),
        s(k, "/user"),
        state,
        scopes.join(",")
    )
}

pub async fn keys(client: &Client, out: &Output, command: KeysCommand) -> Result<u8, CliError> {
    match command {
        KeysCommand::Create {
            org,
            scopes,
            name,
            user,
            expires_at,
        } => {
            let org = checked("org", &org)?;
            let url = client.url(&format!("/v1/orgs/{org}/keys"), &[])?;
            let body =
                json!({"scopes": scopes, "name": name, "user": user, "expires_at": expires_at});
            let (_, created) = client.send(Method::POST, url, Some(&body)).await?;
            // The secret alone on stdout, so `KEY=$(llmq keys create ...)` works;
            // the rest on stderr.
            if out.json {
                out.show(&created, String::new)?;
            } else {
                line(&s(&created, "/secret"))?;
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "created key {} ({}) of {org}; it is shown once, store it now",
                    s(&created, "/id"),
                    s(&created, "/prefix")
                );
            }
        }
        KeysCommand::List { org } => {
            let org = checked("org", &org)?;
            let body = client.get(&format!("/v1/orgs/{org}/keys"), &[]).await?;
            out.show(&body, || {
                let mut text = format!(
                    "{:<36} {:<16} {:<14} {:<10} STATE  [SCOPES]\n",
                    "ID", "PREFIX", "NAME", "USER"
                );
                for k in body["keys"].as_array().into_iter().flatten() {
                    text.push_str(&key_line(k));
                    text.push('\n');
                }
                text
            })?;
        }
        KeysCommand::Revoke { id, org } => {
            let org = checked("org", &org)?;
            let id: uuid::Uuid = id.parse().map_err(|_| {
                CliError::Usage(format!("{id}: not a key id (see `llmq keys list`)"))
            })?;
            let url = client.url(&format!("/v1/orgs/{org}/keys/{id}/revoke"), &[])?;
            let (_, revoked) = client.send(Method::POST, url, None).await?;
            out.show(&revoked, || {
                format!(
                    "revoked key {} ({})",
                    s(&revoked, "/id"),
                    s(&revoked, "/prefix")
                )
            })?;
        }
    }
    Ok(exit::OK)
}
