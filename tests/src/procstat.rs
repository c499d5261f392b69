//! What `/proc` says about a process, as the benchmarks report it: resident memory, CPU time,
//! and the size of a directory tree.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

/// Resident memory of a process (`/proc/PID/status`), in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the most it was ever resident.
    pub hwm_kb: u64,
}

impl Mem {
    /// Zero for a process that is gone.
    pub fn of(pid: u32) -> Mem {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field =
            |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Mem { rss_kb: field("VmRSS:"), hwm_kb: field("VmHWM:") }
    }

    pub fn json(&self) -> Value {
        json!({"rss_kb": self.rss_kb, "peak_rss_kb": self.hwm_kb})
    }

    pub fn mib(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }
}

/// `node1 12.3 MiB (peak 14.0), node2 ...` for the processes in `m`, in order.
pub fn rss_line(m: &[Mem]) -> String {
    m.iter().enumerate().map(|(i, m)| format!("node{} {:.1} MiB (peak {:.1})", i + 1, m.mib(), m.hwm_kb as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
}

/// `/proc/PID/smaps_rollup`: the process's memory by kind (`Rss`, `Anonymous`, `Private_Dirty`,
/// ...), in KiB. Empty if it cannot be read.
pub fn smaps_rollup(pid: u32) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((k.trim().to_string(), kb))
        })
        .collect()
}

/// Bytes a process has caused to be written to storage (`write_bytes` in `/proc/PID/io`);
/// 0 if it cannot be read.
pub fn write_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// utime + stime of a process (`/proc/PID/stat`, or `/proc/self/stat`), in clock ticks.
pub fn cpu_ticks(stat_path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of process `pid` (0 if it is gone).
pub fn pid_ticks(pid: u32) -> u64 {
    cpu_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0)
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy (all but idle and iowait) and total CPU ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU use of some processes and of this one over a window, in % of one core.
pub struct CpuWindow {
    start: Instant,
    pids: Vec<u32>,
    ticks: Vec<u64>,
    me: u64,
    machine: (u64, u64),
}

impl CpuWindow {
    pub fn open(pids: &[u32]) -> CpuWindow {
        CpuWindow {
            start: Instant::now(),
            pids: pids.to_vec(),
            ticks: pids.iter().map(|p| pid_ticks(*p)).collect(),
            me: cpu_ticks("/proc/self/stat").unwrap_or(0),
            machine: machine_ticks(),
        }
    }

    /// The whole machine's busy CPU since `open`, in % of one core: beside `close`, what
    /// other processes (other users of a shared machine) took meanwhile.
    pub fn machine(&self) -> f64 {
        let (busy, total) = machine_ticks();
        let (b, t) = (busy.saturating_sub(self.machine.0), total.saturating_sub(self.machine.1));
        if t == 0 {
            return 0.0;
        }
        b as f64 / t as f64 * 100.0 * cores() as f64
    }

    /// Per process (in the order given to `open`), then this process.
    pub fn close(&self) -> (Vec<f64>, f64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_sec();
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs * 100.0;
        let procs = self.pids.iter().zip(&self.ticks).map(|(p, a)| pct(*a, pid_ticks(*p))).collect();
        (procs, pct(self.me, cpu_ticks("/proc/self/stat").unwrap_or(0)))
    }
}

/// The number of CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Total size of the files under `dir` (at most 8 levels down).
pub fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: usize) -> u64 {
        if depth > 8 {
            return 0;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), depth + 1),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir, 0)
}
