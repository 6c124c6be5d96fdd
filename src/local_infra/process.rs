//! Child server processes that cannot outlive us.
//!
//! Servers are spawned from one long-lived keeper thread with
//! `PR_SET_PDEATHSIG`, so the kernel kills them when this process dies, even by
//! SIGKILL (the signal is tied to the spawning thread, hence the keeper). Normal
//! exits also run an `atexit` hook that stops them and deletes their directories,
//! because test binaries keep shared servers in statics that are never dropped.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("local-infra-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel lives in a static and never closes: park forever so
                // PDEATHSIG only fires when the whole process goes.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the keeper thread");
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        Mutex::new(tx)
    })
}

struct Registered {
    pid: u32,
    dir: Option<PathBuf>,
}

fn registry() -> &'static Mutex<Vec<Registered>> {
    static REG: OnceLock<Mutex<Vec<Registered>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

extern "C" fn cleanup_at_exit() {
    let Ok(mut reg) = registry().lock() else {
        return;
    };
    for r in reg.drain(..) {
        // SAFETY: sending a signal to a pid we spawned.
        unsafe {
            libc::kill(r.pid as i32, libc::SIGKILL);
        }
        if let Some(dir) = r.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Spawns `cmd` so that it dies with this process. `dir` is removed at exit.
pub fn spawn_guarded(mut cmd: Command, dir: Option<PathBuf>) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper()
        .lock()
        .map_err(|_| std::io::Error::other("keeper lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("keeper thread is gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("keeper thread is gone"))??;
    if let Ok(mut reg) = registry().lock() {
        reg.push(Registered {
            pid: child.id(),
            dir,
        });
    }
    Ok(child)
}

/// Stops a guarded child: `signal` first, SIGKILL after `grace`.
pub fn stop(child: &mut Child, signal: i32, grace: Duration) {
    let pid = child.id();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, signal);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            forget(pid);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    forget(pid);
}

fn forget(pid: u32) {
    if let Ok(mut reg) = registry().lock() {
        reg.retain(|r| r.pid != pid);
    }
}

/// The last `n` lines of a log file, for start-failure messages.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The uid/gid to run a server as: PostgreSQL refuses to run as root, so when we
/// are root we drop to the `postgres` system user.
pub fn unprivileged_user() -> Option<(u32, u32)> {
    system_user_when_root("postgres")
}

/// When we run as root, the uid/gid of the system user `name` (servers refuse to
/// run as root); `None` when we are not root or the user does not exist.
pub fn system_user_when_root(name: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) && f.len() > 3 {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Makes `cmd` run as `user` (uid, gid) when one is given. The switch happens
/// before `spawn_guarded`'s parent-death hook, which a later credential change
/// inside the server would clear.
pub fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

/// Finds server binary `name`: in `$bindir_var`, then on PATH, then in
/// `fallback_dirs` (in order); `Missing` with `hint` when none has it.
pub fn find_binary(
    name: &str,
    bindir_var: &str,
    fallback_dirs: impl IntoIterator<Item = PathBuf>,
    hint: &str,
) -> Result<PathBuf, super::LocalInfraError> {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var(bindir_var) {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.extend(fallback_dirs.into_iter().map(|d| d.join(name)));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| super::LocalInfraError::Missing {
            what: name.into(),
            hint: hint.into(),
        })
}
