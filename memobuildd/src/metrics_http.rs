//! `GET /metrics` over HTTP for Prometheus (`--metrics-listen`): what the
//! engine's [`scrape`] renders, served by hyper's HTTP/1 server with a
//! bounded number of connections, a request-head timeout and size limit, and
//! one request per connection.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use memobuild_engine::scrape;
use memobuild_engine::Engine;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Longest request head the HTTP listener reads (hyper's smallest buffer
/// limit); a longer one is answered `431`.
const MAX_REQUEST: usize = 8192;
/// A client gets this long to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once; more wait for their turn.
const MAX_CONNECTIONS: usize = 16;

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the daemon stops.
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
            let service = service_fn(move |request| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(answer(&request, &engine).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(slot);
        });
    }
}

/// The response to one request (hyper leaves the body out for `HEAD`).
async fn answer(request: &Request<Incoming>, engine: &Arc<Engine>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    };
    if request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match scrape(engine).await {
        Ok(metrics) => {
            let mut response = text(StatusCode::OK, metrics);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
