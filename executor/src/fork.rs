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

use std::io;

/// Forks a child that runs `body` and leaves with `_exit(body's code)` (101 if it panics).
/// Returns the child's pid to the parent.
pub fn fork_child(body: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: see the module comment: the caller is single-threaded, and the child never
    // returns into the caller: it runs `body` and exits through `_exit`.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            exit_now(code)
        }
        pid => Ok(pid),
    }
}

/// Leaves the process at once, without exit handlers or destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Asks the kernel to kill this process when its parent dies, so that no daemon or worker
/// outlives the executor that started it.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// Waits for any child to end; returns its pid and a description of how it ended.
pub fn wait_any_child() -> io::Result<(i32, String)> {
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, a valid i32.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    let how = if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit code {}", libc::WEXITSTATUS(status))
    };
    Ok((pid, how))
}

/// Number of threads of this process, from /proc/self/status.
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
}
