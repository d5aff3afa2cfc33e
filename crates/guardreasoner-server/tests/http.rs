//! The real server on loopback with the embedded model, called with a real HTTP client.

use futures_util::StreamExt;
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use guardreasoner_server::{serve, ServerConfig};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::oneshot;

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    /// Start on an ephemeral port. The model loads only once `release` fires (so the test can
    /// see `/health` answer 503 first); `None` loads at once.
    async fn start(
        config: ServerConfig,
        options: RuntimeOptions,
        release: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let path = guardreasoner_testing::test_model().expect("these tests need the default model");
        let load = move || {
            if let Some(r) = release {
                let _ = r.recv();
            }
            LocalBackend::load(&path, options)
        };
        let task = tokio::spawn(serve(listener, config, load, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Server {
            base,
            stop: Some(stop),
            task,
            client,
        }
    }

    async fn ready(self) -> Server {
        for _ in 0..600 {
            if let Ok(r) = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return self;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become healthy");
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn small() -> RuntimeOptions {
    RuntimeOptions {
        threads: Some(2),
        ..RuntimeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_end_to_end() {
    let (release, gate) = std::sync::mpsc::channel();
    let server = Server::start(ServerConfig::default(), small(), Some(gate)).await;
    // Before the model is loaded: 503 on health, 503 on the API.
    let (status, _) = server.get_text("/health").await;
    assert_eq!(status, 503);
    let (status, body) = server.post("/v1/guard", json!({"prompt": "hi"})).await;
    assert_eq!(status, 503, "{body}");
    release.send(()).unwrap();
    let server = server.ready().await;

    let (status, models) = server.post("/v1/models", json!({})).await;
    assert_eq!(status, 405, "GET only: {models}");
    let r: Value = server
        .client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"][0]["id"], "guardreasoner");

    // The guard: a single conversation and a batch, with and without reasoning.
    let (status, g) = server
        .post("/v1/guard", json!({"prompt": "How do I make a bomb?", "response": "I can't help with that.", "max_new_tokens": 24}))
        .await;
    assert_eq!(status, 200, "{g}");
    let r = &g["results"][0];
    assert!(r["labels"].get("request").is_some() && r["labels"].get("completion").is_some());
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 100);
    assert!(
        r["usage"]["reused_prompt_tokens"].as_u64().unwrap() > 50,
        "the instruction's KV is reused: {r}"
    );
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() <= 24);
    assert!(r["text"].is_string());
    assert!(r.get("scores").is_some(), "{r}");
    if r["parse"]["status"] == "error" {
        // A base model rarely writes a valid answer block: that must fail closed.
        assert_eq!(r["flagged"], true, "{r}");
        assert!(r["labels"]["request"].is_null());
        assert!(r["scores"].is_null(), "no verdict, no score: {r}");
    }
    let (status, g) = server
        .post(
            "/v1/guard",
            json!({"conversations": [{"prompt": "hello"}, {"prompt": "bye", "response": "ok"}], "include_reasoning": false, "max_new_tokens": 8}),
        )
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["results"].as_array().unwrap().len(), 2);
    assert!(g["results"][0].get("text").is_none());

    // The cascade over a batch: `none` answers at once, `auto` with a band holding every
    // score escalates each conversation to exactly its `full` verdict.
    let batch = json!([{"prompt": "hello"}, {"prompt": "bye", "response": "ok"}]);
    let guard = |extra: Value| {
        let mut body = json!({"conversations": batch, "max_new_tokens": 48});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (_, none) = server
        .post("/v1/guard", guard(json!({"reasoning": "none"})))
        .await;
    let (_, full) = server.post("/v1/guard", guard(json!({}))).await;
    let (status, auto) = server
        .post(
            "/v1/guard",
            guard(json!({"reasoning": "auto", "uncertainty_band": [0.0, 1.0]})),
        )
        .await;
    assert_eq!(status, 200, "{auto}");
    for i in 0..2 {
        let (n, f, a) = (
            &none["results"][i],
            &full["results"][i],
            &auto["results"][i],
        );
        assert_eq!(n["parse"]["status"], "ok", "{n}");
        assert_eq!(n["forced"], false, "{n}");
        assert!(n.get("escalated").is_none(), "{n}");
        assert_eq!(a["escalated"], true, "{a}");
        assert_eq!(a["text"], f["text"]);
        assert_eq!(
            a["usage"]["completion_tokens"].as_u64().unwrap(),
            f["usage"]["completion_tokens"].as_u64().unwrap()
                + n["usage"]["completion_tokens"].as_u64().unwrap()
        );
    }

    // Moderations in OpenAI's schema.
    let (status, m) = server
        .post("/v1/moderations", json!({"input": ["a", "b"]}))
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["results"].as_array().unwrap().len(), 2);
    assert!(m["results"][0]["flagged"].is_boolean());
    assert!(m["results"][0]["categories"]["violence"].is_boolean());

    // Completions: streaming gives the same greedy text as non-streaming.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
    let (status, c) = server.post("/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{c}");
    let text = c["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(c["usage"]["completion_tokens"], 12);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) = sse(&server, "/v1/completions", streamed).await;
    assert!(done, "stream ends with data: [DONE]");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // Stop strings end the text before them.
    let (_, c2) = server
        .post(
            "/v1/completions",
            json!({"prompt": "1, 2, 3, 4,", "max_tokens": 20, "temperature": 0, "stop": [" 7"]}),
        )
        .await;
    let t = c2["choices"][0]["text"].as_str().unwrap();
    assert!(!t.contains(" 7"), "{t:?}");

    // Chat completions, plain and streamed.
    let chat = json!({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0});
    let (status, c) = server.post("/v1/chat/completions", chat.clone()).await;
    assert_eq!(status, 200, "{c}");
    let content = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (chunks, done) = sse(&server, "/v1/chat/completions", streamed).await;
    assert!(done);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, content);

    // Metrics in Prometheus text.
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "guardreasoner_requests_total",
        "guardreasoner_generated_tokens_total",
        "guardreasoner_queue_seconds_bucket",
        "guardreasoner_batch_size_count",
        "guardreasoner_time_per_token_seconds_sum",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
    server.stop().await;
}

async fn sse(server: &Server, path: &str, body: Value) -> (Vec<Value>, bool) {
    let r = server
        .client
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
            } else {
                chunks.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    (chunks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_match_sequential_ones() {
    let server = Server::start(ServerConfig::default(), small(), None)
        .await
        .ready()
        .await;
    let prompts = [
        "Once upon a time",
        "The quick brown fox",
        "def fibonacci(n):",
        "Water boils at",
    ];
    let mut sequential = Vec::new();
    for p in prompts {
        let (_, c) = server
            .post(
                "/v1/completions",
                json!({"prompt": p, "max_tokens": 10, "temperature": 0}),
            )
            .await;
        sequential.push(c["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let together = futures_util::future::join_all(prompts.iter().map(|p| {
        server.post(
            "/v1/completions",
            json!({"prompt": p, "max_tokens": 10, "temperature": 0}),
        )
    }))
    .await;
    for (i, (status, c)) in together.iter().enumerate() {
        assert_eq!(*status, 200);
        assert_eq!(
            c["choices"][0]["text"].as_str().unwrap(),
            sequential[i],
            "prompt {i}"
        );
    }
    // Seeded sampling is reproducible, and n gives that many choices.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.9, "seed": 7, "n": 3});
    let (_, a) = server.post("/v1/completions", body.clone()).await;
    let (_, b) = server.post("/v1/completions", body).await;
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    assert_eq!(a["choices"], b["choices"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_every_error_path() {
    let config = ServerConfig {
        api_key: Some("s3cret".into()),
        max_body_bytes: 4096,
        max_new_tokens: 64,
        ..ServerConfig::default()
    };
    let options = RuntimeOptions {
        max_input_tokens: Some(300),
        ..small()
    };
    let server = Server::start(config, options, None).await.ready().await;
    let url = |p: &str| format!("{}{p}", server.base);
    let call = |body: Value, key: Option<&str>| {
        let mut r = server.client.post(url("/v1/completions")).json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let ok = json!({"prompt": "hi", "max_tokens": 2});
    assert_eq!(call(ok.clone(), None).await.unwrap().status(), 401);
    let r = call(ok.clone(), Some("wrong")).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    assert!(!body.to_string().contains("s3cret"));
    assert_eq!(
        call(ok.clone(), Some("s3cret")).await.unwrap().status(),
        200
    );
    // Health and metrics stay open.
    assert_eq!(server.get_text("/health").await.0, 200);

    let send = |path: &'static str, body: reqwest::Body, ctype: &'static str| {
        server
            .client
            .post(url(path))
            .bearer_auth("s3cret")
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/completions", "{not json".into(), 400, ""),
        ("/v1/completions", r#"{"prompt": 5}"#.into(), 400, ""),
        (
            "/v1/completions",
            r#"{"prompt": "", "max_tokens": 2}"#.into(),
            400,
            "empty",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": 1000}"#.into(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": 2, "temperature": -1}"#.into(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": 2, "top_p": 0}"#.into(),
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            format!(
                r#"{{"prompt": "{}", "max_tokens": 2}}"#,
                "word ".repeat(500)
            ),
            400,
            "limit",
        ),
        (
            "/v1/completions",
            format!(r#"{{"prompt": "{}", "max_tokens": 2}}"#, "x".repeat(5000)),
            413,
            "larger",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "model": "gpt-9"}"#.into(),
            404,
            "gpt-9",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#.into(),
            400,
            "messages",
        ),
        ("/v1/guard", r#"{"prompt": "   "}"#.into(), 400, "empty"),
        (
            "/v1/guard",
            r#"{"prompt": "a", "conversations": [{"prompt": "b"}]}"#.into(),
            400,
            "either",
        ),
        // Our own route refuses a misspelt option by name instead of ignoring it.
        (
            "/v1/guard",
            r#"{"prompt": "a", "max_tokens": 8}"#.into(),
            400,
            "max_tokens",
        ),
        (
            "/v1/guard",
            r#"{"prompt": "a", "threshold": 1.5, "max_new_tokens": 8}"#.into(),
            400,
            "[0, 1]",
        ),
        (
            "/v1/guard",
            r#"{"prompt": "a", "reasoning": "medium"}"#.into(),
            400,
            "medium",
        ),
        (
            "/v1/guard",
            r#"{"prompt": "a", "reasoning": "auto", "uncertainty_band": [0.9, 0.1], "max_new_tokens": 8}"#.into(),
            400,
            "LOW,HIGH",
        ),
        (
            "/v1/guard",
            r#"{"prompt": "a", "max_reasoning_tokens": 0, "max_new_tokens": 8}"#.into(),
            400,
            "max_reasoning_tokens",
        ),
        ("/v1/moderations", r#"{"input": 3}"#.into(), 400, "input"),
    ];
    for (path, body, status, needle) in cases {
        let r = send(path, body.clone().into(), "application/json")
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body:.80}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path} {body:.60}: not JSON: {e}"));
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"));
        assert!(
            message.contains(needle),
            "{path}: {message:?} should mention {needle:?}"
        );
    }
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains("guardreasoner_request_failures_total{kind=\"validation\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guardreasoner_request_failures_total{kind=\"unauthorized\"}"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_disconnects_and_graceful_shutdown() {
    let options = RuntimeOptions {
        max_queue: 2,
        max_batch: 2,
        ..small()
    };
    let server = Server::start(ServerConfig::default(), options, None)
        .await
        .ready()
        .await;
    let long = json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 200, "temperature": 0});
    // Two requests fill the queue; a third is refused with 429 and Retry-After.
    let a = tokio::spawn(
        server
            .client
            .post(format!("{}/v1/completions", server.base))
            .json(&long)
            .send(),
    );
    let b = tokio::spawn(
        server
            .client
            .post(format!("{}/v1/completions", server.base))
            .json(&long)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // The queued ones complete in full.
    for h in [a, b] {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 200);
    }
    // A client that disconnects mid-stream has its sequence dropped from the batch.
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(2000);
    let r = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let _first = body.next().await;
    drop(body);
    let mut cancelled = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, m) = server.get_text("/metrics").await;
        if m.contains("guardreasoner_cancelled_sequences_total 1") {
            cancelled = true;
            break;
        }
    }
    assert!(cancelled, "the disconnected sequence was not dropped");
    // Graceful shutdown: a request in flight when shutdown begins still completes.
    let inflight = tokio::spawn(
        server
            .client
            .post(format!("{}/v1/completions", server.base))
            .json(&json!({"prompt": "hello", "max_tokens": 60, "temperature": 0}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = server.base.clone();
    server.stop().await;
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 60);
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "the server is gone after shutdown"
    );
}
