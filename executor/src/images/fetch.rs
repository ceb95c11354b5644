//! Images by URL, as `[fetch]` says: HTTP and HTTPS GETs with at most `concurrency` in flight
//! per executor, connect and total timeouts, a size limit (the Content-Length, then the bytes as
//! they stream), a redirect limit, retries with a doubling backoff for transient failures (a
//! connection error, a timeout, HTTP 429 and 5xx), and a Content-Type check.
//!
//! URLs come from records, which anyone who can produce to the topic writes: a URL must not
//! reach the executor's own network. The host is resolved here and every address connected to
//! is checked ([`FetchSpec::may_fetch_from`]): loopback, private, link-local and shared
//! addresses are refused unless `fetch.allow` lists them, on the first request and on every
//! redirect, and a name that resolves to an internal address is refused as its literal is.
//!
//! Each fetch is counted in [`FetchMetrics`]: fetched, bytes, time, failures by reason.
//!
//! One connection per request (HTTP/1.1, no pool): image hosts are many and records name each
//! image once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use embedstream_core::spec::image::FetchSpec;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::metrics::FetchMetrics;

/// Why an image could not be fetched: a dead letter's reason ([`std::fmt::Display`]) and a
/// metric's label ([`FetchError::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("image URL `{url}` is not an http(s) URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("image URL `{url}`: {host} is {addr}, an internal address (fetch.allow does not list it)")]
    Refused { url: String, host: String, addr: IpAddr },
    #[error("image URL `{url}`: cannot connect: {why}")]
    Connect { url: String, why: String },
    #[error("image URL `{url}`: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("image URL `{url}`: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("image URL `{url}`: over fetch.max_bytes = {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("image URL `{url}`: more than fetch.max_redirects = {limit} redirects")]
    Redirects { url: String, limit: usize },
    #[error("image URL `{url}`: not an image (Content-Type {content_type})")]
    NotImage { url: String, content_type: String },
}

impl FetchError {
    /// The kind of failure, for `embedstream_image_fetch_failures_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "bad_url",
            FetchError::Refused { .. } => "refused_address",
            FetchError::Connect { .. } => "connect",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Status { .. } => "http_status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Redirects { .. } => "redirects",
            FetchError::NotImage { .. } => "not_an_image",
        }
    }

    /// Worth another attempt: the server or the network may answer next time. Still failing
    /// after `fetch.retry_window`, it fails the task (an outage), never a dead letter.
    pub fn transient(&self) -> bool {
        match self {
            FetchError::Connect { .. } | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An image's bytes and what fetching them took.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub attempts: u32,
    pub took: Duration,
}

pub struct Fetcher {
    spec: FetchSpec,
    permits: Semaphore,
    tls: TlsConnector,
    metrics: FetchMetrics,
}

impl Fetcher {
    /// The most pixels an image fetched here may have (`fetch.max_pixels`).
    pub fn max_pixels(&self) -> u64 {
        self.spec.max_pixels
    }

    /// A fetcher that counts what it does in `metrics`.
    pub fn new(spec: FetchSpec, metrics: FetchMetrics) -> Fetcher {
        let roots = embedstream_core::tls::outside_roots(None, "fetch").expect("the public CAs need no file");
        let config = embedstream_core::tls::client_config(roots);
        let permits = Semaphore::new(spec.concurrency);
        Fetcher { spec, permits, tls: TlsConnector::from(Arc::new(config)), metrics }
    }

    /// Fetches `url`, waiting for one of the `concurrency` permits first, retrying transient
    /// failures `retries` times.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let fetched = self.fetch_with_retries(url).await;
        match &fetched {
            Ok(f) => {
                self.metrics.fetched.inc();
                self.metrics.bytes.inc_by(f.bytes.len() as u64);
                self.metrics.seconds.observe(f.took.as_secs_f64());
            }
            Err(e) => self.metrics.failures.with_label_values(&[e.label()]).inc(),
        }
        fetched
    }

    async fn fetch_with_retries(&self, url: &str) -> Result<Fetched, FetchError> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        let started = Instant::now();
        let mut wait = self.spec.backoff.get();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(url).await {
                Ok(bytes) => return Ok(Fetched { bytes, attempts, took: started.elapsed() }),
                Err(e)
                    if e.transient()
                        && attempts <= self.spec.retries
                        && started.elapsed() + wait < self.spec.retry_window.get() =>
                {
                    tracing::debug!(%url, error = %e, attempt = attempts, "image fetch failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: the request and its redirects, within `timeout`.
    async fn attempt(&self, url: &str) -> Result<Bytes, FetchError> {
        let after = self.spec.timeout.get();
        match tokio::time::timeout(after, self.follow(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout { url: url.to_string(), after }),
        }
    }

    async fn follow(&self, url: &str) -> Result<Bytes, FetchError> {
        let mut uri = parse(url)?;
        for _ in 0..=self.spec.max_redirects {
            match self.get(url, &uri).await? {
                Answer::Body(bytes) => return Ok(bytes),
                Answer::Redirect(location) => uri = resolve(url, &uri, &location)?,
            }
        }
        Err(FetchError::Redirects { url: url.to_string(), limit: self.spec.max_redirects })
    }

    /// One GET of `uri` (`url` is the record's, for the errors).
    async fn get(&self, url: &str, uri: &Uri) -> Result<Answer, FetchError> {
        let host = uri.host().expect("parsed: has a host").trim_matches(['[', ']']).to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = self.connect(url, &host, port).await?;
        let connect_err = |e: &dyn std::fmt::Display| FetchError::Connect { url: url.to_string(), why: e.to_string() };
        let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, host_header(uri))
            .header(hyper::header::USER_AGENT, concat!("embedstream/", env!("CARGO_PKG_VERSION")))
            .header(hyper::header::ACCEPT, "image/*")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| connect_err(&e))?;
        let response = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| connect_err(&e))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| connect_err(&e))?;
            send(TokioIo::new(tls), request).await.map_err(|e| connect_err(&e))?
        } else {
            send(TokioIo::new(tcp), request).await.map_err(|e| connect_err(&e))?
        };
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok());
            return match location {
                Some(l) if status != StatusCode::NOT_MODIFIED => Ok(Answer::Redirect(l.to_string())),
                _ => Err(FetchError::Status { url: url.to_string(), status: status.as_u16() }),
            };
        }
        if !status.is_success() {
            return Err(FetchError::Status { url: url.to_string(), status: status.as_u16() });
        }
        if let Some(kind) = response.headers().get(hyper::header::CONTENT_TYPE) {
            let kind = kind.to_str().unwrap_or("(not text)").to_ascii_lowercase();
            if !(kind.starts_with("image/") || kind.starts_with("application/octet-stream")) {
                return Err(FetchError::NotImage { url: url.to_string(), content_type: kind });
            }
        }
        let limit = self.spec.max_bytes;
        let too_large = || FetchError::TooLarge { url: url.to_string(), limit };
        let declared =
            response.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        if declared.is_some_and(|n: u64| n > limit) {
            return Err(too_large());
        }
        let mut body = response.into_body();
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| connect_err(&e))?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() as u64 + data.len() as u64 > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(data);
            }
        }
        Ok(Answer::Body(bytes.into()))
    }

    /// A TCP connection to `host`, to an address the spec allows.
    async fn connect(&self, url: &str, host: &str, port: u16) -> Result<TcpStream, FetchError> {
        let connect_err = |why: String| FetchError::Connect { url: url.to_string(), why };
        let deadline = self.spec.connect_timeout.get();
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::time::timeout(deadline, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => return Err(connect_err(format!("cannot resolve {host}: {e}"))),
                Err(_) => return Err(connect_err(format!("resolving {host} took over {deadline:?}"))),
            },
        };
        let mut last = format!("{host} has no address");
        for addr in &addrs {
            if !self.spec.may_fetch_from(addr.ip()) {
                return Err(FetchError::Refused { url: url.to_string(), host: host.to_string(), addr: addr.ip() });
            }
        }
        for addr in addrs {
            match tokio::time::timeout(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no connection within {deadline:?}"),
            }
        }
        Err(connect_err(last))
    }
}

enum Answer {
    Body(Bytes),
    Redirect(String),
}

async fn send<T>(
    io: TokioIo<T>,
    request: Request<http_body_util::Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await
}

/// The `Host` header of `uri`: its host and port, never the user and password a URL may carry
/// before them (those are not sent anywhere).
fn host_header(uri: &Uri) -> String {
    let authority = uri.authority().expect("parsed: has a host").as_str();
    authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_string()
}

/// The record's URL as a request target: http or https, with a host.
fn parse(url: &str) -> Result<Uri, FetchError> {
    let bad = |why: &str| FetchError::BadUrl { url: url.to_string(), why: why.to_string() };
    let uri: Uri = url.trim().parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("scheme `{other}`"))),
        None => return Err(bad("no scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// A redirect's `Location`, absolute, or relative to the URI that answered it.
fn resolve(url: &str, base: &Uri, location: &str) -> Result<Uri, FetchError> {
    let has_scheme = location.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if has_scheme {
        return parse(location)
            .map_err(|_| FetchError::BadUrl { url: url.to_string(), why: format!("redirected to `{location}`") });
    }
    let origin = format!("{}://{}", base.scheme_str().unwrap_or("http"), base.authority().expect("parsed"));
    let path = match location {
        l if l.starts_with("//") => return resolve(url, base, &format!("{}:{l}", base.scheme_str().unwrap_or("http"))),
        l if l.starts_with('/') => l.to_string(),
        l => {
            let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{l}")
        }
    };
    parse(&format!("{origin}{}", without_dot_segments(&path)))
}

/// A path with its `.` and `..` segments applied (RFC 3986, 5.2.4), its query kept.
fn without_dot_segments(path: &str) -> String {
    let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." if i + 1 == segments.len() => {
                if *segment == ".." {
                    out.pop();
                }
                out.push("");
            }
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if let Some(q) = query {
        joined = format!("{joined}?{q}");
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_a_host_and_redirects_resolve() {
        assert!(parse("http://127.0.0.1:8080/a.png").is_ok());
        for (bad, why) in [("ftp://h/a.png", "scheme `ftp`"), ("/a.png", "no scheme"), ("not a url", "")] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(&e, FetchError::BadUrl { why: w, .. } if w.contains(why)), "{bad}: {e}");
        }
        let base: Uri = "http://h:1/img/a/b.png?x=1".parse().unwrap();
        let r = |l: &str| resolve("u", &base, l).unwrap().to_string();
        assert_eq!(r("https://other/c.png"), "https://other/c.png");
        assert_eq!(r("/c.png"), "http://h:1/c.png");
        assert_eq!(r("c.png"), "http://h:1/img/a/c.png");
        assert_eq!(r("//cdn/c.png"), "http://cdn/c.png");
        assert_eq!(r("../c.png?s=2"), "http://h:1/img/c.png?s=2");
        assert_eq!(r("./../../../c.png"), "http://h:1/c.png");
        assert!(resolve("u", &base, "gopher://x").is_err());
        assert_eq!(host_header(&"http://user:secret@h:8/a.png".parse().unwrap()), "h:8");
        assert_eq!(host_header(&base), "h:1");
    }

    #[test]
    fn only_connection_failures_timeouts_429_and_5xx_are_retried() {
        let url = String::new();
        assert!(FetchError::Status { url: url.clone(), status: 503 }.transient());
        assert!(FetchError::Status { url: url.clone(), status: 429 }.transient());
        assert!(!FetchError::Status { url: url.clone(), status: 404 }.transient());
        assert!(FetchError::Timeout { url: url.clone(), after: Duration::from_secs(1) }.transient());
        assert!(!FetchError::TooLarge { url, limit: 1 }.transient());
    }
}
