//! TLS material for tests: a CA and a server certificate made with openssl (Debian's).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`:
/// returns (the CA's PEM, the server's key and certificate chain in one PEM file).
pub fn certificates(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
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
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
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
