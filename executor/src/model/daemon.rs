//! The model daemon: `embedstream model-daemon`, started by an executor through exec so that it
//! begins single-threaded. It loads the tokenizer and the ONNX session once (one intra-op
//! thread), runs a warm-up batch, then forks one worker per core. Workers share the weights with
//! the daemon copy-on-write: a worker that dies is replaced by a new fork within milliseconds,
//! without loading the model again.
//!
//! Each worker slot has a Unix socket, `<socket_dir>/worker-<i>.sock`, bound by the daemon before
//! the fork: the worker accepts connections on it, and its replacement inherits the same socket,
//! so an executor that lost a worker simply connects again.
//!
//! The daemon talks to the executor through its stdout, one line per event:
//! `ready dim=<D> pids=<p0>,<p1>,...`, `restarted <slot> <pid> <how the old one ended>`, or
//! `error <message>` (before exiting 1) when the model cannot be loaded.

use std::io::{BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use embedstream_core::spec::ModelSpec;

use super::fork;
use super::wire;
use crate::model::{self, Embedder};

pub struct DaemonArgs {
    pub model: ModelSpec,
    pub workers: usize,
    pub socket_dir: PathBuf,
    pub ort_library: PathBuf,
}

pub fn socket_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("worker-{slot}.sock"))
}

/// Runs the daemon; returns only on a start error (the exit code), after printing `error ...`.
pub fn run(args: DaemonArgs) -> i32 {
    fork::die_with_parent();
    let embedder = match model::init_runtime(&args.ort_library).and_then(|()| Embedder::load(&args.model, 1)) {
        Ok(e) => e,
        Err(e) => {
            println!("error {e}");
            return 1;
        }
    };
    let mut listeners = Vec::new();
    for slot in 0..args.workers {
        let path = socket_path(&args.socket_dir, slot);
        let _ = std::fs::remove_file(&path);
        // Only this user may connect: the directory is private (`WorkerPool::start`), and so is
        // each socket.
        let bound = UnixListener::bind(&path)
            .and_then(|l| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map(|()| l));
        match bound {
            Ok(l) => listeners.push(l),
            Err(e) => {
                println!("error cannot bind {}: {e}", path.display());
                return 1;
            }
        }
    }
    tracing::debug!(threads = ?fork::thread_count(), "daemon loaded the model; forking workers");

    let limit = wire::request_limit(&args.model);
    let spawn = |slot: usize| fork::fork_child(|| serve(&listeners[slot], &embedder, limit));
    let mut pids = Vec::new();
    for slot in 0..args.workers {
        match spawn(slot) {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                println!("error cannot fork worker {slot}: {e}");
                return 1;
            }
        }
    }
    let list: Vec<String> = pids.iter().map(i32::to_string).collect();
    println!("ready dim={} pids={}", embedder.dim(), list.join(","));

    loop {
        let (pid, how) = match fork::wait_any_child() {
            Ok(x) => x,
            Err(e) => {
                println!("error waiting for workers: {e}");
                return 1;
            }
        };
        let Some(slot) = pids.iter().position(|&p| p == pid) else { continue };
        match spawn(slot) {
            Ok(new) => {
                pids[slot] = new;
                println!("restarted {slot} {new} {how}");
            }
            Err(e) => {
                println!("error cannot fork a replacement for worker {slot}: {e}");
                return 1;
            }
        }
    }
}

/// A worker: answers one connection at a time, one reply per request, forever.
fn serve(listener: &UnixListener, embedder: &Embedder, limit: usize) -> i32 {
    fork::die_with_parent();
    loop {
        let Ok((stream, _)) = listener.accept() else { return 2 };
        // A broken connection only ends that connection; the worker takes the next one.
        let _ = answer(stream, embedder, limit);
    }
}

fn answer(stream: UnixStream, embedder: &Embedder, limit: usize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    while let Some((kind, payload)) = wire::read_frame(&mut reader, limit)? {
        if kind != wire::TEXTS {
            wire::write_frame(&mut writer, wire::ERROR, format!("unexpected frame kind {kind}").as_bytes())?;
            continue;
        }
        let texts = wire::decode_texts(&payload)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        match embedder.embed(&refs) {
            Ok(v) => wire::write_frame(&mut writer, wire::VECTORS, &wire::encode_vectors(v, embedder.dim()))?,
            Err(e) => wire::write_frame(&mut writer, wire::ERROR, e.to_string().as_bytes())?,
        }
    }
    Ok(())
}
