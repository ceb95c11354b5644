//! An MIT Kerberos KDC (Debian's krb5-kdc) for one test: a realm of its own in a temporary
//! directory, listening on a free loopback port only, with principals and keytabs made by
//! `kadmin.local`; stopped on drop. Clients find it through `KRB5_CONFIG` (C libraries, kinit)
//! or `-Djava.security.krb5.conf` (the JVM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REALM: &str = "EMBEDSTREAM.TEST";

pub struct Kdc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Kdc {
    pub fn start() -> Kdc {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        // TCP only from clients; the KDC listens on 127.0.0.1 and nowhere else.
        let krb5 = format!(
            "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_realm = false\n  dns_lookup_kdc = false\n  \
             dns_canonicalize_hostname = false\n  rdns = false\n  udp_preference_limit = 1\n\
             [realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
        );
        let kdc = format!(
            "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\
             [realms]\n  {REALM} = {{\n    database_name = {d}/principal\n    key_stash_file = {d}/stash\n    \
             acl_file = {d}/kadm5.acl\n    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n  }}\n\
             [logging]\n  kdc = FILE:{d}/kdc.log\n"
        );
        std::fs::write(dir.path().join("krb5.conf"), krb5).unwrap();
        std::fs::write(dir.path().join("kdc.conf"), kdc).unwrap();
        std::fs::write(dir.path().join("kadm5.acl"), "").unwrap();
        let master = format!("master-{port}");
        run(dir.path(), Command::new("kdb5_util").args(["create", "-s", "-r", REALM, "-P", &master]));
        let log = std::fs::File::create(dir.path().join("krb5kdc.out")).unwrap();
        let child = Command::new("krb5kdc")
            .arg("-n")
            .envs(env(dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("krb5kdc (Debian's krb5-kdc): run deploy/setup.sh");
        let mut kdc = Kdc { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = kdc.child.try_wait() {
                panic!(
                    "krb5kdc exited with {status}: {}",
                    std::fs::read_to_string(kdc.dir.path().join("krb5kdc.out")).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "krb5kdc did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        kdc
    }

    /// The client configuration file (`KRB5_CONFIG`, `java.security.krb5.conf`).
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// Makes `name@REALM` with a random key and returns a keytab that holds it.
    pub fn add_principal(&self, name: &str) -> PathBuf {
        let keytab = self.dir.path().join(format!("{}.keytab", name.replace('/', "_")));
        let principal = format!("{name}@{REALM}");
        self.kadmin(&format!("addprinc -randkey {principal}"));
        self.kadmin(&format!("ktadd -k {} {principal}", keytab.display()));
        keytab
    }

    /// Logs `name@REALM` in from `keytab` into the ticket cache `ccache` (a file), as `kinit -kt`.
    pub fn kinit(&self, name: &str, keytab: &Path, ccache: &Path) {
        let cache = format!("FILE:{}", ccache.display());
        let principal = format!("{name}@{REALM}");
        run(self.dir.path(), Command::new("kinit").args(["-kt"]).arg(keytab).args(["-c", &cache, &principal]));
    }

    /// Deletes `name@REALM` from the KDC (its keytabs stay, and no longer work).
    pub fn delete_principal(&self, name: &str) {
        self.kadmin(&format!("delprinc -force {name}@{REALM}"));
    }

    fn kadmin(&self, query: &str) {
        run(self.dir.path(), Command::new("kadmin.local").args(["-q", query]));
    }
}

/// KRB5_CONFIG and KRB5_KDC_PROFILE for the KDC's own tools.
fn env(dir: &Path) -> [(&'static str, PathBuf); 2] {
    [("KRB5_CONFIG", dir.join("krb5.conf")), ("KRB5_KDC_PROFILE", dir.join("kdc.conf"))]
}

fn run(dir: &Path, cmd: &mut Command) {
    let out = cmd.envs(env(dir)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // kadmin.local reports a failed query on stderr and still exits 0.
    assert!(out.status.success() && !stderr.contains("rror"), "{cmd:?}: {stderr}");
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
