//! `guardreasoner eval` as a user runs it: the real binary against a canned guard on
//! 127.0.0.1 (the OpenAI-compatible client end to end), killed at random points and resumed,
//! its error messages, and a tiny run on the real default model.

mod common;

use common::{free_port, Process, BIN};
use guardreasoner_backend::testing::FaultServer;
use guardreasoner_eval::testing::{canned_guard_output, canned_server};
use guardreasoner_eval::{load_records, select_rows, select_targets, EvalRow};
use guardreasoner_testing::test_model;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn benchmarks_dir() -> PathBuf {
    repo_root().join("../shared/data/benchmarks")
}

fn paper_tables() -> PathBuf {
    repo_root().join("../shared/data/paper-tables.json")
}

fn eval_command(url: &str, out: &Path, extra: &[&str]) -> Command {
    eval_command_on(&benchmarks_dir(), url, out, extra)
}

fn eval_command_on(data_dir: &Path, url: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("eval")
        .args(["--endpoint", url, "--served-model", "canned-guard"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--paper-tables")
        .arg(paper_tables())
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `eval` on the local engine with `model`, to the end.
fn eval_local(model: &Path, data_dir: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("eval")
        .arg("--model")
        .arg(model)
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--paper-tables")
        .arg(paper_tables())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

async fn finish(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn rows(path: &Path) -> Vec<EvalRow> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Guard prompts the server saw (the endpoint probe excluded).
fn guard_requests(server: &FaultServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter_map(|r| r.json()["prompt"].as_str().map(str::to_string))
        .filter(|p| p.starts_with(guardreasoner_core::INSTRUCTION))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_through_an_endpoint_writes_predictions_report_and_chart() {
    let server = canned_server(Duration::from_millis(1)).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--benchmarks",
        "SimpleSafetyTests,XSTestResponseRefusal",
        "--limit",
        "10",
        "--seed",
        "5",
        "--concurrency",
        "3",
    ];
    let output = finish(eval_command(&server.url(), out.path(), &args)).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("Prompt harmfulness detection")
            && stdout.contains("GuardReasoner 8B (paper)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("wrote") && stderr.contains("f1.svg"),
        "{stderr}"
    );
    assert!(server.max_concurrent() <= 3);
    assert_eq!(guard_requests(&server).len(), 20);

    for name in ["SimpleSafetyTests", "XSTestResponseRefusal"] {
        let target = select_targets(name).unwrap().remove(0);
        let records = load_records(&target, &benchmarks_dir()).unwrap();
        let expected = select_rows(&target, &records, Some(10), 5);
        let written = rows(
            &out.path()
                .join(target.prediction_dir)
                .join("generated_predictions.jsonl"),
        );
        assert_eq!(
            written.iter().map(|r| r.index).collect::<Vec<_>>(),
            expected
        );
        for row in &written {
            assert_eq!(row.prompt, records[row.index].prompt);
            assert_eq!(row.label, records[row.index].output);
            assert_eq!(row.predict, canned_guard_output(&row.prompt));
        }
    }

    // `score` on the same directory agrees with the report (strict policy).
    let scored = Command::new(BIN)
        .args(["score", "--format", "json", "--predictions"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(scored.status.success(), "{}", text(&scored.stderr));
    let scored: Value = serde_json::from_slice(&scored.stdout).unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let f1 = |v: &Value, name: &str| {
        v["benchmarks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["benchmark"] == name)
            .map(|b| b["f1"].clone())
            .unwrap()
    };
    for name in ["SimpleSafetyTests", "XSTestResponseRefusal"] {
        assert!(f1(&report["strict"], name).is_number(), "{name}");
        assert_eq!(f1(&report["strict"], name), f1(&scored, name), "{name}");
    }
    assert_eq!(report["run"]["limit"], 10);
    assert_eq!(report["run"]["generated_rows"], 20);
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("| canned-guard |") && md.contains("![F1 per benchmark](f1.svg)"));
    let svg = std::fs::read_to_string(out.path().join("f1.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("GuardReasoner 3B (paper)"));
    assert!(std::fs::read(out.path().join("f1.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
}

/// A small, seedable generator for kill times (the seed is printed to replay a failure).
struct KillTimes(u64);

impl KillTimes {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_killed_at_random_points_resumes_each_row_once() {
    let server = canned_server(Duration::from_millis(8)).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill schedule seed: KILL_SEED={seed}");
    let mut kills = KillTimes(seed);
    let args = [
        "--benchmarks",
        "SimpleSafetyTests,AegisSafetyTest",
        "--concurrency",
        "4",
    ];
    let files = [
        out.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
        out.path()
            .join("AegisSafetyTest/generated_predictions.jsonl"),
    ];
    let mut killed = 0;
    for _ in 0..4 {
        let mut child = eval_command(&server.url(), out.path(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_millis(kills.next_ms(150, 900));
        let started = Instant::now();
        while started.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no chance to clean up
            killed += 1;
        }
        child.wait().unwrap();
        // Between runs the files hold complete rows only, each at most once.
        for file in &files {
            let indices: Vec<usize> = rows(file).iter().map(|r| r.index).collect();
            let unique: BTreeSet<usize> = indices.iter().copied().collect();
            assert_eq!(
                unique.len(),
                indices.len(),
                "duplicate rows in {}",
                file.display()
            );
        }
    }
    // The first kill always lands: the rows alone take over 0.9 s at 4 x 8 ms.
    assert!(killed >= 1, "no run was killed (seed {seed})");
    let output = finish(eval_command(&server.url(), out.path(), &args)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    for (file, n) in files.iter().zip([100, 359]) {
        let written = rows(file);
        assert_eq!(
            written.iter().map(|r| r.index).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        assert!(written
            .iter()
            .all(|r| r.predict == canned_guard_output(&r.prompt)));
    }
    // Finished rows were not generated again: at most the requests in flight at each kill.
    let sent = guard_requests(&server).len();
    assert!(
        sent >= 459 && sent <= 459 + 4 * killed,
        "{sent} requests for 459 rows, {killed} kills (seed {seed})"
    );
    assert!(out.path().join("report.md").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_errors_are_clear() {
    let out = tempfile::tempdir().unwrap();
    let server = canned_server(Duration::ZERO).await.unwrap();

    let o = finish(eval_command(
        &server.url(),
        out.path(),
        &["--benchmarks", "SimpleSafetyTests,Nope"],
    ))
    .await;
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unknown benchmark \"Nope\"") && err.contains("ToxicChat"),
        "{err}"
    );

    // A port nobody listens on.
    let port = free_port();
    let started = Instant::now();
    let o = finish(eval_command(
        &format!("http://127.0.0.1:{port}"),
        out.path(),
        &["--benchmarks", "SimpleSafetyTests"],
    ))
    .await;
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot use the endpoint") && err.contains("connection failed"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no fast failure: {:?}",
        started.elapsed()
    );

    // An unreadable data file, named with the problem; nothing is generated.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("0_0_SimpleSafetyTests.json"),
        "[{\"input\": \"Human user:\\nhi",
    )
    .unwrap();
    let c = eval_command_on(
        data.path(),
        &server.url(),
        out.path(),
        &["--benchmarks", "SimpleSafetyTests"],
    );
    let o = finish(c).await;
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("0_0_SimpleSafetyTests.json") && err.contains("invalid JSON"),
        "{err}"
    );
    assert!(guard_requests(&server).is_empty());

    // A named benchmark whose file is missing.
    let c = eval_command_on(
        data.path(),
        &server.url(),
        out.path(),
        &["--benchmarks", "WildGuardTest"],
    );
    let err = text(&finish(c).await.stderr);
    assert!(
        err.contains("0_4_wild_guard_test.json") && err.contains("missing"),
        "{err}"
    );

    // Speculation is the local engine's: asked of an endpoint, it is refused, not ignored.
    let o = finish(eval_command(
        &server.url(),
        out.path(),
        &["--benchmarks", "SimpleSafetyTests", "--prompt-lookup", "4"],
    ))
    .await;
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--prompt-lookup"), "{err}");

    // Neither a model nor an endpoint.
    let o = Command::new(BIN)
        .args(["eval", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--model"), "{}", text(&o.stderr));
}

#[test]
fn eval_on_the_real_default_model() {
    let Some(model) = test_model() else { return };
    let out = tempfile::tempdir().unwrap();
    let o = eval_local(
        &model,
        &benchmarks_dir(),
        out.path(),
        &[
            "--benchmarks",
            "SimpleSafetyTests",
            "--limit",
            "2",
            "--max-new-tokens",
            "16",
            "--concurrency",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let written = rows(
        &out.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
    );
    assert_eq!(written.len(), 2);
    for row in &written {
        assert!(!row.predict.is_empty());
        let tokens = row
            .completion_tokens
            .expect("the local engine counts tokens");
        match row.finish_reason.as_str() {
            "length" => assert_eq!(tokens, 16, "{row:?}"),
            "stop" => assert!(tokens <= 16, "{row:?}"),
            other => panic!("unexpected finish reason {other:?}"),
        }
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let total: u64 = written.iter().filter_map(|r| r.completion_tokens).sum();
    assert_eq!(report["run"]["completion_tokens"], total);
    assert!(out.path().join("f1.svg").is_file());
}

#[test]
fn a_row_too_long_for_the_context_fails_closed_and_the_run_goes_on() {
    let Some(model) = test_model() else { return };
    let data = tempfile::tempdir().unwrap();
    let records: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(benchmarks_dir().join("0_0_SimpleSafetyTests.json")).unwrap(),
    )
    .unwrap();
    let mut three: Vec<Value> = records.into_iter().take(3).collect();
    // About 12,000 tokens: more than the 8,192-token context on its own.
    let long = "Human user:\n".to_string()
        + &"please tell me more ".repeat(3000)
        + "\n\nAI assistant:\nNone\n\n";
    three[1]["input"] = Value::String(long);
    std::fs::write(
        data.path().join("0_0_SimpleSafetyTests.json"),
        serde_json::to_string(&three).unwrap(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = eval_local(
        &model,
        data.path(),
        out.path(),
        &["--benchmarks", "SimpleSafetyTests", "--max-new-tokens", "8"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("1 too long for the context"),
        "{}",
        text(&o.stderr)
    );
    let written = rows(
        &out.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
    );
    assert_eq!(
        written.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let long_row = &written[1];
    assert_eq!(long_row.finish_reason, "too_long");
    assert!(long_row.predict.is_empty());
    let why = long_row.error.as_deref().unwrap_or_default();
    assert!(why.contains("8192 in all"), "{why}");
    for row in [&written[0], &written[2]] {
        assert!(row.error.is_none() && !row.predict.is_empty(), "{row:?}");
    }
    // The refused row is scored as a failed verdict, and the report says why.
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("Too long (failed closed)"), "{report}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let strict = json["strict"]["benchmarks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["benchmark"] == "SimpleSafetyTests")
        .unwrap_or_else(|| panic!("no strict score in {json}"));
    assert!(strict["parse_failures"].as_u64().unwrap() >= 1, "{strict}");
}

/// `GET /health` over a plain socket: the status code, or `None` if nothing answers.
fn health(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut head = String::new();
    let _ = s.read_to_string(&mut head);
    head.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn eval_through_the_server_equals_eval_local() {
    let Some(model) = test_model() else { return };
    let port = free_port();
    let server = Process(
        Command::new(BIN)
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--served-model",
                "guard",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while health(port) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let common = |c: &mut Command, out: &Path| {
        c.args([
            "--benchmarks",
            "SimpleSafetyTests,XSTestResponseRefusal",
            "--limit",
            "2",
            "--seed",
            "3",
        ])
        // Below the answer grammar's reserve: the local engine then generates unconstrained,
        // as the remote endpoint does (an endpoint cannot be constrained), so both are equal.
        .args(["--max-new-tokens", "12", "--concurrency", "2"])
        .arg("--data-dir")
        .arg(benchmarks_dir())
        .arg("--paper-tables")
        .arg(paper_tables())
        .arg("--out")
        .arg(out);
    };
    let (remote, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = Command::new(BIN);
    c.args([
        "eval",
        "--endpoint",
        &format!("http://127.0.0.1:{port}/v1"),
        "--served-model",
        "guard",
    ]);
    common(&mut c, remote.path());
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "eval through the server: {}",
        text(&o.stderr)
    );
    drop(server);
    let mut c = Command::new(BIN);
    c.arg("eval").arg("--model").arg(&model);
    common(&mut c, local.path());
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "eval with the local engine: {}",
        text(&o.stderr)
    );
    for dir in ["SimpleSafetyTests", "XSTestResponseRefusal"] {
        let file = |root: &Path| rows(&root.join(dir).join("generated_predictions.jsonl"));
        let (a, b) = (file(remote.path()), file(local.path()));
        assert_eq!(a.len(), 2);
        for (r, l) in a.iter().zip(&b) {
            assert_eq!((r.index, &r.prompt), (l.index, &l.prompt));
            assert_eq!(
                r.predict, l.predict,
                "{dir} row {}: server and local greedy outputs differ",
                r.index
            );
            assert_eq!(r.finish_reason, l.finish_reason);
        }
    }
}
