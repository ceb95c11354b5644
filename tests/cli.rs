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
