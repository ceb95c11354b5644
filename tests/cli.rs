//! Job-spec errors are refused before anything starts, with a message that names the key.

mod common;

use std::time::Duration;

use common::*;

fn spec_text(checkpoint: &std::path::Path, source: &str, rest: &str) -> String {
    let m = model_dir();
    format!(
        "name = \"bad\"\ncheckpoint_location = \"{}\"\n[source]\nbootstrap_servers = \"127.0.0.1:1\"\nsubscribe = [\"in\"]\n{source}\n\
         [model]\nonnx = \"{}\"\ntokenizer = \"{}\"\n[sink]\nkind = \"kafka\"\ntopic = \"out\"\n{rest}\n",
        checkpoint.display(),
        m.join("model.onnx").display(),
        m.join("tokenizer.json").display()
    )
}

#[test]
fn bad_specs_are_refused_naming_the_key_and_nothing_starts() {
    let cases = [
        ("max_offset_per_trigger = 10", "", "source.max_offset_per_trigger"),
        ("max_offsets_per_trigger = \"many\"", "", "source.max_offsets_per_trigger"),
        ("min_partitions = 0", "", "source.min_partitions"),
        ("starting_offsets = \"oldest\"", "", "source.starting_offsets"),
        ("", "format = \"f16\"", "sink.format"),
        ("", "[executors]\ncores = 0", "executors.cores"),
        ("", "[model2]\nx = 1", "model2"),
    ];
    for (source, rest, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("cp");
        let path = dir.path().join("job.toml");
        std::fs::write(&path, spec_text(&checkpoint, source, rest)).unwrap();
        for sub in ["validate", "run"] {
            let mut cmd = embedstream();
            cmd.args([sub, path.to_str().unwrap()]);
            let out = run_to_end(cmd, Duration::from_secs(30));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{sub} with {source:?}{rest:?}: {stderr}");
            assert!(stderr.contains(&format!("`{key}`")), "{sub}: the error names `{key}`: {stderr}");
            assert!(!stderr.contains("query starting"), "{sub}: no query was started: {stderr}");
            assert!(!checkpoint.exists(), "{sub}: nothing was written");
        }
    }
}

#[test]
fn a_missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    let text = spec_text(&dir.path().join("cp"), "", "").replace("model.onnx", "missing.onnx");
    std::fs::write(&path, text).unwrap();
    let mut cmd = embedstream();
    cmd.args(["run", path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`model.onnx`") && stderr.contains("missing.onnx"), "{stderr}");
}

#[test]
fn help_lists_the_commands() {
    let out = run_to_end(
        {
            let mut c = embedstream();
            c.arg("--help");
            c
        },
        Duration::from_secs(10),
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "validate", "produce"] {
        assert!(help.contains(cmd), "{help}");
    }
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("executor")),
        "the internal executor command stays hidden: {help}"
    );
}

/// Issue 14, finding 6 (in part): a resource manager on an address others can reach refuses to
/// start without a cluster token, before it listens or writes its state.
#[test]
fn a_reachable_resource_manager_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm-state.json");
    let mut rm = embedstream();
    rm.env_remove("EMBEDSTREAM_TOKEN").args([
        "resource-manager",
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "127.0.0.1:18030",
        "--state",
        state.to_str().unwrap(),
    ]);
    let out = run_to_end(rm, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("needs a cluster token") && stderr.contains("0.0.0.0:0"), "{stderr}");
    assert!(!state.exists(), "nothing written");
}

/// The stdout of `embedstream ARGS`, run without a token in the environment; it must succeed.
fn stdout_of(args: &[&str]) -> String {
    let mut cmd = embedstream();
    cmd.args(args).env_remove("EMBEDSTREAM_TOKEN");
    let out = run_to_end(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `embedstream ARGS` with its stdout a pipe whose reader is already gone (`| head` that has
/// read its lines): its exit code and stderr.
fn into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = embedstream();
    cmd.args(args).env_remove("EMBEDSTREAM_TOKEN").stdout(writer).stderr(std::process::Stdio::piped());
    let out = cmd.spawn().unwrap().wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 36: commands whose output goes to a reader that went away end with 0, no panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [vec!["man"], vec!["completions", "bash"]] {
        let (code, stderr) = into_closed_pipe(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// `embedstream ARGS` with `token` in the environment (none: unset): (success, stderr).
fn client_command(args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut cmd = embedstream();
    cmd.args(args).env_remove("EMBEDSTREAM_TOKEN");
    if let Some(t) = token {
        cmd.env("EMBEDSTREAM_TOKEN", t);
    }
    let out = run_to_end(cmd, Duration::from_secs(30));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 19, item 2: a client command that cannot reach its server, or is refused by it, says so
/// in one line naming the server and the address, never with tonic's debug dump.
#[test]
fn client_commands_say_in_one_line_what_they_could_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, spec_text(&dir.path().join("cp"), "", "")).unwrap();
    let job = job.to_str().unwrap();
    let dead = "rm://127.0.0.1:1";
    for args in [
        vec!["status", "--master", dead],
        vec!["status", "app-1", "--master", dead],
        vec!["stop", "app-1", "--master", dead],
        vec!["progress", "app-1", "--master", dead],
        vec!["scale", "app-1", "--executors", "2", "--master", dead],
        vec!["submit", job, "--master", dead],
    ] {
        let (ok, stderr) = client_command(&args, None);
        assert!(!ok, "{args:?}");
        assert_eq!(
            stderr.trim(),
            "error: cannot reach the resource manager at 127.0.0.1:1: connection refused",
            "{args:?}"
        );
    }
    let (ok, stderr) = client_command(&["status", "--driver", "127.0.0.1:1"], None);
    assert!(!ok);
    assert_eq!(stderr.trim(), "error: cannot reach the driver at 127.0.0.1:1: connection refused");
    for (args, flag) in [
        (vec!["scale", "app-1", "--executors", "0", "--master", dead], "--executors"),
        (vec!["submit", job, "--master", dead, "--driver-cores", "0"], "--driver-cores"),
        (vec!["produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--partitions", "0"], "--partitions"),
    ] {
        let (ok, stderr) = client_command(&args, None);
        assert!(!ok && stderr.contains(flag) && !stderr.contains("127.0.0.1:1"), "checked before any call: {stderr}");
    }

    // A live RM: a wrong token and an unknown application, each in one line.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let state = dir.path().join("rm-state.json");
    let mut rm = embedstream();
    rm.env("EMBEDSTREAM_TOKEN", "right")
        .args([
            "resource-manager",
            "--listen",
            &address,
            "--web-listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped());
    let mut rm = KillOnDrop(rm.spawn().unwrap());
    // Its log is read to the end by a thread (a closed pipe would fail its writes).
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(rm.0.stderr.take().unwrap());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    while !rx.recv_timeout(Duration::from_secs(30)).expect("the RM starts").contains("resource manager listening") {}
    let master = format!("rm://{address}");
    let (ok, stderr) = client_command(&["status", "--master", &master], Some("wrong"));
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: the resource manager at {address} refused the call: wrong cluster token \
             (the token comes from EMBEDSTREAM_TOKEN or --token-file)"
        )
    );
    let (ok, stderr) = client_command(&["status", "app-9", "--master", &master], Some("right"));
    assert!(!ok);
    assert_eq!(stderr.trim(), "error: no application app-9");
}

/// Issue 31, item 15: the shipped env file served the RM's page, whose sign-in takes the
/// cluster token, in clear on 0.0.0.0. The file now says loopback, and an RM asked to serve the
/// page in clear on a reachable address with a token refuses to start, naming the flag.
#[test]
fn the_rm_page_is_never_served_in_clear_with_a_token() {
    let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/embedstream.env")).unwrap();
    let web = env.lines().find_map(|l| l.strip_prefix("EMBEDSTREAM_RM_WEB_LISTEN=")).unwrap();
    assert!(web.parse::<std::net::SocketAddr>().unwrap().ip().is_loopback(), "{web}");
    assert!(env.lines().any(|l| l == "EMBEDSTREAM_TLS_FLAGS="), "the shipped file has no TLS");

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm-state.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = run_to_end(
        {
            let mut rm = embedstream();
            rm.env("EMBEDSTREAM_TOKEN", "right").args([
                "resource-manager",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--web-listen",
                "0.0.0.0:0",
                "--state",
                state.to_str().unwrap(),
            ]);
            rm
        },
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--web-listen 0.0.0.0:0") && stderr.contains("over TLS"), "{stderr}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 19, item 1: a dead broker. `run` contacts it before anything starts and ends with one
/// line naming the spec key, the address and the cause, after a handful of lines; `produce`
/// says what it waits for and fails in seconds, naming its flag.
#[test]
fn a_dead_broker_is_named_by_its_key_in_a_few_lines() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let job = dir.path().join("job.toml");
    std::fs::write(&job, spec_text(&checkpoint, "", "")).unwrap();
    let mut cmd = embedstream();
    cmd.args(["run", job.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() <= 6, "a few lines, not librdkafka's retries: {stderr}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("error: source.bootstrap_servers = \"127.0.0.1:1\": cannot reach the source cluster")
            && last.contains("Connection refused"),
        "{last}"
    );
    assert!(!stderr.contains("starting a local executor") && !checkpoint.exists(), "nothing started: {stderr}");

    let mut cmd = embedstream();
    cmd.args(["produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t"]).stdin(std::process::Stdio::null());
    let out = run_to_end(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("connecting to the broker"), "says what it waits for: {stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: --bootstrap-servers = \"127.0.0.1:1\": cannot reach the Kafka cluster"), "{last}");
}

/// Issue 19, item 7: the top-level help lists the environment variables and exit codes, a
/// subcommand's help describes its arguments and ends with an example, and `--version` names
/// the commit and the ONNX Runtime it expects.
#[test]
fn help_explains_and_version_names_the_build() {
    let help = stdout_of(&["--help"]);
    for needle in ["EMBEDSTREAM_TOKEN", "EMBEDSTREAM_CACHE", "EMBEDSTREAM_ORT_LIB", "RUST_LOG", "Exit codes:", "  2  "]
    {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let submit = stdout_of(&["submit", "--help"]);
    for needle in [
        "The job spec (TOML)",
        "rm://HOST:PORT (a cluster's resource manager), yarn (Hadoop YARN)",
        "Follow the application",
    ] {
        assert!(submit.contains(needle), "{needle}: {submit}");
    }
    assert!(submit.trim_end().ends_with("embedstream submit job.toml --master 'local[2]'"), "{submit}");
    let version = stdout_of(&["--version"]);
    assert!(
        version.starts_with("embedstream 0.") && version.contains("(commit ") && version.contains("ONNX Runtime 1.22"),
        "{version}"
    );
    assert!(!version.contains("commit unknown"), "built from a git checkout: {version}");
}

/// `validate` of a spec written in `dir` with `source` added to its [source]: (success,
/// stdout, stderr).
fn validate_with_source(dir: &std::path::Path, source: &str) -> (bool, String, String) {
    let job = dir.join("job.toml");
    std::fs::write(&job, spec_text(&dir.join("cp"), source, "")).unwrap();
    let mut cmd = embedstream();
    cmd.args(["validate", job.to_str().unwrap()]);
    let out = run_to_end(cmd, Duration::from_secs(30));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 19, item 4: a spec error a person can act on: the file and the line, the nearest key
/// for a misspelt one, and types in words.
#[test]
fn spec_errors_name_the_line_suggest_the_key_and_say_types_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    let validate = |source: &str| {
        let (ok, _, stderr) = validate_with_source(dir.path(), source);
        assert!(!ok);
        stderr.trim().to_string()
    };
    // spec_text puts [source] on line 3 and the test's own line after subscribe, on line 6.
    let typo = validate("max_offset_per_trigger = 10");
    assert!(typo.contains("did you mean `max_offsets_per_trigger`?"), "{typo}");
    assert!(typo.ends_with(&format!("(at {}:6)", job.display())), "{typo}");
    let wrong_type = validate("max_offsets_per_trigger = \"many\"");
    assert!(wrong_type.contains("expected a whole number") && !wrong_type.contains("u64"), "{wrong_type}");
}

/// Issue 19, item 3: a local query you can find. Its driver listens on 4040 (or the next free
/// port), says so in `<checkpoint>/driver.json`, shows up in `embedstream list`, and the admin
/// commands take its job spec or its checkpoint instead of `--driver`, with the token the
/// query made for itself (found through the record, never written in it).
#[test]
fn a_local_query_is_found_by_its_job_spec_and_listed() {
    let broker = Broker::start();
    broker.create_topic("findme", 1);
    broker.produce_texts("findme", 1, 0, &texts(10, 61));
    let job = Job::new(&broker, "findme", "subscribe = [\"findme\"]", "processing_time = \"200ms\"", "");
    let mut q = Running::start(&job, 1);
    q.wait_until("the 10 records committed", Duration::from_secs(90), |_| {
        broker.committed("findme-group", "findme", 1) == vec![10]
    });
    let record = read_checkpoint_file(&job.checkpoint().join("driver.json"));
    let port: u16 = record["address"].as_str().unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
    assert!((4040..=4056).contains(&port), "Spark's 4040, or one of the next ports: {record}");
    let driver_json = std::fs::read_to_string(job.checkpoint().join("driver.json")).unwrap();
    let token = std::fs::read_to_string(record["token_file"].as_str().unwrap()).unwrap();
    assert!(!driver_json.contains(token.trim()), "the record names the token's file, not the token");

    // Other queries of this user may run meanwhile (other tests): find this one by its checkpoint.
    let checkpoint = job.checkpoint().display().to_string();
    let listed = stdout_of(&["list"]);
    let line = listed.lines().find(|l| l.ends_with(&checkpoint)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.starts_with("findme ") && line.contains(record["address"].as_str().unwrap()), "{line}");
    let status = stdout_of(&["status", job.path.to_str().unwrap()]);
    assert!(status.contains("query findme") && status.contains("batches committed"), "{status}");
    // Issue 36: `status JOB | head` (a reader gone before the output) ends quietly with 0.
    let (code, stderr) = into_closed_pipe(&["status", job.path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout_of(&["pause", job.checkpoint().to_str().unwrap()]);
    assert!(stdout_of(&["status", job.path.to_str().unwrap()]).contains(") paused:"));
    stdout_of(&["stop", job.path.to_str().unwrap()]);
    assert_eq!(q.wait_for_exit("`embedstream stop JOB.toml`")["embeddings"], 10);
    let after = stdout_of(&["list"]);
    assert!(!after.contains(&checkpoint), "a stopped query is no longer listed: {after}");

    // Issue 36: started again from its checkpoint with nothing new to read, it says where it
    // is before any batch of its own (it said "next batch 0, committed offsets {}").
    let mut q = Running::start(&job, 1);
    let status = |_: &Running| {
        let (ok, out) = (|| {
            let out = embedstream()
                .args(["status", job.path.to_str().unwrap()])
                .env_remove("EMBEDSTREAM_TOKEN")
                .output()
                .ok()?;
            Some((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
        })()
        .unwrap_or_default();
        ok && out.contains("next batch 1") && out.contains(r#"committed offsets: {"findme":{"0":10}}"#)
    };
    q.wait_until("the resumed query's status", Duration::from_secs(60), status);
    // Two batches with time between them: the summary's rate while there was work leaves the
    // wait out (the rate over the whole processing span counts it).
    for (from, committed) in [(10, 15), (15, 20)] {
        broker.produce_texts("findme", 1, from, &texts(5, 62 + from));
        q.wait_until("the new records committed", Duration::from_secs(60), |_| {
            broker.committed("findme-group", "findme", 1) == vec![committed]
        });
    }
    let summary = q.stop();
    assert_eq!((summary["batches"].as_u64(), summary["embeddings"].as_u64()), (Some(2), Some(10)), "{summary}");
    let seconds = |k: &str| summary[k].as_f64().unwrap();
    assert!(seconds("busy_seconds") < seconds("processing_seconds"), "{summary}");
    assert!(seconds("processing_seconds") < seconds("wall_seconds"), "{summary}");
    assert!(seconds("embeddings_per_busy_second") > seconds("embeddings_per_second"), "{summary}");
}

/// Issue 19, items 5 and 9: relative paths in a spec are the spec folder's, whatever the working
/// directory; `--conf` sets a key without editing the file and `validate` shows it; `submit`
/// wants absolute output paths; `EMBEDSTREAM_MASTER` is the default `--master`.
#[test]
fn relative_paths_are_the_spec_folders_and_conf_overrides_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(model_dir(), dir.path().join("m")).unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "name = \"rel\"\ncheckpoint_location = \"cp\"\n[source]\nbootstrap_servers = \"127.0.0.1:1\"\n\
         subscribe = [\"in\"]\n[model]\nonnx = \"m/model.onnx\"\ntokenizer = \"m/tokenizer.json\"\n\
         [sink]\nkind = \"kafka\"\ntopic = \"out\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = embedstream();
    cmd.current_dir(elsewhere.path())
        .args(["validate", job.to_str().unwrap(), "--conf", "source.max_offsets_per_trigger=123"])
        .args(["--conf", "trigger.processing_time=\"2s\""]);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = dir.path().display();
    assert!(shown.contains(&format!("checkpoint_location = \"{base}/cp\"")), "{shown}");
    assert!(shown.contains(&format!("onnx = \"{base}/m/model.onnx\"")), "{shown}");
    assert!(shown.contains("max_offsets_per_trigger = 123") && shown.contains("processing_time = \"2s\""), "{shown}");

    let mut cmd = embedstream();
    cmd.args(["validate", job.to_str().unwrap(), "--conf", "source.max_offsets_per_trigger=0"]);
    let out = run_to_end(cmd, Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`source.max_offsets_per_trigger`: must be at least 1"));

    let (ok, stderr) = client_command(&["submit", job.to_str().unwrap(), "--master", "rm://127.0.0.1:1"], None);
    assert!(!ok && stderr.contains("`checkpoint_location`: `cp` is relative"), "{stderr}");
    let mut cmd = embedstream();
    cmd.args(["status"]).env("EMBEDSTREAM_MASTER", "rm://127.0.0.1:1");
    let out = run_to_end(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: cannot reach the resource manager at 127.0.0.1:1: connection refused");
}

/// Issue 19, item 9: shell completions and a man page, generated from the same definitions as
/// `--help`, so they know every subcommand.
#[test]
fn completions_and_the_man_page_know_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for sub in ["submit", "status", "list", "validate"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
    }
    let man = stdout_of(&["man"]);
    assert!(man.contains(".TH embedstream 1") && man.contains("EMBEDSTREAM_TOKEN"), "{man}");
}

/// Issue 19, item 6: `validate` shows what will run: the derived defaults, the sink's servers,
/// the ONNX Runtime library (a missing one refused here), `--json` for scripts, and with
/// `--check-broker` the partitions it would read, from a real broker.
#[test]
fn validate_shows_what_will_run() {
    let broker = Broker::start();
    broker.create_topic("shown", 2);
    broker.produce_texts("shown", 2, 0, &texts(5, 3));
    let job = Job::new(&broker, "shown", "subscribe = [\"shown\"]", "", "");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = embedstream();
        cmd.args(args).envs(env.iter().copied());
        let out = run_to_end(cmd, Duration::from_secs(60));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = job.path.to_str().unwrap();
    let (ok, shown, stderr) = run(&["validate", path, "--check-broker"], &[]);
    assert!(ok, "{stderr}");
    for needle in [
        "group_id = \"shown-group\"",
        "id = \"all-MiniLM-L6-v2\"",
        "dead_letter_topic = \"shown-dlq\"",
        &format!("# sink servers: {} (properties from [source.kafka])", broker.addr),
        "# ONNX Runtime: /",
        "# partitions it would read (2), earliest..latest offset:",
        "#   shown-0: 0..3",
        "#   shown-1: 0..2",
    ] {
        assert!(shown.contains(needle), "{needle}: {shown}");
    }
    let (ok, json, _) = run(&["validate", path, "--json"], &[]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spec"]["source"]["group_id"], "shown-group");
    assert_eq!(v["sink_bootstrap_servers"], broker.addr.as_str());
    assert!(v["partitions"].is_null(), "no broker call without --check-broker");
    let (ok, _, stderr) = run(&["validate", path], &[("EMBEDSTREAM_ORT_LIB", "/nonexistent/libonnxruntime.so")]);
    assert!(
        !ok && stderr.contains("the ONNX Runtime library /nonexistent/libonnxruntime.so does not exist"),
        "{stderr}"
    );
}

/// Issue 19, item 8: one spelling for durations. `poll_timeout_ms` is still read, as
/// `poll_timeout`, with a warning that says what to write; both at once are refused.
#[test]
fn the_old_poll_timeout_ms_is_read_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |source: &str| validate_with_source(dir.path(), source);
    let (ok, shown, stderr) = validate("poll_timeout_ms = 5000");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("`source.poll_timeout_ms` is deprecated: write `poll_timeout = \"5000ms\"`"), "{stderr}");
    assert!(shown.contains("poll_timeout = \"5000ms\"") && !shown.contains("poll_timeout_ms"), "{shown}");
    let (ok, _, stderr) = validate("poll_timeout_ms = 5000\npoll_timeout = \"5s\"");
    assert!(!ok && stderr.contains("`source.poll_timeout_ms`: set only `poll_timeout`"), "{stderr}");
}

/// Issue 19, item 4: every error of a spec at once, each with its key and line, not only the first.
#[test]
fn a_spec_with_several_errors_reports_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        spec_text(&dir.path().join("cp"), "max_offset_per_trigger = 10\nmin_partitions = 0", "format = \"f16\""),
    )
    .unwrap();
    let mut cmd = embedstream();
    cmd.args(["validate", job.to_str().unwrap()]);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for (key, line) in [("source.max_offset_per_trigger", 6), ("source.min_partitions", 7), ("sink.format", 14)] {
        let found =
            stderr.lines().find(|l| l.contains(&format!("`{key}`"))).unwrap_or_else(|| panic!("{key}: {stderr}"));
        assert!(found.ends_with(&format!("{}:{line})", job.display())), "{key} at line {line}: {found}");
    }
}

/// Issue 36: a subscribed topic that does not exist stops `run` and `validate --check-broker`
/// before anything starts, naming the topic and the key that waits for it; with
/// `source.allow_missing_topics = true` the query starts (a one-shot query ends with nothing
/// done).
#[test]
fn a_topic_that_does_not_exist_is_named_before_anything_starts() {
    let broker = Broker::start();
    let job = Job::new(&broker, "nosuch", "subscribe = [\"no-such-topic\"]", "available_now = true", "");
    let refused = run_refused(&job);
    assert!(
        refused.contains("topic no-such-topic: source.subscribe names it, but it does not exist")
            && refused.contains("source.allow_missing_topics = true"),
        "{refused}"
    );
    assert!(job.logged_batches("offsets").is_empty(), "nothing started");
    let (ok, stderr) = client_command(&["validate", job.path.to_str().unwrap(), "--check-broker"], None);
    assert!(!ok && stderr.contains("topic no-such-topic does not exist"), "{stderr}");

    let allow = ["--conf", "source.allow_missing_topics=true"];
    let (ok, stderr) =
        client_command(&["validate", job.path.to_str().unwrap(), "--check-broker", allow[0], allow[1]], None);
    assert!(ok && stderr.contains("do not exist yet (the query waits for them): no-such-topic"), "{stderr}");
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1", allow[0], allow[1]]);
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["batches"], 0, "{summary}");
}

/// `embedstream produce ARGS` with `input` on its stdin: (success, stderr).
fn produce_with(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut cmd = embedstream();
    cmd.arg("produce").args(args).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 36: `produce --key-field /sku` keys JSON lines by their SKU (the key an upsert table
/// keeps a row per), `--key-separator` keys text lines by their first part; a line without a key
/// stops the command, naming it.
#[test]
fn produce_keys_json_lines_by_a_field_and_text_lines_by_a_separator() {
    let broker = Broker::start();
    let lines = (0..20).map(|i| format!(r#"{{"sku": "A-{i}", "title": "hat {i}"}}"#)).collect::<Vec<_>>().join("\n");
    let (ok, stderr) = produce_with(
        &["--bootstrap-servers", &broker.addr, "--topic", "json", "--partitions", "2", "--key-field", "/sku"],
        &lines,
    );
    assert!(ok, "{stderr}");
    let mut got: Vec<(String, String)> = (broker.read_all("json", 2).iter())
        .map(|r| {
            (String::from_utf8(r.key.clone().unwrap()).unwrap(), String::from_utf8(r.value.clone().unwrap()).unwrap())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> =
        lines.lines().enumerate().map(|(i, l)| (format!("A-{i}"), l.to_string())).collect();
    want.sort();
    assert_eq!(got, want, "each line keyed by its SKU");

    let (ok, stderr) = produce_with(
        &["--bootstrap-servers", &broker.addr, "--topic", "text", "--key-separator", "|"],
        "k1|red hat\nk2|blue scarf\n",
    );
    assert!(ok, "{stderr}");
    let got: Vec<(String, String)> = (broker.read_all("text", 1).iter())
        .map(|r| {
            (String::from_utf8(r.key.clone().unwrap()).unwrap(), String::from_utf8(r.value.clone().unwrap()).unwrap())
        })
        .collect();
    assert_eq!(got, [("k1".to_string(), "red hat".to_string()), ("k2".to_string(), "blue scarf".to_string())]);

    let (ok, stderr) = produce_with(
        &["--bootstrap-servers", &broker.addr, "--topic", "json", "--key-field", "/sku"],
        "{\"title\": \"no sku\"}\n",
    );
    assert!(!ok && stderr.contains("line 1 has no /sku (--key-field)"), "{stderr}");
}
