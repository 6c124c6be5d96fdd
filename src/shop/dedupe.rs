//! Webhook ids already put in Kafka, remembered for a window across restarts.
//!
//! On disk, append-only files of `unix_seconds id` lines: the current file
//! (the configured path) and the one before it (`<path>.prev`). Every window
//! the current file becomes the previous one and the previous one is deleted,
//! so an id is kept on disk at least a window and at most two, and nothing
//! is ever copied while webhooks wait. At start both are loaded and the live
//! entries written to a fresh current file. An id is recorded only after
//! Kafka acknowledged the webhook, so a crash between the two produces a
//! duplicate (harmless: events are versioned), never a loss.
//!
//! In memory an id is its SHA-256 cut to 128 bits, and entries past the
//! window are dropped hourly: every webhook of the window is held (a day of
//! a busy shop's inventory webhooks is a million), and with a `String` key
//! an entry cost about 100 bytes, with the digest about 30 (the map's spare
//! room included). Before, nothing was ever dropped while the gateway ran.
//! Two ids sharing a digest (odds of about 10⁻²⁷ at a million) would answer
//! the second 200 unproduced.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// How often entries past the window are dropped from memory (at most).
const SWEEP_EVERY_SECS: u32 = 3600;

pub struct DedupeStore {
    window: u32,
    path: PathBuf,
    inner: Mutex<Inner>,
}

/// A webhook id as it is held in memory.
type IdDigest = [u8; 16];

struct Inner {
    /// Id digest → when it was recorded (unix seconds; `u32` lasts to 2106).
    seen: HashMap<IdDigest, u32>,
    file: File,
    /// When the current file was started.
    file_since: u32,
    /// When entries past the window were last dropped from `seen`.
    swept: u32,
}

fn digest(id: &str) -> IdDigest {
    let full = Sha256::digest(id.as_bytes());
    let mut cut = [0u8; 16];
    cut.copy_from_slice(&full[..16]);
    cut
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// Removes `path`; one already gone is fine.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn append_to(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl DedupeStore {
    pub fn open(path: &Path, window: Duration) -> std::io::Result<DedupeStore> {
        Self::open_at(path, window, now_secs())
    }

    fn open_at(path: &Path, window: Duration, now: u32) -> std::io::Result<DedupeStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let window = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        let cutoff = now.saturating_sub(window);
        // Id → time, as text: the files keep ids, not digests.
        let mut live: HashMap<String, u32> = HashMap::new();
        for file in [previous(path), path.to_path_buf()] {
            let Ok(f) = File::open(&file) else { continue };
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line after a crash is skipped, not fatal.
                if let Some((ts, id)) = line.split_once(' ')
                    && let Ok(ts) = ts.parse::<u32>()
                    && ts >= cutoff
                {
                    let kept = live.entry(id.to_owned()).or_insert(ts);
                    *kept = (*kept).max(ts);
                }
            }
        }
        let file = Self::rewrite(path, &live)?;
        remove_if_there(&previous(path))?;
        let seen = live.iter().map(|(id, ts)| (digest(id), *ts)).collect();
        Ok(DedupeStore {
            window,
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                seen,
                file,
                file_since: now,
                swept: now,
            }),
        })
    }

    /// Writes the live entries to a fresh file and swaps it in.
    fn rewrite(path: &Path, seen: &HashMap<String, u32>) -> std::io::Result<File> {
        let tmp = path.with_extension("compacting");
        {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            for (id, ts) in seen {
                writeln!(f, "{ts} {id}")?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        append_to(path)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.contains_at(id, now_secs())
    }

    fn contains_at(&self, id: &str, now: u32) -> bool {
        let cutoff = now.saturating_sub(self.window);
        let id = digest(id);
        self.inner
            .lock()
            .seen
            .get(&id)
            .is_some_and(|ts| *ts >= cutoff)
    }

    /// Remembers `id` (after its webhook is durable in Kafka).
    pub fn record(&self, id: &str) -> std::io::Result<()> {
        self.record_at(id, now_secs())
    }

    fn record_at(&self, id: &str, now: u32) -> std::io::Result<()> {
        // One write per id: a formatted `writeln!` on an unbuffered file is a
        // system call per piece, under the lock every webhook takes.
        let line = format!("{now} {id}\n");
        let key = digest(id);
        let mut inner = self.inner.lock();
        // Held first: a file that cannot be written to loses the id for a
        // restart, not for this run.
        inner.seen.insert(key, now);
        if now.saturating_sub(inner.file_since) >= self.window {
            // Everything in the previous file is past the window now.
            let prev = previous(&self.path);
            remove_if_there(&prev)?;
            match std::fs::rename(&self.path, &prev) {
                // Removed from under us: the fresh file below starts over.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            inner.file = append_to(&self.path)?;
            inner.file_since = now;
        }
        inner.file.write_all(line.as_bytes())?;
        if now.saturating_sub(inner.swept) >= SWEEP_EVERY_SECS.min(self.window.max(1)) {
            let cutoff = now.saturating_sub(self.window);
            inner.seen.retain(|_, t| *t >= cutoff);
            inner.swept = now;
        }
        Ok(())
    }

    /// Ids held in memory (live or not yet swept).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.lock().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_reopen_and_forgets_outside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.log");
        {
            let s = DedupeStore::open(&path, Duration::from_secs(3600)).unwrap();
            assert!(!s.contains("shop/a"));
            s.record("shop/a").unwrap();
            assert!(s.contains("shop/a"));
        }
        // An old entry and a torn line, as after a crash.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "1 shop/ancient").unwrap();
        write!(f, "17000").unwrap();
        drop(f);
        let s = DedupeStore::open(&path, Duration::from_secs(3600)).unwrap();
        assert!(s.contains("shop/a"), "survives a restart");
        assert!(!s.contains("shop/ancient"), "outside the window");
        assert!(!s.contains("shop/b"));
    }

    /// The file removed from under a running gateway: the turn-over starts a
    /// fresh one instead of failing every webhook after it.
    #[test]
    fn a_file_removed_while_running_is_started_afresh_at_the_turn_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.log");
        let t0 = 1_800_000_000u32;
        let s = DedupeStore::open_at(&path, Duration::from_secs(60), t0).unwrap();
        s.record_at("shop/a", t0).unwrap();
        std::fs::remove_file(&path).unwrap();
        s.record_at("shop/b", t0 + 60).unwrap();
        s.record_at("shop/c", t0 + 61).unwrap();
        assert!(s.contains_at("shop/b", t0 + 61) && s.contains_at("shop/c", t0 + 61));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{} shop/b\n{} shop/c\n", t0 + 60, t0 + 61));
    }

    /// A gateway that runs for days holds one window of ids, in memory and
    /// on disk, yet never forgets one inside the window, running or restarted.
    #[test]
    fn a_long_running_store_keeps_one_window_and_forgets_nothing_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.log");
        let day = 86_400u32;
        let t0 = 1_800_000_000u32;
        let s = DedupeStore::open_at(&path, Duration::from_secs(day.into()), t0).unwrap();
        // Three days of one id a minute.
        let id = |t: u32| format!("shop/{t}");
        for t in (t0..t0 + 3 * day).step_by(60) {
            s.record_at(&id(t), t).unwrap();
        }
        let now = t0 + 3 * day - 60;
        for t in [now, now - day + 60] {
            assert!(s.contains_at(&id(t), now), "{t}: inside the window");
        }
        assert!(!s.contains_at(&id(now - day - 60), now), "past the window");
        let per_day = (day / 60) as usize;
        assert!(
            s.held() <= per_day + (SWEEP_EVERY_SECS / 60) as usize + 1,
            "a window and an hour held, not three days: {}",
            s.held()
        );
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        let on_disk = lines(&path) + lines(&previous(&path));
        assert!(
            (per_day..=2 * per_day).contains(&on_disk),
            "one to two windows on disk, not three: {on_disk}"
        );
        drop(s);
        let s = DedupeStore::open_at(&path, Duration::from_secs(day.into()), now).unwrap();
        assert!(
            s.contains_at(&id(now - day + 60), now),
            "kept across a restart"
        );
        assert!(!s.contains_at(&id(now - day - 60), now));
        assert!(!previous(&path).exists(), "folded into one file at start");
        assert!(s.held() <= per_day + 1);
    }
}
