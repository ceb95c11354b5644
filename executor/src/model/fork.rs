//! The only unsafe code of embedstream: process creation for the model daemon, behind a small
//! safe interface.
//!
//! Why it is sound: `fork` duplicates only the calling thread. The model daemon calls it from its
//! main thread before it has started any thread of its own: it is exec'd fresh as
//! `embedstream model-daemon` (no tokio runtime), and ONNX Runtime is configured with one
//! intra-op thread, sequential execution, no spinning and no global thread pool, and the
//! tokenizer with `TOKENIZERS_PARALLELISM=false`. The child then only runs code that the parent
//! had fully initialised (the session and tokenizer, whose locks were not held at the fork) and
//! leaves with `_exit`, never through normal process exit, because ONNX Runtime's exit handlers
//! hang in a forked child.
//!
//! Process control goes through `nix`'s wrappers (fork, waitpid, the parent-death signal); only
//! `fork` itself and `_exit` (which nix does not wrap) are unsafe or raw `libc` here.

use std::io;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;

/// Forks a child that runs `body` and leaves with `_exit(body's code)` (101 if it panics).
/// Returns the child's pid to the parent. Refused unless this process has exactly one thread:
/// the soundness of `fork` rests on it, so it is checked, not assumed.
pub fn fork_child(body: impl FnOnce() -> i32) -> io::Result<i32> {
    match thread_count() {
        Some(1) => {}
        threads => {
            return Err(io::Error::other(format!(
                "refusing to fork: the process has {} threads, and a forked child of a \
                 multi-threaded process may inherit a lock another thread held",
                threads.map_or("an unknown number of".to_string(), |n| n.to_string())
            )))
        }
    }
    // SAFETY: see the module comment: the caller is single-threaded (checked above), and the
    // child never returns into the caller: it runs `body` and exits through `_exit`.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            exit_now(code)
        }
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

/// Leaves the process at once, without exit handlers or destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return. nix has no wrapper for it.
    unsafe { libc::_exit(code) }
}

/// Asks the kernel to kill this process when its parent dies, so that no daemon or worker
/// outlives the executor that started it.
pub fn die_with_parent() {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        tracing::warn!(error = %e, "cannot set the parent-death signal");
    }
}

/// Waits for any child to end; returns its pid and a description of how it ended.
pub fn wait_any_child() -> io::Result<(i32, String)> {
    loop {
        match waitpid(None, None).map_err(io::Error::from)? {
            WaitStatus::Exited(pid, code) => return Ok((pid.as_raw(), format!("exit code {code}"))),
            WaitStatus::Signaled(pid, signal, _) => {
                return Ok((pid.as_raw(), format!("killed by signal {}", signal as i32)))
            }
            // Stopped or traced children are not ends (and are only reported when asked for).
            _ => continue,
        }
    }
}

/// Number of threads of this process, from /proc/self/status.
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 31, item 17: the daemon only logged its thread count before forking.
    #[test]
    fn refuse_to_fork_a_model_daemon_that_has_more_than_one_thread() {
        // Another thread, alive while the fork is asked for (the test harness may have more).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let threads = thread_count().unwrap();
        assert!(threads >= 2);
        let e = fork_child(|| 0).unwrap_err();
        assert!(e.to_string().contains(&format!("the process has {threads} threads")), "{e}");
        drop(tx);
        let _ = other.join();
    }
}
