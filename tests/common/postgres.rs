//! A real PostgreSQL 16 with pgvector (deploy/setup.sh's, from PyPI pgserver) on a free
//! loopback port, for the pgvector sink (issue 17): `initdb` into a temporary directory,
//! password authentication over TCP, stopped when dropped. PostgreSQL refuses to run as root:
//! as root the tests run it as the unprivileged user `embedstream-pg`, made if missing, from a
//! copy of the binaries that user can read (the cache is under root's home).

use std::path::PathBuf;
use std::process::Command;

use super::cache;

/// The password of the `postgres` superuser in every test server.
pub const PASSWORD: &str = "pg-test-password";
const USER: &str = "embedstream-pg";

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    as_root: bool,
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with("")
    }

    /// [`Postgres::start`] with server options added (`-c name=value ...`).
    pub fn start_with(server_options: &str) -> Postgres {
        let installed = cache().join("postgres");
        assert!(
            installed.join("pgserver/pginstall/bin/postgres").is_file(),
            "no PostgreSQL in {}: run deploy/setup.sh",
            installed.display()
        );
        let mut id = Command::new("id");
        id.arg("-u");
        let as_root = run(id, "id -u").trim() == "0";
        let dir = tempfile::Builder::new().prefix("embedstream-pg-").tempdir().unwrap();
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(&installed).arg(dir.path().join("pg"));
        run(copy, "copying PostgreSQL's binaries");
        if as_root {
            if !Command::new("id").arg("-u").arg(USER).output().is_ok_and(|o| o.status.success()) {
                let mut add = Command::new("useradd");
                add.args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER]);
                run(add, "useradd");
            }
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(format!("{USER}:")).arg(dir.path());
            run(chown, "chown");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { port, dir, as_root };
        std::fs::write(pg.path("pwfile"), PASSWORD).unwrap();
        pg.as_server(
            "initdb",
            &["-D", "data", "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile=pwfile"],
        );
        let options = format!("-c listen_addresses=127.0.0.1 -p {port} -k {} {server_options}", pg.path("").display());
        pg.as_server("pg_ctl", &["-D", "data", "-l", "log", "-w", "-t", "60", "-o", &options, "start"]);
        pg
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs PostgreSQL's `tool` in the server's directory, as the server's user.
    fn as_server(&self, tool: &str, args: &[&str]) -> String {
        let bin = self.path("pg/pgserver/pginstall/bin").join(tool);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(args).current_dir(self.dir.path());
        run(cmd, tool)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (the password apart).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql over TCP as `postgres` with `password`; its output rows, `|`
    /// between columns, or the error psql printed.
    pub fn psql_with(&self, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.path("pg/pgserver/pginstall/bin/psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .env("PGPASSWORD", password)
            .output()
            .expect("psql");
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_with(PASSWORD, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let bin = self.path("pg/pgserver/pginstall/bin/pg_ctl");
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let _ = cmd.args(["-D", "data", "-m", "fast", "-w", "stop"]).current_dir(self.dir.path()).output();
    }
}
