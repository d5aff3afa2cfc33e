//! A fault-injecting HTTP/1.1 server on 127.0.0.1 for tests (feature `test-support`).
//!
//! Real sockets and a hand-written HTTP/1.1 exchange, so a test can make the server misbehave
//! in ways a framework would not allow: drop the connection, send half a body, hang, or send
//! garbage with a 200. Connections are kept alive between requests (as real servers do, so
//! the client's connection pool is exercised) and bodies can be sent chunked.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// 0-based arrival order.
    pub sequence: usize,
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether this is a chat-completions request.
    pub fn is_chat(&self) -> bool {
        self.path.ends_with("/chat/completions")
    }
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete HTTP response.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection without answering.
    Drop,
    /// Announce `Content-Length` of the full body, send half of it, close.
    Truncated { body: String },
    /// A 200 JSON body sent with `Transfer-Encoding: chunked`, in pieces of `chunk` bytes.
    Chunked { body: String, chunk: usize },
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::Http {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// A successful OpenAI reply carrying `text`, shaped for the request's endpoint.
    pub fn text_for(request: &RecordedRequest, text: &str) -> Reply {
        let body = if request.is_chat() {
            json!({
                "id": format!("chatcmpl-{}", request.sequence),
                "object": "chat.completion",
                "model": request.json()["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
            })
        } else {
            json!({
                "id": format!("cmpl-{}", request.sequence),
                "object": "text_completion",
                "model": request.json()["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
            })
        };
        Reply::json(200, &body)
    }

    /// 429 with a `Retry-After` header (seconds or an HTTP date).
    pub fn rate_limited(retry_after: &str) -> Reply {
        Reply::Http {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry_after.into()),
            ],
            body: json!({"error": {"message": "Rate limit reached", "type": "requests"}})
                .to_string(),
        }
    }

    pub fn server_error(status: u16) -> Reply {
        Reply::json(
            status,
            &json!({"error": {"message": "internal error", "type": "server_error"}}),
        )
    }

    /// A 200 whose body is not JSON.
    pub fn malformed() -> Reply {
        Reply::Http {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: "{\"choices\": [{\"text\": \"unterminated".into(),
        }
    }

    pub fn delayed(self, by: Duration) -> Reply {
        Reply::Delay(by, Box::new(self))
    }
}

type Handler = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

/// The server. Dropping it stops accepting connections.
pub struct FaultServer {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    accept_loop: JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl FaultServer {
    /// Start on an ephemeral port; `handler` decides each reply.
    pub async fn start(
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<FaultServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let sequence = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log2, active2, max2) = (log.clone(), active.clone(), max_active.clone());
        let connections2 = connections.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections2.fetch_add(1, Ordering::SeqCst);
                let (handler, log, active, max_active, sequence) = (
                    handler.clone(),
                    log2.clone(),
                    active2.clone(),
                    max2.clone(),
                    sequence.clone(),
                );
                tokio::spawn(async move {
                    let mut stream = stream;
                    // Keep the connection alive until a reply closes it or the client leaves.
                    while let Ok(true) = serve_one(
                        &mut stream,
                        &*handler,
                        &log,
                        &active,
                        &max_active,
                        &sequence,
                    )
                    .await
                    {}
                });
            }
        });
        Ok(FaultServer {
            addr,
            log,
            active,
            max_active,
            connections,
            accept_loop,
        })
    }

    /// Start a server that plays `script` in arrival order, then answers every later request
    /// with `then`.
    pub async fn scripted(
        script: Vec<Reply>,
        then: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<FaultServer> {
        FaultServer::start(move |r| match script.get(r.sequence) {
            Some(reply) => reply.clone(),
            None => then(r),
        })
        .await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The most requests that were being handled at the same moment.
    pub fn max_concurrent(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests being handled now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Decrements the active count when a request's handling ends, however it ends.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answer one request. `Ok(true)`: the connection stays open for the next one.
async fn serve_one(
    stream: &mut TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<RecordedRequest>>,
    active: &AtomicUsize,
    max_active: &AtomicUsize,
    sequence: &AtomicUsize,
) -> std::io::Result<bool> {
    let Some(mut request) = read_request(stream).await? else {
        return Ok(false);
    };
    let now_active = active.fetch_add(1, Ordering::SeqCst) + 1;
    let _active = Active(active);
    max_active.fetch_max(now_active, Ordering::SeqCst);
    request.sequence = sequence.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut l) = log.lock() {
        l.push(request.clone());
    }
    let keep_alive = !request
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut reply = handler(&request);
    loop {
        match reply {
            Reply::Delay(by, next) => {
                tokio::time::sleep(by).await;
                reply = *next;
            }
            Reply::Drop => return Ok(false),
            Reply::Truncated { body } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body.as_bytes()[..body.len() / 2]).await?;
                stream.flush().await?;
                return Ok(false);
            }
            Reply::Chunked { body, chunk } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                for piece in body.as_bytes().chunks(chunk.max(1)) {
                    stream
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    stream.write_all(piece).await?;
                    stream.write_all(b"\r\n").await?;
                    stream.flush().await?;
                }
                stream.write_all(b"0\r\n\r\n").await?;
                stream.flush().await?;
                return Ok(keep_alive);
            }
            Reply::Http {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (k, v) in &headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&format!(
                    "content-length: {}\r\nconnection: {connection}\r\n\r\n",
                    body.len()
                ));
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.flush().await?;
                return Ok(keep_alive);
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Read one request (headers and a `Content-Length` body). `None` if the peer closed first.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<RecordedRequest>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return Err(std::io::Error::other("headers over 1 MiB"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(RecordedRequest {
        sequence: 0,
        method,
        path,
        headers,
        body,
        received_at: Instant::now(),
    }))
}
