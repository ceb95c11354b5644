//! TLS for every endpoint: where a process's certificate, key and CA are ([`TlsFiles`], the
//! same four settings as `--tls-*` flags and as `[security] tls_*` keys), read and checked once
//! at start into [`Tls`], which the gRPC servers and clients (`embedstream_proto::serve`) and
//! the `/metrics` endpoints ([`crate::telemetry`]) are built from.
//!
//! The rules, one for every process:
//! - A process with `tls_cert` and `tls_key` serves TLS on all its ports; without them, plaintext.
//! - A process with `tls_ca` calls its peers over TLS and accepts only a peer certificate that
//!   chains to that CA (and names the host it called); without it, plaintext.
//! - `tls_client_auth = true`: servers also require a client certificate that chains to the
//!   CA (mutual TLS); clients present their own `tls_cert`.
//! - Processes that both serve and call (driver, executors, resource manager, node agents)
//!   take all three files or none, so one cannot serve TLS while calling in clear.
//!
//! The key's bytes are never printed: [`Tls`]'s `Debug` says only which parts are set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the TLS files are. The binary's `--tls-*` flags; `[security]` converts to it.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain this process presents: as a server, and as a client under mutual TLS.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that peers must chain to; with it, calls go out over TLS.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Require a client certificate signed by --tls-ca from every caller (mutual TLS).
    #[arg(long)]
    pub tls_client_auth: bool,
    /// The name every peer's certificate holds, checked instead of the host called: one
    /// certificate for hosts not known in advance (a YARN application's containers).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// What a process does with TLS, which decides which files it needs together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves and calls (driver, executors, RM, node agents): cert, key and CA, or none.
    Peer,
    /// Only calls (the admin commands, `submit`, `embed`): CA for TLS; cert and key for mutual TLS.
    Client,
}

/// How the settings are named in errors: the job spec's keys or the command line's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Spec,
    Flags,
}

impl Naming {
    fn name(self, setting: &str) -> String {
        match self {
            Naming::Spec => format!("security.tls_{setting}"),
            Naming::Flags => format!("--tls-{}", setting.replace('_', "-")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {message}")]
    Setting { key: String, message: String },
    #[error("{key} {path}: {message}")]
    File { key: String, path: String, message: String },
}

/// The TLS a process serves and calls with, read and checked at start. Cheap to clone. The
/// default is plaintext.
#[derive(Clone, Default)]
pub struct Tls(Option<Arc<Material>>);

struct Material {
    /// PEM chain and key, when this process has a certificate.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// PEM CA certificates, when this process verifies its peers.
    ca: Option<Vec<u8>>,
    client_auth: bool,
    /// The name peers' certificates must hold, when not the host called.
    server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Tls(plaintext)"),
            Some(m) => write!(
                f,
                "Tls(certificate: {}, ca: {}, client_auth: {}, server_name: {:?})",
                m.identity.is_some(),
                m.ca.is_some(),
                m.client_auth,
                m.server_name
            ),
        }
    }
}

impl TlsFiles {
    /// Reads and checks the files for a process of `role`; errors name the setting and the file.
    pub fn load(&self, role: Role, naming: Naming) -> Result<Tls, TlsError> {
        let setting = |name: &str, message: &str| TlsError::Setting { key: naming.name(name), message: message.into() };
        let (cert, key, ca) = (&self.tls_cert, &self.tls_key, &self.tls_ca);
        if cert.is_none() && key.is_none() && ca.is_none() {
            if self.tls_server_name.is_some() {
                return Err(setting("server_name", &format!("needs {} (it names the CA's peers)", naming.name("ca"))));
            }
            return match self.tls_client_auth {
                true => {
                    Err(setting("client_auth", &format!("needs {} (the CA that signs clients)", naming.name("ca"))))
                }
                false => Ok(Tls(None)),
            };
        }
        if let Some(name) = &self.tls_server_name {
            if ca.is_none() {
                return Err(setting("server_name", &format!("needs {} (it names the CA's peers)", naming.name("ca"))));
            }
            if !matches!(ServerName::try_from(name.as_str()), Ok(ServerName::DnsName(_))) {
                return Err(setting("server_name", &format!("{name:?} is not a DNS name")));
            }
        }
        match (cert, key) {
            (Some(_), None) => return Err(setting("key", &format!("needed with {}", naming.name("cert")))),
            (None, Some(_)) => return Err(setting("cert", &format!("needed with {}", naming.name("key")))),
            _ => {}
        }
        if role == Role::Peer {
            if ca.is_none() {
                let why = "needed with a certificate: this process also calls its peers, and verifies them against it";
                return Err(setting("ca", why));
            }
            if cert.is_none() {
                let why = "needed with a CA: this process also serves, over TLS when its peers call over TLS";
                return Err(setting("cert", why));
            }
        }
        if self.tls_client_auth && ca.is_none() {
            return Err(setting(
                "ca",
                &format!("needed with {} (the CA that signs clients)", naming.name("client_auth")),
            ));
        }
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = read(cert, &naming.name("cert"))?;
                certificates(&chain, cert, &naming.name("cert"))?;
                let secret = read(key, &naming.name("key"))?;
                PrivateKeyDer::from_pem_slice(&secret).map_err(|e| TlsError::File {
                    key: naming.name("key"),
                    path: key.display().to_string(),
                    message: format!("no PEM private key: {e}"),
                })?;
                Some((chain, secret))
            }
            _ => None,
        };
        let ca = match ca {
            Some(path) => {
                let pem = read(path, &naming.name("ca"))?;
                certificates(&pem, path, &naming.name("ca"))?;
                Some(pem)
            }
            None => None,
        };
        let server_name = self.tls_server_name.clone();
        Ok(Tls(Some(Arc::new(Material { identity, ca, client_auth: self.tls_client_auth, server_name }))))
    }

    /// The flags that give a child process these files (paths only; no file is read here).
    pub fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (name, value) in [("--tls-cert", &self.tls_cert), ("--tls-key", &self.tls_key), ("--tls-ca", &self.tls_ca)]
        {
            if let Some(path) = value {
                flags.extend([name.to_string(), path.display().to_string()]);
            }
        }
        if self.tls_client_auth {
            flags.push("--tls-client-auth".into());
        }
        if let Some(name) = &self.tls_server_name {
            flags.extend(["--tls-server-name".to_string(), name.clone()]);
        }
        flags
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &TlsFiles::default()
    }
}

/// The name an application's own certificate holds ([`application_certificates`]). It is no
/// host (`.invalid` never resolves): its peers check it in place of the host they call.
pub const APPLICATION_SERVER_NAME: &str = "application.embedstream.invalid";

/// An application's own CA and the one certificate its driver and executors share, as PEM.
/// The CA's key signs that certificate and is then dropped, never written: nothing can issue a
/// second certificate this CA vouches for.
pub struct ApplicationCertificates {
    pub ca: String,
    pub cert: String,
    /// The certificate's private key: write it only to a private file.
    pub key: String,
}

impl std::fmt::Debug for ApplicationCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplicationCertificates(key withheld)")
    }
}

/// Makes `application`'s own CA (ECDSA P-256, its name in the subject) and a certificate it
/// signs for [`APPLICATION_SERVER_NAME`], for both serving and calling. Where the hosts of an
/// application are not known in advance (YARN's containers), every peer checks that name.
pub fn application_certificates(application: &str) -> Result<ApplicationCertificates, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::OrganizationName, "embedstream");
    ca.distinguished_name.push(DnType::CommonName, format!("{application} CA"));
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![APPLICATION_SERVER_NAME.to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, application);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key))?;
    Ok(ApplicationCertificates { ca: ca_cert.pem(), cert: cert.pem(), key: key.serialize_pem() })
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        key: key.into(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Roots for calls to a server outside the cluster (an image host, a database): the CA file the
/// setting `key` names, read and checked now, else the public CAs (webpki-roots).
pub fn outside_roots(ca: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, TlsError> {
    let Some(path) = ca else {
        return Ok(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&read(path, key)?, path, key)? {
        roots.add(cert).map_err(|e| TlsError::File {
            key: key.into(),
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client's TLS settings trusting `roots`: ring, the default protocol versions, the server's
/// certificate and name checked, no client certificate.
pub fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn certificates(pem: &[u8], path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File { key: key.into(), path: path.display().to_string(), message };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Tls {
    /// Plaintext: no certificate, no CA.
    pub fn plaintext() -> Tls {
        Tls(None)
    }

    /// A client that verifies its peer against the PEM CA `ca` (read from `source`, named in
    /// errors) and expects `server_name` in the peer's certificate: an admin command calling an
    /// application's driver with the CA staged for it.
    pub fn client_of(ca: Vec<u8>, source: &Path, server_name: &str) -> Result<Tls, TlsError> {
        certificates(&ca, source, "the application's CA")?;
        let server_name = Some(server_name.to_string());
        Ok(Tls(Some(Arc::new(Material { identity: None, ca: Some(ca), client_auth: false, server_name }))))
    }

    /// This process's PEM certificate chain and key, when it serves TLS.
    pub fn identity(&self) -> Option<(&[u8], &[u8])> {
        self.0.as_ref()?.identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()))
    }

    /// The PEM CA certificates peers must chain to, when calls go out over TLS.
    pub fn ca(&self) -> Option<&[u8]> {
        self.0.as_ref()?.ca.as_deref()
    }

    /// The name peers' certificates must hold, when it is not the host called.
    pub fn server_name(&self) -> Option<&str> {
        self.0.as_ref()?.server_name.as_deref()
    }

    /// Servers require a client certificate.
    pub fn client_auth(&self) -> bool {
        self.0.as_ref().is_some_and(|m| m.client_auth)
    }

    /// Servers of this process serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity().is_some()
    }

    /// Calls from this process go out over TLS.
    pub fn calls_tls(&self) -> bool {
        self.ca().is_some()
    }

    /// The URL of `address` (`HOST:PORT`, or a URL whose scheme is replaced) as this process
    /// calls it: `https://` when its calls use TLS, else `http://`.
    pub fn url(&self, address: &str) -> String {
        let authority = address.split_once("://").map_or(address, |(_, rest)| rest);
        let scheme = if self.calls_tls() { "https" } else { "http" };
        format!("{scheme}://{}", authority.trim_end_matches('/'))
    }

    /// The rustls configuration of an HTTP/1.1 server (the `/metrics` endpoints), when this
    /// process serves TLS.
    pub fn http_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.identity()?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain).collect::<Result<_, _>>().expect("checked at load");
        let key = PrivateKeyDer::from_pem_slice(key).expect("checked at load");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if self.client_auth() {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(self.ca().expect("client_auth needs a CA"))
                    .collect::<Result<Vec<_>, _>>()
                    .expect("checked at load"),
            );
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("a CA checked at load makes a verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).expect("a certificate and key checked at load");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cert: bool, key: bool, ca: bool, client_auth: bool) -> TlsFiles {
        let p = |set: bool, name: &str| set.then(|| PathBuf::from(format!("/nonexistent/{name}.pem")));
        TlsFiles {
            tls_cert: p(cert, "cert"),
            tls_key: p(key, "key"),
            tls_ca: p(ca, "ca"),
            tls_client_auth: client_auth,
            tls_server_name: None,
        }
    }

    fn key_of(e: TlsError) -> String {
        match e {
            TlsError::Setting { key, .. } | TlsError::File { key, .. } => key,
        }
    }

    #[test]
    fn nothing_set_is_plaintext() {
        let tls = TlsFiles::default().load(Role::Peer, Naming::Spec).unwrap();
        assert!(!tls.serves_tls() && !tls.calls_tls());
        assert_eq!(tls.url("127.0.0.1:7077"), "http://127.0.0.1:7077");
        assert_eq!(tls.url("https://127.0.0.1:7077/"), "http://127.0.0.1:7077");
    }

    #[test]
    fn incomplete_settings_are_refused_naming_the_missing_one() {
        let cases = [
            (files(true, false, true, false), Role::Peer, "security.tls_key"),
            (files(false, true, true, false), Role::Peer, "security.tls_cert"),
            (files(true, true, false, false), Role::Peer, "security.tls_ca"),
            (files(false, false, true, false), Role::Peer, "security.tls_cert"),
            (files(false, false, false, true), Role::Peer, "security.tls_client_auth"),
            (files(true, true, false, true), Role::Client, "security.tls_ca"),
        ];
        for (f, role, key) in cases {
            let e = f.load(role, Naming::Spec).expect_err(key);
            assert_eq!(key_of(e), key, "{f:?}");
        }
        let e = files(true, false, true, false).load(Role::Client, Naming::Flags).unwrap_err();
        assert_eq!(key_of(e), "--tls-key");
    }

    #[test]
    fn a_missing_or_empty_file_is_refused_naming_setting_and_file() {
        let e = files(false, false, true, false).load(Role::Client, Naming::Flags).unwrap_err();
        assert!(e.to_string().starts_with("--tls-ca /nonexistent/ca.pem: "), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let f = TlsFiles { tls_ca: Some(empty.clone()), ..Default::default() };
        let e = f.load(Role::Client, Naming::Spec).unwrap_err();
        assert_eq!(e.to_string(), format!("security.tls_ca {}: no PEM certificate in it", empty.display()));
    }

    #[test]
    fn a_server_name_needs_a_ca_and_must_be_a_dns_name() {
        let named =
            |ca: bool, name: &str| TlsFiles { tls_server_name: Some(name.into()), ..files(false, false, ca, false) };
        let e = named(false, "app.example").load(Role::Client, Naming::Spec).unwrap_err();
        assert_eq!(key_of(e), "security.tls_server_name");
        let e = named(true, "127.0.0.1").load(Role::Client, Naming::Flags).unwrap_err();
        assert_eq!(e.to_string(), "--tls-server-name: \"127.0.0.1\" is not a DNS name");
    }

    #[test]
    fn an_applications_certificate_chains_to_its_ca_for_the_application_name_only() {
        use tokio_rustls::rustls::client::danger::ServerCertVerifier;
        use tokio_rustls::rustls::pki_types::UnixTime;
        let app = application_certificates("application_1_0001").unwrap();
        let other = application_certificates("application_1_0002").unwrap();
        let verify = |ca: &str, cert: &str, name: &str| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(CertificateDer::pem_slice_iter(ca.as_bytes()).map(Result::unwrap));
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            let name = ServerName::try_from(name.to_string()).unwrap();
            verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
        };
        verify(&app.ca, &app.cert, APPLICATION_SERVER_NAME).unwrap();
        assert!(verify(&app.ca, &app.cert, "localhost").is_err(), "the certificate names no host");
        assert!(verify(&other.ca, &app.cert, APPLICATION_SERVER_NAME).is_err(), "another application's CA");
        PrivateKeyDer::from_pem_slice(app.key.as_bytes()).unwrap();
        assert_eq!(format!("{app:?}"), "ApplicationCertificates(key withheld)");
    }

    #[test]
    fn flags_name_every_file_given() {
        let f = TlsFiles { tls_server_name: Some("app.example".into()), ..files(true, true, true, true) };
        assert_eq!(
            f.flags(),
            [
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
                "--tls-ca",
                "/nonexistent/ca.pem",
                "--tls-client-auth",
                "--tls-server-name",
                "app.example"
            ]
        );
        assert!(TlsFiles::default().flags().is_empty() && TlsFiles::default().is_empty());
    }
}
