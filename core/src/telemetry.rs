//! The contract with Prometheus, shared by the driver and the executors: a `/metrics` endpoint
//! over HTTP (HTTPS when the process has a certificate) serving one process's registry, and
//! the proportional set size of a process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{rustls, TlsAcceptor};

use crate::tls::Tls;

/// How long a client has to finish its TLS handshake with a `/metrics` endpoint.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The registry in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Binds `listen` and serves `GET /metrics` from `registry` until the runtime ends, over TLS
/// when `tls` has a certificate (and requiring a client certificate under mutual TLS). Returns
/// the bound address (`listen` may have port 0).
pub async fn serve_metrics(listen: &str, registry: Registry, tls: &Tls) -> std::io::Result<SocketAddr> {
    serve_metrics_with(listen, registry, tls, axum::Router::new()).await
}

/// As [`serve_metrics`], with `extra`'s routes beside `/metrics` (the driver's page).
pub async fn serve_metrics_with(
    listen: &str,
    registry: Registry,
    tls: &Tls,
    extra: axum::Router,
) -> std::io::Result<SocketAddr> {
    let app = extra.route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&registry);
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        }),
    );
    serve_router(listen, tls, app).await
}

/// Serves `app` on `listen` (over TLS when `tls` has a certificate) in a task of its own; the
/// address it listens on.
pub async fn serve_router(listen: &str, tls: &Tls, app: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    match tls.http_server_config() {
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, %addr, "HTTP endpoint stopped");
                }
            });
        }
        Some(config) => {
            let listener = TlsListener::new(listener, config);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, %addr, "HTTP endpoint stopped");
                }
            });
        }
    }
    Ok(addr)
}

/// TLS connections for axum: a task accepts TCP connections and runs each handshake in a task
/// of its own (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client delays no other;
/// connections whose handshake succeeded come out of `accept`.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = listener.local_addr().expect("a bound listener has an address");
        let (tx, ready) = mpsc::channel(16);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then accept again.
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics endpoint: TLS handshake refused"),
                        Err(_) => tracing::debug!(%peer, "metrics endpoint: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local, accepting }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The parent of process `pid`, from `/proc/PID/stat`, if it is alive. The command name in
/// parentheses may hold spaces and parentheses: the fields are read after the last `)` (state,
/// then the parent's pid).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
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
        let addr = serve_metrics("127.0.0.1:0", registry, &Tls::plaintext()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("embedstream_test_total 7"), "{body}");
    }
}
