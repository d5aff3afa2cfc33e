//! Helpers shared by the CLI's integration tests that start `guardreasoner serve`.
#![allow(dead_code)] // not every test binary that includes this module uses all of it

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_guardreasoner");

/// A child process, killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `guardreasoner serve` with `args` (and `env`) on a free port, once `/health` answers 200:
/// the process and its base URL.
pub async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Process, String) {
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .env_remove("GUARDREASONER_MODEL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let process = Process(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serve {args:?} did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, url)
}
