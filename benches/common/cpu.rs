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

/// CPU time of process `pid`, all threads including ended ones (user +
/// system, from `/proc/<pid>/stat`, in clock ticks).
pub fn process(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of the line (utime, stime); the state (field 3) is fields[0].
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
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
