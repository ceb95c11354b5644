//! The contract with Prometheus, shared by the driver and the executors: a `/metrics` endpoint
//! over HTTP serving one process's registry, and the proportional set size of a process.

use std::net::SocketAddr;

use prometheus::{Encoder, Registry, TextEncoder};

/// The registry in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Binds `listen` and serves `GET /metrics` from `registry` until the runtime ends. Returns the
/// bound address (`listen` may have port 0).
pub async fn serve_metrics(listen: &str, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&registry);
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

/// The proportional set size of process `pid` in bytes, from `/proc/PID/smaps_rollup`: its
/// private memory plus its share of pages shared with other processes.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pss_is_read() {
        let pss = pss_bytes(std::process::id()).expect("smaps_rollup is readable");
        assert!(pss > 1024 * 1024, "a test process uses more than 1 MiB: {pss}");
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("embedstream_test_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let addr = serve_metrics("127.0.0.1:0", registry).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("embedstream_test_total 7"), "{body}");
    }
}
