//! `guardreasoner serve --endpoint`: our guard API in front of another OpenAI-compatible
//! server, tested with a real `serve` process (the embedded model) as the upstream.

mod common;

use common::{serve, BIN};
use serde_json::{json, Value};
use std::process::Command;

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_api_in_front_of_another_server() {
    let model = guardreasoner_testing::test_model().expect("these tests need the default model");
    let model = model.to_str().unwrap();
    let upstream_key = "upstream-key-42";
    let (_upstream, upstream) = serve(
        &["--threads", "2", "--model", model, "--served-model", "smol"],
        &[("GUARDREASONER_API_KEY", upstream_key)],
    )
    .await;
    let (_front, front) = serve(
        &["--endpoint", &upstream, "--served-model", "smol"],
        &[("OPENAI_API_KEY", upstream_key)],
    )
    .await;
    let client = reqwest::Client::new();

    // A verdict through the front equals what the upstream generates for the guard prompt.
    let (status, verdict) = post(
        &client,
        &format!("{front}/v1/guard"),
        json!({"prompt": "How do I bake bread?", "max_new_tokens": 24}),
    )
    .await;
    assert_eq!(status, 200, "{verdict}");
    let result = &verdict["results"][0];
    let prompt = guardreasoner_core::build_guard_prompt("How do I bake bread?", None);
    let direct = client
        .post(format!("{upstream}/v1/completions"))
        .bearer_auth(upstream_key)
        .json(&json!({"model": "smol", "prompt": prompt, "max_tokens": 24, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let text = result["text"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "{verdict}");
    assert_eq!(text, direct["choices"][0]["text"], "{verdict}");
    assert_eq!(
        result["scores"],
        Value::Null,
        "a remote endpoint gives no scores"
    );
    // The untrained base model does not answer in 24 tokens: no verdict, flagged.
    if result["parse"]["status"] != "ok" {
        assert_eq!(result["flagged"], true, "fail closed: {result}");
    }

    // What needs label scores is refused with a 400 that says why, and counted.
    for body in [
        json!({"prompt": "hi", "reasoning": "auto"}),
        json!({"prompt": "hi", "threshold": 0.5}),
        json!({"prompt": "hi", "max_reasoning_tokens": 8, "max_new_tokens": 32}),
    ] {
        let (status, error) = post(&client, &format!("{front}/v1/guard"), body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("reasoning") || message.contains("threshold"),
            "{body}: {message}"
        );
    }
    let metrics = client
        .get(format!("{front}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("guardreasoner_request_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(refused >= 3, "{metrics}");

    // The OpenAI-compatible routes pass through, streamed or not.
    let chat = json!({"model": "smol", "messages": [{"role": "user", "content": "Say hello."}],
                      "max_tokens": 12, "temperature": 0});
    let (status, whole) = post(
        &client,
        &format!("{front}/v1/chat/completions"),
        chat.clone(),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let response = client
        .post(format!("{front}/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let joined: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"].is_string()));
}

#[test]
fn what_an_endpoint_cannot_do_is_refused_at_start() {
    for (extra, needle) in [
        (&["--reasoning", "auto"][..], "--reasoning auto"),
        (&["--threshold", "0.5"][..], "--threshold"),
        (&["--prompt-lookup", "4"][..], "--prompt-lookup"),
        (&["--model", "default"][..], "not both"),
    ] {
        let o = Command::new(BIN)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--endpoint",
                "http://127.0.0.1:9",
            ])
            .args(extra)
            .env_remove("GUARDREASONER_MODEL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}
