//! The deployment scripts: every shell script passes shellcheck, the node install script puts
//! the binary, the ONNX Runtime library, the models and the systemd units in place, the YARN
//! bundle holds what a node agent in a YARN container needs, and the setup's PostgreSQL with
//! pgvector (for issue 17's sink) runs as an unprivileged user and ranks vectors by distance.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cache;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            scripts(&path, out);
        } else if path.extension().is_some_and(|e| e == "sh") {
            out.push(path);
        }
    }
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let mut all = vec![Path::new(ROOT).join(".ci/run")];
    scripts(&Path::new(ROOT).join("deploy"), &mut all);
    scripts(&Path::new(ROOT).join("benches"), &mut all);
    assert!(all.len() >= 8, "{all:?}");
    let out =
        Command::new(cache().join("bin/shellcheck")).args(&all).output().expect("deploy/setup.sh installs shellcheck");
    assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn install_node_puts_everything_in_place() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(Path::new(ROOT).join("deploy/install-node.sh"))
        .args(["--root", root.path().to_str().unwrap(), "--no-systemd", "--binary", env!("CARGO_BIN_EXE_embedstream")])
        .env("EMBEDSTREAM_CACHE", cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opt = root.path().join("opt/embedstream");
    let version = Command::new(opt.join("bin/embedstream")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("embedstream "));
    assert!(opt.join("cache/lib/libonnxruntime.so").is_file());
    assert!(opt.join("cache/models/all-MiniLM-L6-v2/model.onnx").is_file());
    assert!(opt.join("cache/models/all-MiniLM-L6-v2/tokenizer.json").is_file());
    let units = root.path().join("etc/systemd/system");
    for unit in ["embedstream-resource-manager.service", "embedstream-node-agent.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(text.contains("ExecStart=/opt/embedstream/bin/embedstream "), "{unit}");
        assert!(text.contains("EnvironmentFile=/etc/embedstream/embedstream.env"), "{unit}");
    }
    // Every variable the units use is set in the environment file.
    let env = std::fs::read_to_string(root.path().join("etc/embedstream/embedstream.env")).unwrap();
    for unit in ["embedstream-resource-manager.service", "embedstream-node-agent.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        for var in text.split("${").skip(1).map(|s| s.split('}').next().unwrap()) {
            assert!(env.lines().any(|l| l.starts_with(&format!("{var}="))), "{unit} uses {var}, unset in the env file");
        }
    }
    // systemd reads the units without complaint, but for the binary, which is not at /opt here.
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(["embedstream-resource-manager.service", "embedstream-node-agent.service"].map(|u| units.join(u)))
        .output()
    {
        let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("Command /opt/embedstream/bin/embedstream is not executable"))
            .map(str::to_string)
            .collect();
        assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:#?}");
    }

    // The operator's settings survive a second install.
    std::fs::write(root.path().join("etc/embedstream/embedstream.env"), "EMBEDSTREAM_RM=mine:8030\n").unwrap();
    let again = Command::new(Path::new(ROOT).join("deploy/install-node.sh"))
        .args(["--root", root.path().to_str().unwrap(), "--no-systemd", "--binary", env!("CARGO_BIN_EXE_embedstream")])
        .env("EMBEDSTREAM_CACHE", cache())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/embedstream/embedstream.env")).unwrap(),
        "EMBEDSTREAM_RM=mine:8030\n"
    );
}

/// deploy/setup.sh's PostgreSQL 16 with pgvector: started by the tests' harness on a free
/// loopback port as an unprivileged user, it takes the extension, an HNSW index and a nearest
/// neighbour query, and refuses a wrong password.
#[test]
fn the_setups_postgres_with_pgvector_runs_and_ranks_by_cosine_distance() {
    let pg = common::postgres::Postgres::start();
    assert!(pg.psql("SHOW server_version").starts_with("16."), "PostgreSQL 16");
    pg.psql("CREATE EXTENSION vector");
    let version = pg.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'");
    assert!(version.starts_with("0.") && version.as_str() >= "0.6", "pgvector {version}");
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))");
    pg.psql("CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops)");
    pg.psql("INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0.9,0.1,0]'), (3, '[0,1,0]'), (4, '[0,0,1]')");
    let nearest = pg.psql("SELECT id FROM items ORDER BY embedding <=> '[1,0.05,0]' LIMIT 3");
    assert_eq!(nearest.lines().collect::<Vec<_>>(), ["1", "2", "3"]);
    let e = pg.psql_with("not-the-password", "SELECT 1").unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
}

/// Issue 31, item 17: `deploy/postgres.sh` started the server with `--auth-local=trust` and a
/// socket every local user could open: any of them was the superuser, without a password. Now
/// neither another user (`nobody`) nor the server's own user gets in through the socket without
/// the password, and the script's `psql` still works, reading the password from a private file.
#[test]
fn deploy_postgres_must_not_leave_a_superuser_socket_open_to_every_local_user() {
    let work = tempfile::Builder::new().prefix("embedstream-pgsh-").tempdir().unwrap();
    let dir = work.path().join("postgres");
    let pass = work.path().join("pg.pass");
    std::fs::write(&pass, "a:pass\\word\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let script = Path::new(ROOT).join("deploy/postgres.sh");
    let run = |args: &[&str]| {
        let out = Command::new(&script).args(args).output().unwrap();
        assert!(out.status.success(), "postgres.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (d, p) = (dir.to_str().unwrap(), pass.to_str().unwrap());
    // Everything above the directory lets others through, as the script asks.
    Command::new("chmod").args(["o+x", work.path().to_str().unwrap()]).status().unwrap();
    run(&["start", d, &port, p]);
    struct Stop<'a>(&'a Path, &'a str);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(self.0).args(["stop", self.1]).output();
        }
    }
    let _stop = Stop(&script, d);
    assert_eq!(run(&["psql", d, &port, p, "SELECT 1"]), "1", "the password still works");

    let psql = dir.join("pg/pgserver/pginstall/bin/psql");
    assert!(psql.is_file(), "as root the script runs a copy of the binaries in DIR");
    for user in ["nobody", "embedstream-pg"] {
        let out = Command::new("runuser")
            .args(["-u", user, "--"])
            .arg(&psql)
            .args(["-h", d, "-p", &port, "-U", "postgres", "-d", "postgres", "-w", "-X", "-A", "-t", "-c", "SELECT 1"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{user} reached the superuser through the socket: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(said.contains("Permission denied") || said.contains("password"), "{user}: {said}");
    }
}

/// Issue 36: the scripts a newcomer runs by hand say how with `--help` (exit 0, on stdout),
/// and a wrong call says it on stderr with exit 2.
#[test]
fn the_broker_and_postgres_scripts_answer_help() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (script, usage) in [
        ("deploy/broker.sh", "deploy/broker.sh start PORT DIR [PROPERTIES]"),
        ("deploy/postgres.sh", "deploy/postgres.sh start DIR PORT PASSWORD_FILE"),
    ] {
        let help = std::process::Command::new("bash").arg(root.join(script)).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success() && text.contains(usage), "{script} --help: {text}");
        assert!(!text.contains("set -euo"), "{script}: only the comment: {text}");
        let wrong = std::process::Command::new("bash").arg(root.join(script)).arg("frobnicate").output().unwrap();
        assert_eq!(wrong.status.code(), Some(2), "{script} frobnicate");
        assert!(!String::from_utf8_lossy(&wrong.stderr).is_empty(), "{script}: usage on stderr");
    }
}
