//! The executor's side of the model workers. [`Workers`] starts a model's daemon (a text or an
//! image model) and sends each encoded batch to a free worker over its Unix socket;
//! [`WorkerPool`], a text model's, orders a task's texts by length and cuts them into batches
//! of `batch_size` (an image model's is `images::pool`). A batch whose worker dies is sent again (to the replacement the daemon
//! forks for that slot); its vectors are used once, so nothing is lost or written twice. A
//! worker that does not answer by the batch's deadline (`model.worker_timeout_per_text`) is
//! killed, so that the daemon forks a new one, and the batch goes to it. A slot comes back to
//! the pool whatever ends the batch's future ([`Lease`]).
//!
//! Texts are ordered by token length here (the executor counts tokens with the same tokenizer;
//! ordering by byte length instead was measured 25% slower on mixed English, whose identifiers
//! split into many word pieces). Each worker tokenizes its batch again and pads it to its own
//! longest text.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use embedstream_core::argv::{ModelDaemonCommand, ProcessCommand};
use embedstream_core::spec::{ModelEntry, ModelSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::daemon::socket_path;
use super::wire;
use crate::model::{self, ModelError};

/// Attempts per batch, 50 ms apart and then more (about 4 s in all, enough for a daemon to
/// restart and load the model again); a worker replaced between attempts answers the next one.
const BATCH_ATTEMPTS: u32 = 8;

/// What the daemon reported about its workers.
#[derive(Debug, Default)]
pub struct WorkerState {
    pub daemon_pid: u32,
    pub worker_pids: Vec<u32>,
    /// Workers forked to replace dead ones (those of a restarted daemon included).
    pub restarts: u64,
    pub daemon_restarts: u64,
    /// Workers killed because they did not answer a batch by its deadline.
    pub hung: u64,
}

/// One model's daemon and its forked workers, whatever the model: batches in, vectors out.
pub struct Workers {
    /// Owns the daemon process (killed when the task is aborted, on drop).
    supervisor: tokio::task::JoinHandle<()>,
    socket_dir: PathBuf,
    /// Idle connections per slot (None: connect on first use).
    idle: Mutex<Vec<(usize, Option<UnixStream>)>>,
    free: Semaphore,
    dim: usize,
    limits: BatchLimits,
    state: Arc<Mutex<WorkerState>>,
}

/// What bounds a model's batches: its largest batch (the answers' size), and how long a worker
/// may take per item of a batch, on top of `WORKER_GRACE`.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub batch_size: usize,
    pub per_item: Duration,
}

impl BatchLimits {
    fn deadline(&self, items: usize) -> Duration {
        embedstream_core::spec::model::WORKER_GRACE + self.per_item.saturating_mul(items.max(1) as u32)
    }
}

/// A text model's workers: texts ordered by token length, cut into batches.
pub struct WorkerPool {
    workers: Workers,
    /// Batch size.
    model: ModelSpec,
    /// Counts tokens to order texts.
    tokenizer: Arc<tokenizers::Tokenizer>,
}

/// How to start the daemon; kept to start it again.
#[derive(Clone)]
struct DaemonCommand {
    exe: PathBuf,
    command: ModelDaemonCommand,
}

type DaemonLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

impl DaemonCommand {
    /// Starts the daemon and waits for its `ready` line: (process, its further lines, dim, worker pids).
    async fn start(&self) -> Result<(Child, DaemonLines, usize, Vec<u32>), ModelError> {
        let fail = |message: String| ModelError::Daemon(message);
        let mut command = Command::new(&self.exe);
        command
            .args(self.command.argv())
            // The daemon and its forked workers never call another process: they get no token.
            .env_remove(embedstream_core::auth::TOKEN_ENV)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut daemon = spawn_from_lasting_thread(command)
            .await
            .map_err(|e| fail(format!("cannot start {} model-daemon: {e}", self.exe.display())))?;
        let mut lines = BufReader::new(daemon.stdout.take().expect("piped stdout")).lines();
        let first = lines.next_line().await.map_err(|e| fail(e.to_string()))?;
        match first.as_deref().map(parse_ready) {
            Some(Ok((dim, pids))) => Ok((daemon, lines, dim, pids)),
            Some(Err(message)) => Err(fail(message)),
            None => Err(fail(format!("model daemon exited ({:?}) before it was ready", daemon.wait().await.ok()))),
        }
    }
}

/// A start request for the daemon's thread.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// Starts `command` from the one thread that lives as long as the executor, and returns the
/// child to the calling task. The daemon asks the kernel to kill it when its parent dies
/// (`PR_SET_PDEATHSIG`), and Linux means the parent *thread*: started from a tokio thread it
/// would die with that thread, and tokio's blocking-pool threads retire when idle (and
/// `block_in_place` turns worker threads into such threads).
async fn spawn_from_lasting_thread(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("model-daemon-parent".into())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .expect("a thread for starting model daemons");
        tx
    });
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        // tokio's child handling (the SIGCHLD reaper) belongs to the caller's runtime.
        let _entered = runtime.enter();
        let _ = tx.send(command.spawn());
    });
    spawner.send(job).expect("the model daemons' parent thread lives as long as the process");
    rx.await.expect("the model daemons' parent thread answers every start")
}

/// Follows the daemon's reports; when the daemon itself dies, starts a new one (which forks new
/// workers on the same sockets).
async fn supervise(cmd: DaemonCommand, mut daemon: Child, mut lines: DaemonLines, state: Arc<Mutex<WorkerState>>) {
    loop {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("restarted") {
                let slot: Option<usize> = parts.next().and_then(|s| s.parse().ok());
                let pid: Option<u32> = parts.next().and_then(|s| s.parse().ok());
                let how: Vec<&str> = parts.collect();
                tracing::warn!(?slot, ?pid, how = how.join(" "), "model worker died; replaced by a new fork");
                let mut s = state.lock().unwrap();
                s.restarts += 1;
                if let (Some(slot), Some(pid)) = (slot, pid) {
                    if let Some(p) = s.worker_pids.get_mut(slot) {
                        *p = pid;
                    }
                }
            } else {
                tracing::error!(%line, "model daemon");
            }
        }
        let status = daemon.wait().await.ok();
        tracing::error!(?status, "model daemon exited; starting a new one");
        loop {
            match cmd.start().await {
                Ok((d, l, _, pids)) => {
                    let mut s = state.lock().unwrap();
                    s.daemon_pid = d.id().unwrap_or(0);
                    s.restarts += pids.len() as u64;
                    s.worker_pids = pids;
                    s.daemon_restarts += 1;
                    (daemon, lines) = (d, l);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "model daemon did not start again; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl Workers {
    /// Starts `exe model-daemon` for `model` (a text or image entry, named) with `workers`
    /// workers and waits until they are forked. A daemon that cannot load the model fails this
    /// call with its message (naming the file).
    pub async fn start(
        exe: &Path,
        model: &ModelEntry,
        workers: usize,
        ort_library: &Path,
        socket_dir: PathBuf,
        limits: BatchLimits,
    ) -> Result<Workers, ModelError> {
        // Private and new: made here with mode 0700, so a directory someone else made first (or
        // left behind) is refused rather than used.
        std::fs::DirBuilder::new().mode(0o700).create(&socket_dir).map_err(|e| {
            ModelError::Daemon(format!("socket directory {} (must not exist yet): {e}", socket_dir.display()))
        })?;
        let cmd = DaemonCommand {
            exe: exe.to_path_buf(),
            command: ModelDaemonCommand {
                model_toml: toml::to_string(model).expect("a model spec serialises"),
                workers,
                ort_library: ort_library.to_path_buf(),
                socket_dir: socket_dir.clone(),
            },
        };
        // A pool that does not start leaves no directory behind.
        let (daemon, lines, dim, worker_pids) = cmd.start().await.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&socket_dir);
        })?;
        let daemon_pid = daemon.id().unwrap_or(0);
        let state = Arc::new(Mutex::new(WorkerState { daemon_pid, worker_pids, ..Default::default() }));
        let supervisor = tokio::spawn(supervise(cmd, daemon, lines, state.clone()));
        Ok(Workers {
            supervisor,
            socket_dir,
            idle: Mutex::new((0..workers).map(|slot| (slot, None)).collect()),
            free: Semaphore::new(workers),
            dim,
            limits,
            state,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Workers no batch holds now.
    pub fn idle_workers(&self) -> usize {
        self.free.available_permits()
    }

    /// Pids, restarts and liveness of the daemon and its workers.
    pub fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap()
    }
    /// Sends one encoded batch (`kind`, a frame of [`wire`]) of `items` texts or images to a free
    /// worker; its vectors, `items * dim()` values.
    pub async fn run(&self, kind: u8, request: &[u8], items: usize) -> Result<Vec<f32>, ModelError> {
        let vectors = self.run_batch(kind, request, items).await?;
        if vectors.len() != items * self.dim {
            return Err(ModelError::Inference(format!(
                "a worker returned {} values for {items} inputs",
                vectors.len()
            )));
        }
        Ok(vectors)
    }
}

impl WorkerPool {
    /// Starts the text model's daemon with `workers` workers (see [`Workers::start`]).
    pub async fn start(
        exe: &Path,
        model: &ModelSpec,
        workers: usize,
        ort_library: &Path,
        socket_dir: PathBuf,
    ) -> Result<WorkerPool, ModelError> {
        let tokenizer = Arc::new(model::load_tokenizer(model)?);
        let entry = ModelEntry::TextOnnx(ModelSpec { name: Some(model.model_id()), ..model.clone() });
        let limits = BatchLimits { batch_size: model.batch_size, per_item: model.worker_timeout_per_text.get() };
        let workers = Workers::start(exe, &entry, workers, ort_library, socket_dir, limits).await?;
        Ok(WorkerPool { workers, model: model.clone(), tokenizer })
    }

    /// The daemon and workers under it.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn dim(&self) -> usize {
        self.workers.dim
    }

    /// Workers no batch holds now.
    pub fn idle_workers(&self) -> usize {
        self.workers.idle_workers()
    }

    /// Pids, restarts and liveness of the daemon and its workers.
    pub fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.workers.state()
    }

    /// Embeds `texts`: `texts.len() * dim()` values, text `i` at `i * dim()`. Also returns the
    /// size of each batch sent to a worker.
    pub async fn embed(self: &Arc<Self>, texts: Vec<String>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let n = texts.len();
        // Tokenized once, here: the lengths order the texts, and the workers get the tokens.
        let tokenizer = self.tokenizer.clone();
        let encoded = tokio::task::spawn_blocking(move || model::session::encode_all(&tokenizer, &texts))
            .await
            .expect("tokenizing does not panic")?;
        let encoded = Arc::new(encoded);
        let lengths: Vec<usize> = encoded.iter().map(|e| e.len()).collect();
        // Longest first: the biggest batches start first and the workers finish together.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut jobs = tokio::task::JoinSet::new();
        let batches = cut_batches(&order, &lengths, self.model.batch_size, self.model.max_batch_tokens);
        for (n, chunk) in batches.into_iter().enumerate() {
            let (pool, encoded) = (self.clone(), encoded.clone());
            jobs.spawn(async move {
                let batch: Vec<(&[u32], &[u32])> =
                    chunk.iter().map(|&i| (encoded[i].get_ids(), encoded[i].get_type_ids())).collect();
                let vectors = pool.workers.run(wire::TOKENS, &wire::encode_tokens(&batch), batch.len()).await;
                (n, chunk, vectors)
            });
        }
        let dim = self.dim();
        let mut out = vec![0f32; n * dim];
        let mut sizes = Vec::new();
        while let Some(done) = jobs.join_next().await {
            let (_, chunk, vectors) = done.expect("batch jobs do not panic");
            let vectors = vectors?;
            for (row, &i) in chunk.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&vectors[row * dim..(row + 1) * dim]);
            }
            sizes.push(chunk.len());
        }
        Ok((out, sizes))
    }
}

/// Batches over `order` (text indices, longest first): at most `batch_size` texts each, and with
/// a token budget at most `budget` padded tokens (its texts times its longest text's tokens). A
/// text over the budget alone still gets a batch of its own.
fn cut_batches(order: &[usize], lengths: &[usize], batch_size: usize, budget: Option<usize>) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let (mut current, mut longest) = (Vec::new(), 0usize);
    for &i in order {
        let len = lengths[i].max(1);
        let padded = (current.len() + 1).saturating_mul(longest.max(len));
        let fits = current.len() < batch_size && budget.is_none_or(|b| padded <= b);
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl Workers {
    /// Sends one encoded batch of `items` inputs to a free worker, again after a lost
    /// connection, and again to a new worker after one that did not answer by its deadline.
    async fn run_batch(&self, kind: u8, request: &[u8], items: usize) -> Result<Vec<f32>, ModelError> {
        let mut lease = self.lease().await;
        let slot = lease.slot;
        let deadline = self.limits.deadline(items);
        let limit = wire::answer_limit(self.limits.batch_size, self.dim);
        let mut last_error = String::new();
        let mut pause = false;
        for attempt in 0..BATCH_ATTEMPTS {
            if pause {
                tokio::time::sleep(Duration::from_millis((50 << attempt).min(1000))).await;
            }
            // A connection kept from before may belong to a worker that has died since: its
            // failure is retried at once on a new connection; a new connection's failure waits.
            // While the exchange runs the connection is out of the lease: a future dropped
            // mid-exchange leaves the slot with no connection, and its next user connects anew.
            pause = lease.conn.is_none();
            let mut stream = match lease.conn.take() {
                Some(s) => s,
                None => match UnixStream::connect(socket_path(&self.socket_dir, slot)).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                },
            };
            match tokio::time::timeout(deadline, exchange(&mut stream, kind, request, limit)).await {
                Ok(Ok((kind, payload))) => {
                    lease.conn = Some(stream);
                    return match kind {
                        wire::VECTORS => wire::decode_vectors(&payload)
                            .map(|(v, _)| v)
                            .map_err(|e| ModelError::Inference(e.to_string())),
                        _ => Err(ModelError::Inference(String::from_utf8_lossy(&payload).into_owned())),
                    };
                }
                // The worker died with the batch: the daemon forks a replacement on the same socket.
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => {
                    last_error = format!("no answer in {deadline:?} for {items} inputs");
                    self.kill_hung_worker(slot, deadline);
                    pause = true;
                }
            }
        }
        Err(ModelError::Inference(format!("worker {slot}: {last_error}")))
    }

    /// Takes a free slot, waiting for one.
    async fn lease(&self) -> Lease<'_> {
        let permit = self.free.acquire().await.expect("the semaphore is never closed");
        let (slot, conn) =
            self.idle.lock().unwrap().pop().expect("a permit means a free slot: leases give theirs back");
        Lease { pool: self, slot, conn, _permit: permit }
    }

    /// Kills the worker of `slot`, which did not answer in time (stopped, or stuck in the
    /// model); the daemon forks a new one on the same socket, as for a worker that died.
    fn kill_hung_worker(&self, slot: usize, deadline: Duration) {
        let (pid, daemon) = {
            let mut state = self.state.lock().unwrap();
            let Some(pid) = state.worker_pids.get(slot).copied().filter(|&p| p > 0) else { return };
            state.hung += 1;
            (pid, state.daemon_pid)
        };
        tracing::warn!(slot, pid, ?deadline, "model worker did not answer by its deadline; killing it");
        match kill_child_of(daemon, pid) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(slot, pid, "the hung worker is gone (its pid is no longer the daemon's child)"),
            Err(e) => tracing::warn!(slot, pid, error = %e, "cannot kill the hung worker"),
        }
    }
}

/// SIGKILLs `pid` only if it is still a child of `parent` (the model daemon). A worker's pid is
/// only freed for reuse once the daemon reaps it, so a pid whose parent is no longer the
/// daemon was recycled for another process, which must not be signalled. Returns whether it
/// was signalled.
fn kill_child_of(parent: u32, pid: u32) -> nix::Result<bool> {
    if parent == 0 || embedstream_core::telemetry::parent_pid(pid) != Some(parent) {
        return Ok(false);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    Ok(true)
}

/// A worker slot in use. Whatever ends the future that holds it (its batch done or failed, or
/// the future dropped: a cancelled task, a Flight client gone, a failed batch aborting its
/// siblings), dropping the lease puts the slot back (with its connection, if the exchange
/// finished) before the permit that counts it is released.
struct Lease<'a> {
    pool: &'a Workers,
    slot: usize,
    conn: Option<UnixStream>,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.idle.lock().unwrap().push((self.slot, self.conn.take()));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

async fn exchange(stream: &mut UnixStream, kind: u8, request: &[u8], limit: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(request.len() as u32).to_le_bytes());
    stream.write_all(&head).await?;
    stream.write_all(request).await?;
    stream.read_exact(&mut head).await?;
    let mut payload = vec![0u8; wire::frame_len(&head, limit)?];
    stream.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

/// `ready dim=D pids=a,b` to (D, pids); `error MESSAGE` to the message.
fn parse_ready(line: &str) -> Result<(usize, Vec<u32>), String> {
    if let Some(message) = line.strip_prefix("error ") {
        return Err(message.to_string());
    }
    let mut dim = None;
    let mut pids = Vec::new();
    for part in line
        .strip_prefix("ready ")
        .ok_or_else(|| format!("unexpected line from the model daemon: {line}"))?
        .split_whitespace()
    {
        if let Some(d) = part.strip_prefix("dim=") {
            dim = d.parse().ok();
        } else if let Some(p) = part.strip_prefix("pids=") {
            pids = p.split(',').filter_map(|x| x.parse().ok()).collect();
        }
    }
    Ok((dim.ok_or("the daemon gave no dimension")?, pids))
}

#[cfg(test)]
mod tests {
    use super::cut_batches;

    #[test]
    fn a_token_budget_puts_short_texts_in_large_batches_and_long_ones_in_small() {
        // Longest first, as `embed` orders them: four of 128 tokens, eight of 16.
        let lengths = [128, 128, 128, 128, 16, 16, 16, 16, 16, 16, 16, 16];
        let order: Vec<usize> = (0..lengths.len()).collect();
        let fixed = cut_batches(&order, &lengths, 8, None);
        assert_eq!(fixed.iter().map(Vec::len).collect::<Vec<_>>(), [8, 4]);
        let budget = cut_batches(&order, &lengths, 8, Some(256));
        assert_eq!(budget.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 8]);
        // Every text once, in the order given.
        assert_eq!(budget.concat(), order);
        for batch in &budget {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(batch.len() * longest <= 256);
        }
        // A text over the budget still goes, alone.
        assert_eq!(cut_batches(&[0, 1], &[500, 10], 8, Some(256)), [vec![0], vec![1]]);
        assert!(cut_batches(&[], &[], 8, Some(256)).is_empty());
    }
}

#[cfg(test)]
mod kill_tests {
    use super::*;

    /// Issue 31, item 17: the hung-worker kill signalled whatever process had the pid the
    /// daemon once reported, even one that had recycled it.
    #[test]
    fn the_worker_kill_must_not_signal_a_recycled_pid() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let me = std::process::id();
        assert_eq!(embedstream_core::telemetry::parent_pid(pid), Some(me));
        // The same pid seen as another parent's child: what a recycled pid looks like.
        assert!(!kill_child_of(1, pid).unwrap(), "not the daemon's child: not signalled");
        assert!(child.try_wait().unwrap().is_none(), "the process is still running");
        assert!(kill_child_of(me, pid).unwrap());
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        assert!(!kill_child_of(me, pid).unwrap(), "reaped: its pid is nobody's child of ours");
    }
}
