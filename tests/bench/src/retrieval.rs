//! `llmq-bench retrieval`: a collection of `--chunks` chunks, then
//! executions of a prompt that retrieves from it. Loads the chunks
//! straight into Postgres (batched `UNNEST` inserts, each chunk's
//! embedding from the fake embeddings endpoint's own function, so the
//! worker's rerank compares like with like), then submits `-n`
//! executions with `-c` in flight and reports executions/s, the
//! `retrieve` step's latency p50 / p99 from its recorded rows, and how
//! often the chunk each question was written from came back.
//!
//! The corpus is shaped like text: words of a 30,000-word vocabulary
//! drawn with a Zipf-like distribution (the word of rank r with
//! probability about 1 / r: the commonest is in nearly every chunk, most
//! are in a few), 60 to a chunk, from a seeded generator, so two runs of
//! one size search the same collection. Each question is written from one
//! chunk, as a user asks about something the collection holds: that
//! chunk's rarest word, two more of its words (mostly common ones, as
//! real questions carry), and one word drawn from the whole vocabulary,
//! which the chunk usually lacks (so not every question has a chunk with
//! all its words). (Until this corpus, the words were drawn with a
//! barely skewed distribution and the questions from nowhere: no chunk
//! was relevant to them and no word was common, unlike a real corpus.)

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio_postgres::NoTls;
use uuid::Uuid;

use llmq_bench::percentile;

#[derive(Args, Clone)]
pub struct RetrievalArgs {
    #[arg(long, env = "LLMQ_BENCH_API", default_value = "http://127.0.0.1:18080")]
    api: String,
    #[arg(long, env = "LLMQ_BENCH_API_KEY", default_value = "bench-key")]
    api_key: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/llmq_bench"
    )]
    database_url: String,
    /// Chunks in the collection.
    #[arg(long, default_value_t = 100_000)]
    chunks: usize,
    /// Executions to run against it.
    #[arg(short = 'n', long, default_value_t = 2_000)]
    executions: usize,
    /// Submits in flight.
    #[arg(short = 'c', long, default_value_t = 64)]
    concurrency: usize,
    /// A prompt whose `retrieve` reads `--collection` with a `question` input.
    #[arg(long, default_value = "ask")]
    prompt: String,
    #[arg(long, default_value = "handbook")]
    collection: String,
    /// The collection's embedding model (the fake embeds any).
    #[arg(long, default_value = "text-embedding-3-small")]
    model: String,
    /// Tenant the API key stands for.
    #[arg(long, default_value = "default")]
    tenant: String,
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    #[arg(long, default_value = "retrieval")]
    label: String,
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// Words of the synthetic corpus.
const VOCABULARY: usize = 30_000;
const WORDS_PER_CHUNK: usize = 60;
const BATCH: usize = 5_000;

/// A small deterministic generator (xorshift64*): no dependency, same
/// corpus every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A word's rank (0 the commonest), Zipf-like: log-uniform over
    /// 1..=VOCABULARY, i.e. rank r with probability about 1 / (r ln V).
    fn word(&mut self) -> usize {
        let r = (self.unit() * ((VOCABULARY + 1) as f64).ln()).exp() as usize;
        r.clamp(1, VOCABULARY) - 1
    }
}

/// The chunk `i` of the corpus, as word ranks: the same for every run
/// (each chunk from its own seed, so a question can be written from
/// chunk `i` without generating the others).
fn chunk_words(i: usize) -> Vec<usize> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    rng.next();
    (0..WORDS_PER_CHUNK).map(|_| rng.word()).collect()
}

/// A word of rank `i`: consonant-vowel syllables (`ba`, `kodu`, ...),
/// letters only, which the English configuration keeps as they are
/// (a few short ones are stop words, as in real text).
fn word(i: usize) -> String {
    const CONSONANTS: &[u8] = b"bdgklmnprtvz";
    const VOWELS: &[u8] = b"aou";
    let syllables = CONSONANTS.len() * VOWELS.len();
    let mut n = i;
    let mut w = String::new();
    loop {
        let s = n % syllables;
        w.push(CONSONANTS[s / VOWELS.len()] as char);
        w.push(VOWELS[s % VOWELS.len()] as char);
        n /= syllables;
        if n == 0 {
            break;
        }
    }
    w
}

fn text_of(words: &[usize]) -> String {
    words.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ")
}

/// A question about chunk `target`: its rarest word, two more of its
/// words and one from anywhere, shuffled.
fn question(rng: &mut Rng, target: usize) -> String {
    let words = chunk_words(target);
    let rarest = words.iter().copied().max().unwrap_or(0);
    let mut picked = vec![
        rarest,
        words[rng.below(words.len())],
        words[rng.below(words.len())],
        rng.word(),
    ];
    for i in (1..picked.len()).rev() {
        picked.swap(i, rng.below(i + 1));
    }
    text_of(&picked)
}

fn embedding_bytes(text: &str) -> Vec<u8> {
    llmq_fake_provider::embeddings::embed_text(text)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

async fn load(db: &tokio_postgres::Client, args: &RetrievalArgs) -> anyhow::Result<f64> {
    let started = Instant::now();
    db.execute(
        "INSERT INTO collections (tenant_id, name, embedding_model) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, name) DO UPDATE SET embedding_model = EXCLUDED.embedding_model",
        &[&args.tenant, &args.collection, &args.model],
    )
    .await?;
    let mut done = 0;
    while done < args.chunks {
        let n = BATCH.min(args.chunks - done);
        let mut ids = Vec::with_capacity(n);
        let mut texts = Vec::with_capacity(n);
        let mut embeddings = Vec::with_capacity(n);
        for i in done..done + n {
            let text = text_of(&chunk_words(i));
            embeddings.push(embedding_bytes(&text));
            ids.push(format!("doc-{i}"));
            texts.push(text);
        }
        db.execute(
            "WITH d AS (INSERT INTO documents (tenant_id, collection, id, text, content_hash, status, \
               embedding_model, chunk_count, indexed_at) \
               SELECT $1, $2, id, text, md5(text), 'indexed', $3, 1, now() \
                 FROM UNNEST($4::text[], $5::text[]) AS n(id, text)) \
             INSERT INTO chunks (tenant_id, collection, document_id, ord, text, tokens, content_hash, \
               embedding_model, embedding) \
             SELECT $1, $2, id, 0, text, 60, md5(text), $3, e \
               FROM UNNEST($4::text[], $5::text[], $6::bytea[]) AS n(id, text, e)",
            &[
                &args.tenant,
                &args.collection,
                &args.model,
                &ids,
                &texts,
                &embeddings,
            ],
        )
        .await?;
        done += n;
    }
    db.batch_execute("ANALYZE documents; ANALYZE chunks;")
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(args: RetrievalArgs) -> anyhow::Result<()> {
    let (db, conn) = tokio_postgres::connect(&args.database_url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", args.database_url))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("[bench] postgres connection error: {e}");
        }
    });
    eprintln!(
        "[bench] {}: loading {} chunks into {}",
        args.label, args.chunks, args.collection
    );
    let load_secs = load(&db, &args).await?;
    eprintln!("[bench] loaded in {load_secs:.1} s");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1) * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{}/v1/executions", args.api.trim_end_matches('/'));
    let auth = Arc::new(format!("Bearer {}", args.api_key));
    let prompt = Arc::new(args.prompt.clone());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let questions: Vec<(String, String)> = (0..args.executions)
        .map(|_| {
            let target = rng.below(args.chunks.max(1));
            (question(&mut rng, target), format!("doc-{target}"))
        })
        .collect();
    let started = Instant::now();
    let submitted: Vec<(Uuid, String)> = futures::stream::iter(questions)
        .map(|(q, target)| {
            let (http, url, auth, prompt) =
                (http.clone(), url.clone(), auth.clone(), prompt.clone());
            async move {
                let body = json!({"prompt": &*prompt, "input": {"question": q}});
                let r = http
                    .post(&url)
                    .header("Authorization", &*auth)
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                let id = v["id"].as_str().and_then(|s| s.parse::<Uuid>().ok())?;
                Some((id, target))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .filter_map(|id| async move { id })
        .collect()
        .await;
    let ids: Vec<Uuid> = submitted.iter().map(|(id, _)| *id).collect();
    let targets: Vec<String> = submitted.into_iter().map(|(_, t)| t).collect();
    if ids.is_empty() {
        bail!(
            "no execution was accepted (is the prompt {:?} loaded?)",
            args.prompt
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM executions WHERE id = ANY($1) \
                 AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                &[&ids],
            )
            .await?
            .get(0);
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{open} executions still open after {} s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    // Whether the chunk the question was written from is among the
    // chunks that went into the prompt.
    let rows = db
        .query(
            "SELECT s.latency_ms, s.output->>'status', \
                    EXISTS (SELECT 1 FROM jsonb_array_elements(s.output->'first'->'chunks') c \
                             WHERE c->>'document_id' = t.target) \
               FROM unnest($1::uuid[], $2::text[]) AS t(id, target) \
               JOIN execution_steps s ON s.execution_id = t.id \
              WHERE s.kind = 'retrieve' AND s.status = 'succeeded'",
            &[&ids, &targets],
        )
        .await?;
    let found = rows.iter().filter(|r| r.get::<_, bool>(2)).count();
    let mut latencies: Vec<u64> = Vec::with_capacity(rows.len());
    let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rows {
        let ms: Option<f64> = r.get(0);
        latencies.push((ms.unwrap_or(0.0) * 1000.0) as u64);
        let status: Option<String> = r.get(1);
        *by_status.entry(status.unwrap_or_default()).or_default() += 1;
    }
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p).map_or(0.0, |us| us as f64 / 1000.0);
    let succeeded: i64 = db
        .query_one(
            "SELECT count(*) FROM executions WHERE id = ANY($1) AND status = 'succeeded'",
            &[&ids],
        )
        .await?
        .get(0);
    let report = json!({
        "label": args.label,
        "chunks": args.chunks,
        "executions": ids.len(),
        "succeeded": succeeded,
        "load_secs": load_secs,
        "wall_secs": wall,
        "executions_per_sec": ids.len() as f64 / wall,
        "retrieve_p50_ms": ms(0.50),
        "retrieve_p99_ms": ms(0.99),
        "retrieve_max_ms": ms(1.0),
        "retrieve_status": by_status,
        "relevant_found": found,
    });
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} chunks, {} executions ({} succeeded) in {:.1} s = {:.0}/s; retrieve p50 {:.2} ms, p99 {:.2} ms; statuses {}; relevant chunk in the prompt {} / {}",
        args.label,
        args.chunks,
        ids.len(),
        succeeded,
        wall,
        ids.len() as f64 / wall,
        ms(0.50),
        ms(0.99),
        report["retrieve_status"],
        found,
        rows.len(),
    )?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
