//! The model daemon: `embedstream model-daemon`, started by an executor through exec so that it
//! begins single-threaded. It loads one model once (a text model's tokenizer and session, or an
//! image model's session; one intra-op thread), runs a warm-up batch, then forks one worker per
//! core. Workers share the weights with
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

use embedstream_core::spec::ModelEntry;

use super::fork;
use super::wire;
use crate::images::session::ImageSession;
use crate::model::{self, Embedder, ModelError};

pub struct DaemonArgs {
    /// A `text-onnx` or `image-onnx` entry.
    pub model: ModelEntry,
    pub workers: usize,
    pub socket_dir: PathBuf,
    pub ort_library: PathBuf,
}

pub fn socket_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("worker-{slot}.sock"))
}

/// What a worker runs: a text model (texts in) or an image model (tensors in).
enum Loaded {
    /// Boxed: a tokenizer and its session are far larger than an image session.
    Text(Box<Embedder>),
    Image(ImageSession),
}

impl Loaded {
    fn load(entry: &ModelEntry) -> Result<(Loaded, usize), ModelError> {
        match entry {
            ModelEntry::TextOnnx(m) => Ok((Loaded::Text(Box::new(Embedder::load(m, 1)?)), wire::request_limit(m))),
            ModelEntry::ImageOnnx(m) => Ok((Loaded::Image(ImageSession::load(m)?), wire::image_request_limit(m))),
            other => Err(ModelError::Daemon(format!("model `{}` is not one that runs in workers", other.name()))),
        }
    }

    fn dim(&self) -> usize {
        match self {
            Loaded::Text(e) => e.dim(),
            Loaded::Image(s) => s.dim(),
        }
    }

    /// The answer to one request frame: vectors, or why there are none.
    fn answer(&self, kind: u8, payload: &[u8]) -> std::io::Result<Result<Vec<f32>, String>> {
        Ok(match (self, kind) {
            (Loaded::Text(embedder), wire::TEXTS) => {
                let texts = wire::decode_texts(payload)?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder.embed(&refs).map_err(|e| e.to_string())
            }
            (Loaded::Text(embedder), wire::TOKENS) => {
                let rows = wire::decode_tokens(payload)?;
                let rows: Vec<(&[u32], &[u32])> = rows.iter().map(|(i, t)| (i.as_slice(), t.as_slice())).collect();
                embedder.embed_tokens(&rows).map_err(|e| e.to_string())
            }
            (Loaded::Image(session), wire::IMAGES) => {
                let (pixels, _) = wire::decode_pixels(payload)?;
                session.embed(&pixels).map_err(|e| e.to_string())
            }
            (_, kind) => Err(format!("unexpected frame kind {kind} for this model")),
        })
    }
}

/// Runs the daemon; returns only on a start error (the exit code), after printing `error ...`.
pub fn run(args: DaemonArgs) -> i32 {
    fork::die_with_parent();
    let loaded = model::init_runtime(&args.ort_library).and_then(|()| Loaded::load(&args.model));
    let (embedder, limit) = match loaded {
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
fn serve(listener: &UnixListener, embedder: &Loaded, limit: usize) -> i32 {
    fork::die_with_parent();
    loop {
        let Ok((stream, _)) = listener.accept() else { return 2 };
        // A broken connection only ends that connection; the worker takes the next one.
        let _ = answer(stream, embedder, limit);
    }
}

fn answer(stream: UnixStream, embedder: &Loaded, limit: usize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    while let Some((kind, payload)) = wire::read_frame(&mut reader, limit)? {
        match embedder.answer(kind, &payload)? {
            Ok(v) => wire::write_frame(&mut writer, wire::VECTORS, &wire::encode_vectors(v, embedder.dim()))?,
            Err(e) => wire::write_frame(&mut writer, wire::ERROR, e.as_bytes())?,
        }
    }
    Ok(())
}
