//! Webhook ids already put in Kafka, remembered for a window across restarts.
//!
//! An append-only file of `unix_seconds id` lines, loaded (and compacted to
//! the window) at start. An id is recorded only after Kafka acknowledged the
//! webhook, so a crash between the two produces a duplicate (harmless: events
//! are versioned), never a loss.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub struct DedupeStore {
    window: Duration,
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashMap<String, u64>,
    file: File,
    appended: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl DedupeStore {
    pub fn open(path: &Path, window: Duration) -> std::io::Result<DedupeStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let cutoff = now_secs().saturating_sub(window.as_secs());
        let mut seen = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line after a crash is skipped, not fatal.
                if let Some((ts, id)) = line.split_once(' ')
                    && let Ok(ts) = ts.parse::<u64>()
                    && ts >= cutoff
                {
                    seen.insert(id.to_owned(), ts);
                }
            }
        }
        let file = Self::rewrite(path, &seen)?;
        Ok(DedupeStore {
            window,
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                seen,
                file,
                appended: 0,
            }),
        })
    }

    /// Writes the live entries to a fresh file and swaps it in.
    fn rewrite(path: &Path, seen: &HashMap<String, u64>) -> std::io::Result<File> {
        let tmp = path.with_extension("compacting");
        {
            let mut f = File::create(&tmp)?;
            for (id, ts) in seen {
                writeln!(f, "{ts} {id}")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        OpenOptions::new().append(true).open(path)
    }

    pub fn contains(&self, id: &str) -> bool {
        let cutoff = now_secs().saturating_sub(self.window.as_secs());
        self.inner
            .lock()
            .seen
            .get(id)
            .is_some_and(|ts| *ts >= cutoff)
    }

    /// Remembers `id` (after its webhook is durable in Kafka).
    pub fn record(&self, id: &str) -> std::io::Result<()> {
        let ts = now_secs();
        // One write per id: a formatted `writeln!` on an unbuffered file is a
        // system call per piece, under the lock every webhook takes.
        let line = format!("{ts} {id}\n");
        let mut inner = self.inner.lock();
        inner.file.write_all(line.as_bytes())?;
        inner.seen.insert(id.to_owned(), ts);
        inner.appended += 1;
        // Keep the file near the window's size.
        if inner.appended > 10_000 && inner.appended > inner.seen.len() {
            let cutoff = ts.saturating_sub(self.window.as_secs());
            inner.seen.retain(|_, t| *t >= cutoff);
            inner.file = Self::rewrite(&self.path, &inner.seen)?;
            inner.appended = 0;
        }
        Ok(())
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
}
