//! Child processes and their exits. The shim is a child subreaper: each
//! container's process (`mirage-runc`'s init, then the tender) is
//! reparented to it when `mirage-runc create` exits. One thread waits for
//! every child, so that a container's exit is never taken by a wait for a
//! `mirage-runc` command, nor the other way round: each exit goes to
//! whoever claims its pid, the commands' to the thread that ran them, the
//! containers' to the task service.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Exits nobody has claimed yet, by pid: at most this many are kept (a
/// process reparented to the shim that nobody waits for must not make
/// the map grow for good).
const MAX_UNCLAIMED: usize = 4096;

/// What a process's end is reported as: its exit status, or 128 plus the
/// signal that killed it, as a shell does.
pub fn exit_code(status: libc::c_int) -> u32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u32
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status) as u32
    } else {
        255
    }
}

type OnExit = Box<dyn Fn(i32, u32) -> bool + Send + Sync>;

pub struct Reaper {
    unclaimed: Mutex<HashMap<i32, u32>>,
    exited: Condvar,
    /// A child was started: the waiting thread, idle with none, looks again.
    spawned: Condvar,
    on_exit: OnExit,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub code: u32,
    pub stderr: String,
}

impl Reaper {
    /// Makes this process a child subreaper and starts the waiting
    /// thread; `on_exit(pid, code)` is offered each exit first and says
    /// whether it took it.
    pub fn start(on_exit: OnExit) -> Result<Arc<Reaper>, String> {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(format!("PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error()));
        }
        let r = Arc::new(Reaper {
            unclaimed: Mutex::new(HashMap::new()),
            exited: Condvar::new(),
            spawned: Condvar::new(),
            on_exit,
        });
        let me = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 << 10)
            .spawn(move || me.run())
            .map_err(|e| format!("cannot start the reaper thread: {e}"))?;
        Ok(r)
    }

    fn run(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // No children: wait until one is started (or a process is
                // reparented here, which a start precedes; the timeout
                // covers the rest).
                let g = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self.spawned.wait_timeout(g, Duration::from_millis(500));
                continue;
            }
            let code = exit_code(status);
            // Held while the exit is offered and kept, so that a claim
            // (`Reaper::claim`) sees it in one place or the other.
            let mut g = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
            if (self.on_exit)(pid, code) {
                continue;
            }
            if g.len() >= MAX_UNCLAIMED
                && let Some(&old) = g.keys().next()
            {
                g.remove(&old);
            }
            g.insert(pid, code);
            drop(g);
            self.exited.notify_all();
        }
    }

    /// Calls `f` with the exit of `pid` if it came before anyone claimed
    /// it; an exit that comes meanwhile waits for `f` to return and is
    /// then offered to `on_exit` (so `f` records the process where
    /// `on_exit` finds it). The lock order is this map, then whatever `f`
    /// and `on_exit` lock.
    pub fn claim<R>(&self, pid: i32, f: impl FnOnce(Option<u32>) -> R) -> R {
        let mut g = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        f(g.remove(&pid))
    }

    /// Runs `cmd` to its end: its exit code, and its standard error where
    /// `capture` (not for a command whose children keep it open).
    pub fn run_command(&self, cmd: &mut Command, capture: bool) -> Result<Output, String> {
        if capture {
            cmd.stderr(Stdio::piped());
        }
        let mut child = {
            // Held across the spawn so that the waiting thread, woken,
            // finds the child.
            let _g = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
            let c = cmd.spawn().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
            self.spawned.notify_all();
            c
        };
        let pid = child.id() as i32;
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            // Bounded: a command's complaint is a line or two.
            let _ = (&mut e).take(64 << 10).read_to_string(&mut stderr);
        }
        // Not `child.wait()`: the waiting thread reaps every child.
        let mut g = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = g.remove(&pid) {
                return Ok(Output { code, stderr });
            }
            g = self.exited.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}
