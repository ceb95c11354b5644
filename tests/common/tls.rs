//! TLS material for tests: a CA and a certificate made with openssl (Debian's), and an HTTPS
//! GET with rustls (the `/metrics` endpoints).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl in `dir`: returns
/// (the CA's PEM, the key and certificate chain in one PEM file).
pub fn certificates(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    certificates_for(dir, ca, &["127.0.0.1"])
}

/// As [`certificates`], for each of `ips` (one certificate serves them all; with no extended
/// key usage it is both a server's and a client's).
pub fn certificates_for(dir: &Path, ca: &str, ips: &[&str]) -> (PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let subject = format!("/CN={ca}");
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca_pem, "-days", "2", "-subj",
        &subject,
    ]);
    let (key, csr, crt) = (format!("{ca}-server.key"), format!("{ca}-server.csr"), format!("{ca}-server.crt"));
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    std::fs::write(dir.join("san.ext"), format!("subjectAltName={}\n", san.join(","))).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let chain = dir.join(format!("{ca}-server.pem"));
    let pem = std::fs::read_to_string(dir.join(&key)).unwrap() + &std::fs::read_to_string(dir.join(&crt)).unwrap();
    std::fs::write(&chain, pem).unwrap();
    (dir.join(ca_pem), chain)
}

/// `GET /metrics` from `addr` over TLS, trusting `ca` and presenting `identity` (a PEM holding
/// key and chain) when given: the whole answer, or the error that ended the exchange.
pub fn https_get(addr: &str, ca: &Path, identity: Option<&Path>) -> Result<String, String> {
    let host = addr.rsplit_once(':').unwrap().0;
    https_exchange(addr, "/metrics", ca, identity, host)
}

/// `GET path` from `addr` over TLS, trusting `ca` and checking that the server's certificate
/// names `server_name` (not the host called).
pub fn https_get_as(addr: &str, path: &str, ca: &Path, server_name: &str) -> Result<String, String> {
    https_exchange(addr, path, ca, None, server_name)
}

fn https_exchange(
    addr: &str,
    path: &str,
    ca: &Path,
    identity: Option<&Path>,
    server_name: &str,
) -> Result<String, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(pem).unwrap().map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(pem).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let exchange = async {
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
            let mut answer = String::new();
            tls.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(20), exchange).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    })
}

/// `GET /metrics` from `addr` in plaintext: the answer, or the error that ended the exchange.
pub fn http_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
