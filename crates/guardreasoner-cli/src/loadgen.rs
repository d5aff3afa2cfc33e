//! A bounded load generator for `guardreasoner serve`: a fixed number of requests at fixed
//! concurrency levels, with a time limit, against a loopback address only.

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct LoadgenArgs {
    /// The server, e.g. http://127.0.0.1:8080 (loopback addresses only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrency levels to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Requests per level.
    #[arg(long, default_value_t = 32)]
    requests: usize,
    /// Stop a level after this many seconds (requests still running are counted as timed out).
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Endpoint to load: guard (POST /v1/guard) or completions (POST /v1/completions).
    #[arg(long, default_value = "guard")]
    endpoint: String,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: u32,
    /// Bearer key, if the server needs one.
    #[arg(long, env = "GUARDREASONER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Default)]
struct Level {
    ok: usize,
    rejected_429: usize,
    failed: usize,
    timed_out: usize,
    latencies: Vec<f64>,
    tokens: u64,
    wall: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn is_loopback(url: &str) -> bool {
    let rest = url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]")
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if !is_loopback(&args.url) {
        bail!(
            "loadgen only targets loopback addresses (127.0.0.0/8, localhost, [::1]); got {}",
            args.url
        );
    }
    let (path, body) = match args.endpoint.as_str() {
        "guard" => (
            "/v1/guard",
            json!({"prompt": "How do I reset a forgotten router password?", "response": "Hold the reset button for 30 seconds.", "max_new_tokens": args.max_new_tokens, "include_reasoning": false}),
        ),
        "completions" => (
            "/v1/completions",
            json!({"prompt": "Write a short story about a lighthouse.", "max_tokens": args.max_new_tokens, "temperature": 0}),
        ),
        other => bail!("unknown endpoint {other:?} (guard or completions)"),
    };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(args.time_limit)).build()?;
        let health = format!("{}/health", args.url.trim_end_matches('/'));
        // Wait for the model to load (health answers 503 until then).
        let deadline = Instant::now() + Duration::from_secs(args.time_limit);
        loop {
            match client.get(&health).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() > deadline => bail!("{health} did not become healthy within {}s", args.time_limit),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        println!("| concurrency | requests | ok | 429 | failed | timed out | req/s | tok/s | p50 s | p95 s | p99 s |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &concurrency in &args.concurrency {
            let level = run_level(&client, &url, &body, concurrency.max(1), args.requests, args.api_key.as_deref(), Duration::from_secs(args.time_limit)).await;
            let mut l = level.latencies.clone();
            l.sort_by(f64::total_cmp);
            println!(
                "| {concurrency} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} |",
                args.requests, level.ok, level.rejected_429, level.failed, level.timed_out,
                level.ok as f64 / level.wall, level.tokens as f64 / level.wall,
                percentile(&l, 0.5), percentile(&l, 0.95), percentile(&l, 0.99)
            );
        }
        let health = client.get(&health).send().await.context("health check after the load")?;
        println!("health after load: HTTP {}", health.status().as_u16());
        anyhow::Ok(())
    })
}

async fn run_level(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    concurrency: usize,
    requests: usize,
    key: Option<&str>,
    limit: Duration,
) -> Level {
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let level = tokio::sync::Mutex::new(Level::default());
    let worker = || async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                level.lock().await.timed_out += 1;
                continue;
            }
            let mut req = client.post(url).json(body).timeout(left);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let t = Instant::now();
            let result = req.send().await;
            let mut l = level.lock().await;
            match result {
                Ok(r) if r.status().as_u16() == 429 => l.rejected_429 += 1,
                Ok(r) if r.status().is_success() => {
                    drop(l);
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0)
                        + v["results"].as_array().map_or(0, |a| {
                            a.iter()
                                .map(|r| r["usage"]["completion_tokens"].as_u64().unwrap_or(0))
                                .sum()
                        });
                    let mut l = level.lock().await;
                    l.ok += 1;
                    l.tokens += tokens;
                    l.latencies.push(t.elapsed().as_secs_f64());
                }
                Ok(_) => l.failed += 1,
                Err(e) if e.is_timeout() => l.timed_out += 1,
                Err(_) => l.failed += 1,
            }
        }
    };
    futures_util::future::join_all((0..concurrency).map(|_| worker())).await;
    let mut l = level.into_inner();
    l.wall = start.elapsed().as_secs_f64();
    l
}
