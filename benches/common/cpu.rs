//! Where a benchmark's CPU time goes, per process and per thread, from
//! `/proc`: on a shared 2-core machine the broker, the load generator and the
//! server under test compete for the same cores, and throughput alone cannot
//! say which of them a webhook's cost belongs to.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time so far of each live thread of process `pid`: thread id → (name,
/// time on a CPU). From `schedstat`, which counts in nanoseconds.
pub fn threads(pid: u32) -> HashMap<u32, (String, Duration)> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = task.path();
        // A thread can end between the listing and these reads: skip it.
        let (Ok(name), Ok(sched)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = sched.split_whitespace().next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        out.insert(tid, (name.trim().to_owned(), Duration::from_nanos(ns)));
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name, as numbers, so
/// that `fields[0]` is the line's field 3 (the state, which like any field
/// that is not an unsigned number reads as 0); empty if the process is gone.
fn stat_fields(pid: u32) -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Vec::new();
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

fn ticks(fields: &[u64], at: &[usize]) -> Duration {
    let ticks: u64 = at.iter().filter_map(|&i| fields.get(i)).sum();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// CPU time of process `pid`, all threads including ended ones (user +
/// system, fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks).
pub fn process(pid: u32) -> Duration {
    ticks(&stat_fields(pid), &[11, 12])
}

/// CPU time of the ended children that process `pid` reaped (fields 16 and
/// 17): a command it ran to completion, such as `pg_recvlogical`.
pub fn reaped_children(pid: u32) -> Duration {
    ticks(&stat_fields(pid), &[13, 14])
}

/// CPU time of process `pid` and of all its children, live or ended: a
/// server's total, such as PostgreSQL's postmaster with its backends and
/// walsenders, which come and go with their connections. An ended child
/// counts once its parent reaped it (fields 16 and 17, the children's utime
/// and stime), a live one through its own `stat`; so the total only grows,
/// and the difference of two samples is what the server spent in between.
pub fn process_tree(pid: u32) -> Duration {
    let mut total = ticks(&stat_fields(pid), &[11, 12, 13, 14]);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in procs.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let fields = stat_fields(child);
        // Field 4, the parent's id.
        if fields.get(1) == Some(&u64::from(pid)) {
            total += ticks(&fields, &[11, 12, 13, 14]);
        }
    }
    total
}

/// CPU time spent between two [`threads`] samples, summed by what `class`
/// makes of each thread's name. A thread that ended in between is left out.
pub fn by_class(
    before: &HashMap<u32, (String, Duration)>,
    after: &HashMap<u32, (String, Duration)>,
    class: impl Fn(&str) -> &'static str,
) -> HashMap<&'static str, Duration> {
    let mut out = HashMap::new();
    for (tid, (name, now)) in after {
        let then = before.get(tid).map_or(Duration::ZERO, |(_, t)| *t);
        *out.entry(class(name)).or_default() += now.saturating_sub(then);
    }
    out
}
