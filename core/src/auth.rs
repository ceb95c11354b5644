//! The cluster token: a shared secret that every admin call, every internal RPC and every Arrow
//! Flight call carries as `authorization: Bearer <token>`.
//!
//! It comes from `EMBEDSTREAM_TOKEN` in the environment, or from the file that
//! `security.token_file` names. Without either, calls are not checked (a single-user local run).
//! A wrong or missing token is refused with `UNAUTHENTICATED` and logged.
//!
//! A cluster application's driver and executors hold an application's secret instead
//! ([`ClusterToken::application`]): the RM issues it at submit, and the cluster token does not
//! reach them. A wrong secret there (the cluster token, another application's) is
//! `PERMISSION_DENIED`: the caller may be a member of the cluster, but not of this application.

use std::path::Path;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;

/// The environment variable that carries the token.
pub const TOKEN_ENV: &str = "EMBEDSTREAM_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the token file {0} is empty")]
    Empty(String),
    #[error("the cluster token from {0} has a character that is not printable ASCII (it travels in an HTTP header)")]
    NotAscii(String),
}

/// The token to require from callers (or to send, as a client), if any.
#[derive(Clone, Default)]
pub struct ClusterToken {
    secret: Option<Arc<str>>,
    /// An application's secret rather than the cluster's token.
    application: bool,
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(match (&self.secret, self.application) {
            (None, _) => "ClusterToken(none)",
            (Some(_), false) => "ClusterToken(set)",
            (Some(_), true) => "ClusterToken(application secret)",
        })
    }
}

impl ClusterToken {
    pub fn new(token: &str) -> ClusterToken {
        ClusterToken { secret: Some(token.into()), application: false }
    }

    /// A cluster application's secret, which its driver and executors require of each other and
    /// of its admin callers in place of the cluster token.
    pub fn application(secret: &str) -> ClusterToken {
        ClusterToken { secret: Some(secret.into()), application: true }
    }

    /// The application's secret in the first line of `path` (a 0600 file its node agent wrote).
    pub fn application_from_file(path: &Path) -> Result<ClusterToken, TokenError> {
        let token = Self::from_sources(None, Some(path))?;
        Ok(ClusterToken { application: true, ..token })
    }

    /// A new random token (32 bytes from the kernel's generator, as hex), for a local query that
    /// was given none.
    pub fn generate() -> ClusterToken {
        ClusterToken::new(&random_secret())
    }

    /// `EMBEDSTREAM_TOKEN` if set and non-empty, else the first line of `file`, else none.
    pub fn load(file: Option<&Path>) -> Result<ClusterToken, TokenError> {
        Self::from_sources(std::env::var(TOKEN_ENV).ok(), file)
    }

    fn from_sources(env: Option<String>, file: Option<&Path>) -> Result<ClusterToken, TokenError> {
        // Checked here, once, so that sending it later cannot fail.
        let printable = |t: &str, from: String| {
            if t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                Ok(ClusterToken::new(t))
            } else {
                Err(TokenError::NotAscii(from))
            }
        };
        if let Some(t) = env {
            if !t.trim().is_empty() {
                return printable(t.trim(), TOKEN_ENV.to_string());
            }
        }
        let Some(path) = file else { return Ok(ClusterToken::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.display().to_string(), source })?;
        match text.lines().next().map(str::trim) {
            Some(t) if !t.is_empty() => printable(t, path.display().to_string()),
            _ => Err(TokenError::Empty(path.display().to_string())),
        }
    }

    pub fn is_set(&self) -> bool {
        self.secret.is_some()
    }

    /// The secret itself, to hand to a child process's environment.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Refuses a call whose `authorization` header does not carry this token.
    pub fn check(&self, metadata: &MetadataMap, call: &str) -> Result<(), Status> {
        let Some(expected) = &self.secret else { return Ok(()) };
        let given = metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) if self.application => {
                tracing::warn!(call, "refused a call without this application's secret");
                Err(Status::permission_denied(
                    "not this application's secret: a cluster application's driver and executors take only the secret \
                     the RM issued to it at submit (the cluster token reaches the RM alone)",
                ))
            }
            Some(_) => {
                tracing::warn!(call, "refused a call with a wrong cluster token");
                Err(Status::unauthenticated("wrong cluster token"))
            }
            None => {
                tracing::warn!(call, "refused a call without a cluster token");
                Err(Status::unauthenticated(format!("missing cluster token (authorization: Bearer, from {TOKEN_ENV})")))
            }
        }
    }

    /// The `authorization` header value that carries this token, if there is one.
    pub fn header_value(&self) -> Option<String> {
        self.secret.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Adds this token to an outgoing request.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        if let Some(value) = self.header_value() {
            metadata.insert("authorization", value.parse().expect("a token is printable ASCII"));
        }
    }
}

/// As a client interceptor, a `ClusterToken` adds itself to every outgoing call.
impl tonic::service::Interceptor for ClusterToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.attach(request.metadata_mut());
        Ok(request)
    }
}

/// A server interceptor that refuses calls without the token (none required if it is unset).
#[derive(Clone, Debug)]
pub struct RequireToken(ClusterToken);

impl RequireToken {
    pub fn new(token: ClusterToken) -> RequireToken {
        RequireToken(token)
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.0.check(request.metadata(), "grpc")?;
        Ok(request)
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
/// 32 bytes from the kernel's generator, as 64 hex digits: a new token or application secret.
pub fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn checks_the_bearer_token() {
        let token = ClusterToken::new("s3cret");
        assert!(token.check(&with_header(Some("Bearer s3cret")), "t").is_ok());
        let wrong = token.check(&with_header(Some("Bearer s3cre")), "t").unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = token.check(&with_header(None), "t").unwrap_err();
        assert!(missing.message().contains("missing cluster token"));
        assert!(ClusterToken::default().check(&with_header(None), "t").is_ok());
        let mut m = MetadataMap::new();
        token.attach(&mut m);
        assert!(token.check(&m, "t").is_ok());
    }

    /// Issue 31, item 14: an application's secret refuses any other bearer (the cluster token,
    /// another application's secret) as not permitted; a missing one as unauthenticated.
    #[test]
    fn an_application_secret_refuses_other_secrets_as_permission_denied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app-secret");
        std::fs::write(&file, "app-b\n").unwrap();
        let secret = ClusterToken::application_from_file(&file).unwrap();
        assert!(secret.check(&with_header(Some("Bearer app-b")), "t").is_ok());
        for other in ["Bearer cluster-token", "Bearer app-a"] {
            let refused = secret.check(&with_header(Some(other)), "t").unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{other}");
        }
        assert_eq!(secret.check(&with_header(None), "t").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(format!("{secret:?}"), "ClusterToken(application secret)");
    }

    #[test]
    fn token_comes_from_the_environment_or_a_non_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(ClusterToken::from_sources(None, Some(&file)), Err(TokenError::Empty(_))));
        std::fs::write(&file, "abc\n").unwrap();
        assert_eq!(ClusterToken::from_sources(None, Some(&file)).unwrap().secret(), Some("abc"));
        let env = ClusterToken::from_sources(Some("xyz".into()), Some(&file)).unwrap();
        assert_eq!(env.secret(), Some("xyz"), "the environment wins over the file");
        std::fs::write(&file, "abc\u{a0}def\n").unwrap();
        let e = ClusterToken::from_sources(None, Some(&file)).expect_err("a non-breaking space is refused");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(matches!(ClusterToken::from_sources(Some("a\tb".into()), None), Err(TokenError::NotAscii(_))));
    }
}
