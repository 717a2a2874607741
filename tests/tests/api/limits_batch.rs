//! Batched admissions and settlements over the real Redis: one script
//! call admits each of its items on its own and in order (a limit admits
//! exactly its first k, a refusal takes nothing, keys and organisations
//! are counted apart), one settle call settles each reservation once even
//! when an execution appears twice, and concurrent `admit`s share script
//! calls and still admit exactly the limit.

use std::sync::Arc;

use futures::future::join_all;
use llmq_shared::config::{LimitSettings, OrgLimits};
use llmq_shared::execution::ExecutionId;
use llmq_shared::limits::{Admission, Estimate, LimitKind, Limiter, Subject};
use llmq_tests::PrivateRedis;

use super::limits::{get_int, limiter_under_test};

fn subject<'a>(tenant: &'a str, key_id: &'a str) -> Subject<'a> {
    Subject {
        tenant,
        key_id,
        user: None,
        model: "m",
    }
}

fn tokens(n: u64) -> Estimate {
    Estimate {
        tokens: n,
        spend_micros: 0,
    }
}

fn today() -> String {
    (chrono::Utc::now().timestamp_millis() / 86_400_000).to_string()
}

/// Which limit refused, or None when admitted.
fn refusal(a: &Admission) -> Option<(LimitKind, String)> {
    match a {
        Admission::Admitted { .. } => None,
        Admission::Refused { kind, limit, .. } => Some((*kind, limit.clone())),
        Admission::Unavailable { .. } => panic!("redis is up: {a:?}"),
    }
}

#[tokio::test]
async fn one_batch_admits_exactly_the_first_k_and_takes_nothing_for_the_rest() {
    let (settings, redis, limiter) = limiter_under_test(LimitSettings::default());
    let limits = OrgLimits {
        org_requests_per_minute: 5,
        tokens_per_day: 1_000_000,
        ..Default::default()
    };
    let ids: Vec<ExecutionId> = (0..8).map(|_| ExecutionId::new()).collect();
    let submits: Vec<_> = ids
        .iter()
        .map(|id| (*id, subject("org", "k"), &limits, tokens(100)))
        .collect();
    let before = chrono::Utc::now().timestamp_millis();
    let answers = limiter.admit_many(&submits).await;
    let after = chrono::Utc::now().timestamp_millis();

    assert_eq!(answers.len(), 8);
    for (i, answer) in answers.iter().enumerate() {
        if i < 5 {
            let Admission::Admitted { rates } = answer else {
                panic!("item {i} refused: {answer:?}");
            };
            // A burst of 5: each admission leaves one less.
            assert_eq!(rates[0].remaining, 4 - i as u64, "item {i}: {rates:?}");
        } else {
            assert_eq!(
                refusal(answer),
                Some((LimitKind::Requests, "org".to_string())),
                "item {i}"
            );
        }
    }
    // Five estimates charged, five reservations made, none for the rest.
    let window = redis.keys().key(&["w", "tokens_per_day", "org", &today()]);
    assert_eq!(get_int(&redis, "GET", &window).await, 500);
    for (i, id) in ids.iter().enumerate() {
        let reservation = redis.keys().key(&["res", &id.to_string()]);
        assert_eq!(
            get_int(&redis, "EXISTS", &reservation).await,
            (i < 5) as i64,
            "reservation of item {i}"
        );
    }
    // The GCRA holds five intervals (12 s each) past the batch's time: the
    // three refusals took nothing.
    let tat = get_int(&redis, "GET", &redis.keys().key(&["rl", "o", "org"])).await;
    assert!(
        (before + 60_000..=after + 60_000).contains(&tat),
        "{before} {tat} {after}"
    );
    llmq_tests::redis::delete_keys(&settings.redis_url, &settings.redis_prefix).await;
}

#[tokio::test]
async fn a_batch_mixing_keys_and_orgs_counts_each_apart_and_a_refusal_takes_nothing() {
    let (settings, redis, limiter) = limiter_under_test(LimitSettings::default());
    let a = OrgLimits {
        key_requests_per_minute: 2,
        tokens_per_day: 1000,
        ..Default::default()
    };
    let b = OrgLimits {
        org_requests_per_minute: 1,
        ..Default::default()
    };
    let none = OrgLimits::default();
    let submits = [
        (ExecutionId::new(), subject("a", "k1"), &a, tokens(600)),
        // Over the budget: refused, and k1's request is not taken.
        (ExecutionId::new(), subject("a", "k1"), &a, tokens(600)),
        (ExecutionId::new(), subject("b", "k3"), &b, tokens(600)),
        // No limit at all: admitted without being sent.
        (ExecutionId::new(), subject("c", "k5"), &none, tokens(600)),
        // k1's second request (the budget's refusal did not count).
        (ExecutionId::new(), subject("a", "k1"), &a, tokens(300)),
        (ExecutionId::new(), subject("a", "k1"), &a, tokens(10)),
        // Another key of the same organisation has its own limit.
        (ExecutionId::new(), subject("a", "k2"), &a, tokens(50)),
        (ExecutionId::new(), subject("b", "k4"), &b, tokens(1)),
    ];
    let answers = limiter.admit_many(&submits).await;
    let got: Vec<_> = answers.iter().map(refusal).collect();
    let requests = |l: &str| Some((LimitKind::Requests, l.to_string()));
    assert_eq!(
        got,
        vec![
            None,
            Some((LimitKind::Tokens, "tokens_per_day".to_string())),
            None,
            None,
            None,
            requests("key"),
            None,
            requests("org"),
        ]
    );
    assert!(matches!(&answers[3], Admission::Admitted { rates } if rates.is_empty()));
    let window = |org: &str| redis.keys().key(&["w", "tokens_per_day", org, &today()]);
    assert_eq!(get_int(&redis, "GET", &window("a")).await, 950);
    assert_eq!(get_int(&redis, "EXISTS", &window("b")).await, 0);
    // Only reserving admissions (a budget applies) leave a reservation.
    let reserved: Vec<i64> = {
        let mut v = Vec::new();
        for (id, ..) in &submits {
            let key = redis.keys().key(&["res", &id.to_string()]);
            v.push(get_int(&redis, "EXISTS", &key).await);
        }
        v
    };
    assert_eq!(reserved, vec![1, 0, 0, 0, 1, 0, 1, 0]);
    llmq_tests::redis::delete_keys(&settings.redis_url, &settings.redis_prefix).await;
}

#[tokio::test]
async fn a_settle_batch_settles_each_reservation_once_even_when_it_appears_twice() {
    let (settings, redis, limiter) = limiter_under_test(LimitSettings::default());
    let limits = OrgLimits {
        tokens_per_day: 10_000,
        spend_usd_per_day: 1.0,
        ..Default::default()
    };
    let estimate = Estimate {
        tokens: 600,
        spend_micros: 500,
    };
    let (first, second) = (ExecutionId::new(), ExecutionId::new());
    let answers = limiter
        .admit_many(&[
            (first, subject("org", "k"), &limits, estimate),
            (second, subject("org", "k"), &limits, estimate),
        ])
        .await;
    assert!(answers.iter().all(|a| refusal(a).is_none()), "{answers:?}");
    let tokens_window = redis.keys().key(&["w", "tokens_per_day", "org", &today()]);
    let spend_window = redis
        .keys()
        .key(&["w", "spend_usd_per_day", "org", &today()]);
    assert_eq!(get_int(&redis, "GET", &tokens_window).await, 1200);
    assert_eq!(get_int(&redis, "GET", &spend_window).await, 1000);

    // The first execution finished twice (a redelivery): settled once.
    let settled: Vec<bool> = limiter
        .settle_many(&[(first, 250, 100), (first, 250, 100), (second, 700, 600)])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(settled, vec![true, false, true]);
    assert_eq!(get_int(&redis, "GET", &tokens_window).await, 950);
    assert_eq!(get_int(&redis, "GET", &spend_window).await, 700);
    for id in [first, second] {
        let key = redis.keys().key(&["res", &id.to_string()]);
        assert_eq!(get_int(&redis, "EXISTS", &key).await, 0);
    }

    // Settling the batch again changes nothing; nor does one alone.
    let again: Vec<bool> = limiter
        .settle_many(&[(first, 1, 1), (second, 1, 1)])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(again, vec![false, false]);
    assert!(!limiter.settle(second, 1, 1).await.unwrap());
    assert_eq!(get_int(&redis, "GET", &tokens_window).await, 950);
    assert_eq!(get_int(&redis, "GET", &spend_window).await, 700);
    llmq_tests::redis::delete_keys(&settings.redis_url, &settings.redis_prefix).await;
}

/// `EVALSHA`/`EVAL` calls the server has run (from `INFO commandstats`).
async fn script_calls(url: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    ["evalsha", "eval"]
        .iter()
        .map(|name| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_share_script_calls_and_admit_exactly_the_limit() {
    // A private server, so that its script calls are this test's only.
    let private = PrivateRedis::start().await;
    let settings = llmq_shared::Settings {
        redis_url: private.url(),
        ..Default::default()
    };
    let redis = Arc::new(llmq_shared::redis::create_pool(&settings).unwrap());
    let limiter = Arc::new(Limiter::new(LimitSettings::default(), redis.clone()));
    let limits = OrgLimits {
        org_requests_per_minute: 20,
        tokens_per_minute: 1_000_000,
        ..Default::default()
    };
    let minute = || (chrono::Utc::now().timestamp_millis() / 60_000).to_string();
    let first_minute = minute();
    let before = script_calls(&private.url()).await;
    // 50 admissions queued at once: the first goes out alone, the rest
    // wait behind it and share the next calls.
    let answers = join_all((0..50).map(|_| {
        let (limiter, limits) = (limiter.clone(), limits.clone());
        async move {
            limiter
                .admit(
                    ExecutionId::new(),
                    &subject("org", "k"),
                    &limits,
                    tokens(10),
                )
                .await
        }
    }))
    .await;
    let calls = script_calls(&private.url()).await - before;
    let admitted = answers.iter().filter(|a| refusal(a).is_none()).count();
    assert_eq!(admitted, 20, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter_map(refusal)
            .all(|r| r == (LimitKind::Requests, "org".to_string())),
        "{answers:?}"
    );
    assert!(
        (1..=25).contains(&calls),
        "50 concurrent admissions took {calls} script calls"
    );
    // The 20 admitted estimates, in the minute's window (or the two
    // minutes' windows, should the minute have turned meanwhile).
    let mut minutes = vec![first_minute, minute()];
    minutes.dedup();
    let mut charged = 0;
    for m in &minutes {
        let window = redis.keys().key(&["w", "tokens_per_minute", "org", m]);
        charged += get_int(&redis, "GET", &window).await;
    }
    assert_eq!(charged, 200);
}
