//! `GET /metrics` over HTTP for Prometheus (`--metrics-listen`): what the
//! engine's [`scrape`] renders, served by a minimal HTTP/1.x responder with a
//! bounded number of connections and a request timeout.

use memobuild_engine::metrics::scrape;
use memobuild_engine::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head the HTTP listener reads.
const MAX_REQUEST: usize = 8192;
/// A client gets this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once; more wait for their turn.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until the daemon stops. A minimal
/// HTTP/1.x responder: one request per connection, then close.
pub async fn serve_http(listener: tokio::net::TcpListener, engine: Arc<Engine>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &engine).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(slot);
        });
    }
}

async fn answer(mut conn: tokio::net::TcpStream, engine: &Arc<Engine>) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match scrape(engine).await {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            Err(e) => ("500 Internal Server Error", "text/plain", e.to_string()),
        },
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads up to the end of the request head; returns its first line.
async fn read_head(conn: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}
