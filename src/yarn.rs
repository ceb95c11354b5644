//! `--master yarn`: queries on Apache Hadoop YARN, with HDFS for the checkpoint and the table.
//!
//! YARN is reached through Hadoop's own Java client libraries, not a reimplementation of its
//! protocols: `deploy/hadoop/src/io/embedstream/yarn/` holds a small client (submit, report,
//! kill, staging) and the ApplicationMaster, compiled by `deploy/setup.sh` into
//! `embedstream-yarn.jar`. This module runs that client with the cluster's configuration
//! (`HADOOP_CONF_DIR`) and Hadoop's jars (`hadoop classpath` where Hadoop is installed, else the
//! client jars `deploy/setup.sh` fetched), and is the driver's side of the master:
//! `embedstream yarn-driver`, which the ApplicationMaster starts in its container.
//!
//! What a submit stages in HDFS (`~/.embedstream-staging/APP_ID/`, mode 0700, removed when the
//! application ends): this binary, the ONNX Runtime library, the master's jar, the model files
//! that are not on HDFS already, `HADOOP_CONF_DIR`'s core-site.xml and hdfs-site.xml (the
//! containers' `HADOOP_CONF_DIR`), the job spec as the driver will read it, and the
//! application's secret (0600): the token every call to the driver and from its executors
//! carries, and the TLS they are made over: the application's own CA, certificate and key
//! (`app-*.pem`, made here) or the spec's own files (`tls-*.pem`). YARN localizes them into
//! each container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::{Naming, Role, Tls, TlsFiles, APPLICATION_SERVER_NAME};
use embedstream_core::{store, JobSpec};
use embedstream_driver::launcher::yarn::{AmChannel, YarnLauncher};
use embedstream_driver::launcher::{DriverEndpoints, Launcher};
use embedstream_driver::DriverOptions;
use embedstream_proto::serve::Caller;

/// The staged names of an application's own CA, certificate and key ([`stage_tls`]).
const APP_CA: &str = "app-ca.pem";
const APP_CERT: &str = "app-cert.pem";
const APP_KEY: &str = "app-key.pem";

/// The Java class of the YARN client.
const CLIENT_CLASS: &str = "io.embedstream.yarn.Client";
/// How long one client call may take (a submit uploads the binary and the model).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Hadoop's Java client, with the cluster's configuration.
pub struct YarnClient {
    classpath: String,
    /// The cluster's configuration directory (`HADOOP_CONF_DIR`).
    conf_dir: PathBuf,
    /// The JVM's system properties: the realm's file (Java ignores `KRB5_CONFIG`) and, for a
    /// submit, the Kerberos login and the HDFS locations to get delegation tokens for.
    properties: Vec<String>,
}

impl YarnClient {
    /// Finds the cluster's configuration (`HADOOP_CONF_DIR`, else `YARN_CONF_DIR`), the master's
    /// jar and Hadoop's client jars.
    pub fn from_env() -> Result<YarnClient> {
        let conf_dir = ["HADOOP_CONF_DIR", "YARN_CONF_DIR"]
            .iter()
            .find_map(|v| std::env::var_os(v).filter(|d| !d.is_empty()))
            .map(PathBuf::from)
            .context("--master yarn: set HADOOP_CONF_DIR to the directory with the cluster's yarn-site.xml and core-site.xml")?;
        for file in ["yarn-site.xml", "core-site.xml"] {
            if !conf_dir.join(file).is_file() {
                bail!("HADOOP_CONF_DIR {}: no {file} there", conf_dir.display());
            }
        }
        let jar = yarn_jar()?;
        let hadoop = hadoop_classpath()?;
        let mut properties = Vec::new();
        // Java reads krb5.conf from /etc or this property, never from KRB5_CONFIG, which MIT's
        // tools and librdkafka read: the same realm for both.
        if let Some(krb5) = std::env::var_os("KRB5_CONFIG").filter(|k| !k.is_empty()) {
            properties.push(format!("-Djava.security.krb5.conf={}", PathBuf::from(krb5).display()));
        }
        Ok(YarnClient { classpath: format!("{}:{}:{hadoop}", conf_dir.display(), jar.display()), conf_dir, properties })
    }

    /// Logs in as `principal` from `keytab` (Kerberos), instead of from the ticket cache.
    fn with_keytab(mut self, principal: &str, keytab: &Path) -> YarnClient {
        self.properties.push(format!("-Dembedstream.principal={principal}"));
        self.properties.push(format!("-Dembedstream.keytab={}", keytab.display()));
        self
    }

    /// Runs one client command; its standard output, or its one-line error.
    async fn call(&self, args: &[String], timeout: Duration) -> Result<String> {
        let mut command = tokio::process::Command::new(java());
        command
            .args(&self.properties)
            .arg("-cp")
            .arg(&self.classpath)
            .arg(CLIENT_CLASS)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().context("cannot start java for the YARN client (install a Java 17 runtime)")?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| anyhow::anyhow!("YARN: {} gave no answer within {timeout:?}", args[0]))??;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            bail!("YARN: {why}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The application's report: state, final_status, host, rpc_port, tracking_url, attempt,
    /// diagnostics.
    pub async fn report(&self, app: &str) -> Result<HashMap<String, String>> {
        let out = self.call(&["report".into(), app.into()], CALL_TIMEOUT).await?;
        Ok(out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Where the application's driver serves and how to call it: with the application's secret,
    /// over TLS. `tls` is the caller's own `--tls-*` (for a spec that named its own files);
    /// without it, the application's own CA from its staging directory, for
    /// [`APPLICATION_SERVER_NAME`].
    pub async fn driver(&self, app: &str, tls: &TlsFiles) -> Result<(String, Caller)> {
        let report = self.report(app).await?;
        let state = report.get("state").map(String::as_str).unwrap_or("UNKNOWN");
        let port = report.get("rpc_port").and_then(|p| p.parse::<i32>().ok()).unwrap_or(0);
        let host = report.get("host").map(String::as_str).unwrap_or("");
        if state != "RUNNING" || port <= 0 || host.is_empty() || host == "N/A" {
            bail!("{app} is {state}: its driver is not running (yarn application -status {app} says more)");
        }
        let secret = self.call(&["secret".into(), app.into()], CALL_TIMEOUT).await?;
        let token = ClusterToken::new(secret.trim());
        let tls = if tls.is_empty() {
            let ca = self.call(&["staged".into(), app.into(), APP_CA.into()], CALL_TIMEOUT).await?;
            Tls::client_of(ca.into_bytes(), Path::new(APP_CA), APPLICATION_SERVER_NAME)
                .with_context(|| format!("{app}'s staged {APP_CA}"))?
        } else {
            tls.load(Role::Client, Naming::Flags)?
        };
        Ok((format!("{host}:{port}"), Caller { token, tls }))
    }
}

fn java() -> PathBuf {
    match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join("bin").join("java"),
        None => PathBuf::from("java"),
    }
}

/// `EMBEDSTREAM_YARN_JAR`, else `hadoop/embedstream-yarn.jar` in the setup cache.
fn yarn_jar() -> Result<PathBuf> {
    let jar = std::env::var_os("EMBEDSTREAM_YARN_JAR")
        .filter(|j| !j.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| embedstream_executor::model::cache_dir().join("hadoop").join("embedstream-yarn.jar"));
    if !jar.is_file() {
        bail!("{}: no such file (deploy/setup.sh builds it; or set EMBEDSTREAM_YARN_JAR)", jar.display());
    }
    Ok(jar)
}

/// Hadoop's jars: `EMBEDSTREAM_HADOOP_CLASSPATH`, else what `hadoop classpath` prints on an
/// edge node with Hadoop installed, else the client jars in the setup cache.
fn hadoop_classpath() -> Result<String> {
    if let Some(cp) = std::env::var("EMBEDSTREAM_HADOOP_CLASSPATH").ok().filter(|c| !c.is_empty()) {
        return Ok(cp);
    }
    if let Ok(out) = std::process::Command::new("hadoop").arg("classpath").output() {
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    let libs = embedstream_executor::model::cache_dir().join("hadoop").join("libs");
    if !libs.is_dir() {
        bail!("no Hadoop client: install Hadoop (`hadoop classpath`), set EMBEDSTREAM_HADOOP_CLASSPATH, or run deploy/setup.sh");
    }
    Ok(format!("{}/*", libs.display()))
}

/// `list --master yarn`: embedstream's applications on the cluster, newest first.
pub async fn list() -> Result<()> {
    let out = YarnClient::from_env()?.call(&["list".into()], CALL_TIMEOUT).await?;
    let mut rows: Vec<Vec<&str>> =
        out.lines().map(|l| l.split('\t').collect()).filter(|r: &Vec<&str>| r.len() >= 6).collect();
    rows.sort_by(|a, b| b[0].cmp(a[0]));
    out!("{:<32} {:<20} {:<10} {:<10} {:<10} TRACKING URL", "APPLICATION", "NAME", "STATE", "FINAL", "QUEUE");
    for r in rows {
        out!("{:<32} {:<20} {:<10} {:<10} {:<10} {}", r[0], r[1], r[2], r[3], r[4], r[5]);
    }
    Ok(())
}

/// What `submit --master yarn` takes beyond the spec.
pub struct SubmitOptions {
    pub name: Option<String>,
    pub queue: String,
    pub wait: bool,
    /// The master's container: the Java master and the driver.
    pub am_memory_mb: u64,
    /// 0: the cluster's `yarn.resourcemanager.am.max-attempts`.
    pub max_attempts: u32,
    /// Kerberos: the principal and keytab to log in with (else the ticket cache's).
    pub keytab: Option<(String, PathBuf)>,
}

/// Checks the spec, stages what the application needs and submits it; prints its id.
pub async fn submit(job: &Path, conf: &[String], options: SubmitOptions) -> Result<()> {
    let mut spec = JobSpec::from_file_with(job, conf)?;
    spec.check_files()?;
    on_hdfs("checkpoint_location", &spec.checkpoint_location)?;
    if let Some(table) = spec.sink.table_path() {
        on_hdfs("sink.path", table)?;
    }
    spec.security.tls()?;
    let mut yarn = YarnClient::from_env()?;
    if let Some((principal, keytab)) = &options.keytab {
        if !keytab.is_file() {
            bail!("--keytab {}: no such file", keytab.display());
        }
        yarn = yarn.with_keytab(principal, keytab);
    }
    // Every HDFS the job touches gets a delegation token at submit (several NameNodes if the
    // paths name several); the master's staging file system always does.
    let mut hdfs: Vec<String> = vec![spec.checkpoint_location.display().to_string()];
    if let Some(table) = spec.sink.table_path() {
        hdfs.push(table.display().to_string());
    }
    hdfs.extend(
        spec.model_files_mut().into_iter().map(|(_, p)| p.display().to_string()).filter(|p| p.starts_with("hdfs://")),
    );
    yarn.properties.push(format!("-Dembedstream.hdfs={}", hdfs.join(",")));
    let staged = tempfile::Builder::new().prefix("embedstream-submit-").tempdir()?;
    let exe = std::env::current_exe().context("cannot find the embedstream binary to stage")?;
    let mut files: Vec<(String, PathBuf)> = vec![
        ("embedstream".into(), exe),
        ("libonnxruntime.so".into(), embedstream_executor::model::ort_library()),
        ("embedstream-yarn.jar".into(), yarn_jar()?),
    ];
    // The master logs in with the keytab again to renew the application's tokens: staged
    // 0400, localized into the master's container only.
    if let Some((_, keytab)) = &options.keytab {
        files.push(("user.keytab".into(), keytab.clone()));
    }
    // Model files on this machine travel with the application; those on HDFS are fetched by
    // each executor. The id the path gave stays the model's id.
    if let Some(m) = &mut spec.model {
        m.id = Some(m.model_id());
    }
    for (link, path) in spec.model_files_mut() {
        if !store::is_hdfs(path) {
            files.push((link.clone(), path.clone()));
            *path = PathBuf::from(link);
        }
    }
    // The application's own secret replaces any token file (it is not on the cluster's nodes).
    spec.security.token_file = None;
    // The Kafka secrets (`{ file }` and `{ env }`) are read here and travel as private staged
    // files, which the driver reads in its container and hands to its executors as it does
    // anywhere (the staging directory is 0700, the files 0600).
    for (name, secret) in spec.secrets_into_files(|i| format!("kafka-secret-{i}"))? {
        let file = staged.path().join(&name);
        embedstream_core::durable::write_private(&file, secret.expose().as_bytes())?;
        files.push((name, file));
    }
    // The files librdkafka reads (a Kerberos keytab for GSSAPI, TLS files) travel too, to every
    // container of the application, the secret ones as private files (0600); each property
    // then names its staged copy in the container's directory.
    for (i, (property, private, path)) in spec.kafka_files_mut().into_iter().enumerate() {
        let local = PathBuf::from(path.as_str());
        if !local.is_file() {
            bail!("{property}: {}: no such file on this machine, which stages it for YARN", local.display());
        }
        let link = format!("kafka-{}-{i}", if private { "private" } else { "file" });
        files.push((link.clone(), local));
        *path = link;
    }
    // The schema registry's CA, for the executors' HTTPS calls to it.
    if let Some(ca) = spec.input.schema_registry.as_mut().and_then(|r| r.ca.as_mut()) {
        files.push(("registry-ca.pem".into(), ca.clone()));
        *ca = PathBuf::from("registry-ca.pem");
    }
    // This machine's Hadoop configuration travels with the application, as Spark's does: the
    // master points its driver and executors at it (HADOOP_CONF_DIR), so that they resolve
    // `hdfs:///` (fs.defaultFS) and HA name services as `submit` did.
    for file in ["core-site.xml", "hdfs-site.xml"] {
        let path = yarn.conf_dir.join(file);
        if path.is_file() {
            files.push((file.into(), path));
        }
    }
    files.extend(stage_tls(&mut spec, staged.path())?);
    let spec_file = staged.path().join("job.toml");
    std::fs::write(&spec_file, spec.to_toml())?;
    files.push(("job.toml".into(), spec_file));
    let secret_file = staged.path().join("secret");
    embedstream_core::durable::write_private(&secret_file, embedstream_core::auth::random_secret().as_bytes())?;
    files.push(("secret".into(), secret_file));

    let name = options.name.unwrap_or_else(|| spec.name.clone());
    let mut args =
        vec!["submit".into(), name, options.queue, options.am_memory_mb.to_string(), options.max_attempts.to_string()];
    args.extend(files.iter().map(|(link, path)| format!("{link}={}", path.display())));
    let out = yarn.call(&args, SUBMIT_TIMEOUT).await?;
    let app = out.lines().rev().find(|l| l.starts_with("application_")).context("YARN gave no application id")?;
    out!("{app}");
    if options.wait {
        return follow(&yarn, app).await;
    }
    Ok(())
}

/// TLS between the driver and its executors, and from the admin commands to the driver: the
/// spec's `[security] tls_*` files when it names them (staged as `tls-*.pem`), else the
/// application's own CA and certificate, made here for [`APPLICATION_SERVER_NAME`] (staged as
/// `app-*.pem`; the CA's key is never written). The spec is pointed at the staged names, which
/// are the same in every container. Keys are staged 0600.
fn stage_tls(spec: &mut JobSpec, staged: &Path) -> Result<Vec<(String, PathBuf)>> {
    let security = &mut spec.security;
    let mut files = Vec::new();
    if security.tls_cert.is_some() || security.tls_ca.is_some() {
        for (link, path) in [
            ("tls-cert.pem", &mut security.tls_cert),
            ("tls-key.pem", &mut security.tls_key),
            ("tls-ca.pem", &mut security.tls_ca),
        ] {
            if let Some(p) = path.replace(PathBuf::from(link)) {
                files.push((link.to_string(), p));
            }
        }
        return Ok(files);
    }
    let made = embedstream_core::tls::application_certificates(&spec.name)
        .context("cannot make the application's TLS certificate")?;
    for (link, pem) in [(APP_CA, &made.ca), (APP_CERT, &made.cert), (APP_KEY, &made.key)] {
        let file = staged.join(link);
        embedstream_core::durable::write_private(&file, pem.as_bytes())?;
        files.push((link.to_string(), file));
    }
    security.tls_cert = Some(APP_CERT.into());
    security.tls_key = Some(APP_KEY.into());
    security.tls_ca = Some(APP_CA.into());
    security.tls_server_name = Some(APPLICATION_SERVER_NAME.into());
    // The application's secret authenticates callers; the certificate proves the driver and
    // executors to each other and to the admin commands, which have the CA but no certificate.
    security.tls_client_auth = false;
    Ok(files)
}

fn on_hdfs(key: &str, path: &Path) -> Result<()> {
    if !store::is_hdfs(path) {
        bail!(
            "{key}: on YARN it must be an hdfs:// path (the driver and executors run on the cluster's nodes), not {}",
            path.display()
        );
    }
    Ok(())
}

/// Follows the application to its end: 0 when it SUCCEEDED, an error with YARN's diagnostics
/// otherwise. The staging directory is removed in any case.
async fn follow(yarn: &YarnClient, app: &str) -> Result<()> {
    let mut last = String::new();
    loop {
        let report = yarn.report(app).await?;
        let state = report.get("state").cloned().unwrap_or_default();
        if state != last {
            eprintln!("{app}: {state}");
            last = state.clone();
        }
        if matches!(state.as_str(), "FINISHED" | "FAILED" | "KILLED") {
            // The master removes it when it finishes; a killed one could not.
            if let Err(e) = yarn.call(&["cleanup".into(), app.into()], CALL_TIMEOUT).await {
                tracing::warn!(error = %e, "could not remove the staging directory");
            }
            let status = report.get("final_status").cloned().unwrap_or_default();
            if status == "SUCCEEDED" {
                return Ok(());
            }
            let diagnostics = report.get("diagnostics").cloned().unwrap_or_default();
            bail!("{app} {state} ({status}): {diagnostics}");
        }
        // The client polls as `yarn application -status` would; nothing here is a test.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `embedstream yarn-driver`: the driver in the application master's container, started by
/// the Java ApplicationMaster, which relays its container requests to YARN.
pub async fn driver(job: &Path, listen: &str, token_file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(job).with_context(|| format!("{}: cannot read the job spec", job.display()))?;
    let mut spec = JobSpec::from_toml(&text)?;
    let listen: std::net::SocketAddr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?
        .next()
        .with_context(|| format!("--listen {listen}: no address"))?;
    // /metrics on the container's host too: YARN's tracking URL points there.
    spec.monitoring.metrics_listen = format!("{}:0", listen.ip());
    spec.check_files()?;
    let token = ClusterToken::load(Some(token_file))?;
    // The staged TLS files (see `stage_tls`): the executors take the same flags, and find the
    // files under the same names in their containers.
    let tls = spec.security.tls()?;
    tracing::info!(tls = ?tls, "the driver and its executors serve and call with this TLS");
    let executor_tls = spec.security.tls_files().flags();
    let resources = (spec.executors.cores, spec.executors.container_memory_mb());
    let launcher = move |driver: &DriverEndpoints| -> Box<dyn Launcher> {
        Box::new(
            YarnLauncher::new(AmChannel::stdio(), driver, resources.0, resources.1).with_executor_flags(executor_tls),
        )
    };
    let options = DriverOptions { listen, token, tls, port_retries: 0, own_token_file: None };
    let summary = embedstream_driver::run_query(spec, options, launcher, crate::client::stop_on_signal()).await?;
    // Standard output is the master's channel: the summary goes to the log.
    tracing::info!(summary = %serde_json::to_string(&summary)?, "query ended");
    Ok(())
}
