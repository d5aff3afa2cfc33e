//! The server's request log: one `tracing` event per request with its method, path and
//! status, caught here by a subscriber writing into memory (the binary's writes to stderr).
//! No model is needed: the model never finishes loading, so the request is answered 503.

use guardreasoner_server::{serve, ServerConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_with_its_status() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (release, loading) = std::sync::mpsc::channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let load = move || {
        let _ = loading.recv(); // never sent: the model stays "loading"
        Err::<guardreasoner_runtime::LocalBackend, _>("not loaded in this test".to_string())
    };
    let task = tokio::spawn(serve(listener, ServerConfig::default(), load, async {
        let _ = stopped.await;
    }));
    let status = reqwest::Client::new()
        .post(format!("{base}/v1/guard"))
        .json(&serde_json::json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains(r#"request method=POST path="/v1/guard" status=503"#),
        "{log}"
    );
    drop(release);
    let _ = stop.send(());
    let _ = task.await;
}
