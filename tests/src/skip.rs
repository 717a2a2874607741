//! Runtime skips. Rust's test harness has no "skipped" outcome: a test
//! that finds the machine unsuitable (no local RabbitMQ to cut off, no
//! `pg_ctlcluster`) can only return, and would be counted as passed. It
//! calls [`skip`] first, which appends one line to the file named by
//! `LLMQ_TEST_SKIPS` (set by `scripts/test.sh`):
//!
//! ```text
//! llmq-test-skipped: <test name>: <reason>
//! ```
//!
//! and `scripts/test.sh` moves those tests from "passed" to "skipped" in
//! its closing totals, printing each reason. Under `CI=true` a skip is a
//! failure instead (unless `LLMQ_TEST_ALLOW_SKIPS=1`): CI is where every
//! guarantee must be proven, and its machine is set up to run every test.

use std::io::Write as _;
use std::path::Path;

/// The prefix of a skip line, which `scripts/test.sh` looks for.
pub const MARKER: &str = "llmq-test-skipped:";

/// Records that the calling test did not run, for `reason`; the test
/// returns right after. Panics (fails the test) under `CI=true`.
pub fn skip(reason: &str) {
    let test = current_test();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let allowed = std::env::var("LLMQ_TEST_ALLOW_SKIPS").is_ok_and(|v| v == "1");
    if ci && !allowed {
        panic!("{test} cannot run on this machine ({reason}); under CI=true that is a failure (LLMQ_TEST_ALLOW_SKIPS=1 allows it)");
    }
    let line = skip_line(&test, reason);
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("LLMQ_TEST_SKIPS") {
        if let Err(e) = append_line(Path::new(&path), &line) {
            // The totals would then count the test as passed: fail instead.
            panic!(
                "recording the skip of {test} in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// The harness runs each test on a thread named after it; `#[tokio::test]`
/// polls the test's body on that thread.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test thread>")
        .to_string()
}

/// One line, whatever the reason contains.
pub fn skip_line(test: &str, reason: &str) -> String {
    let reason = reason.replace(['\n', '\r'], " ");
    format!("{MARKER} {test}: {reason}")
}

/// Appends `line` in one write, so concurrent tests do not interleave.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_skip_line_names_the_test_and_keeps_to_one_line() {
        assert_eq!(
            skip_line("chaos::x::y", "needs\npg_ctlcluster"),
            "llmq-test-skipped: chaos::x::y: needs pg_ctlcluster"
        );
    }

    #[test]
    fn the_current_test_is_named_after_its_thread() {
        assert_eq!(
            current_test(),
            "skip::tests::the_current_test_is_named_after_its_thread"
        );
    }

    /// `scripts/test.sh` with a stand-in for cargo that prints two test
    /// binaries' results and records one skip: the skipped test leaves
    /// "passed", joins "skipped" with the ignored one, and its reason is
    /// printed; the script keeps cargo's exit status.
    #[test]
    fn the_totals_line_counts_a_recorded_skip_as_skipped() {
        let dir = std::env::temp_dir().join(format!("llmq-skip-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake_cargo = dir.join("cargo");
        std::fs::write(
            &fake_cargo,
            r#"#!/usr/bin/env bash
echo "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s"
echo "llmq-test-skipped: chaos::a::b: needs rabbitmqctl" >> "$LLMQ_TEST_SKIPS"
echo "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s"
exit 101
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake_cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("CARGO", &fake_cargo)
            .env_remove("LLMQ_TEST_SKIPS")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(101), "{stdout}");
        assert!(
            stdout.contains("skipped: chaos::a::b: needs rabbitmqctl"),
            "{stdout}"
        );
        assert_eq!(
            stdout.lines().last(),
            Some("tests: 4 passed, 1 failed, 2 skipped"),
            "{stdout}"
        );
    }
}
