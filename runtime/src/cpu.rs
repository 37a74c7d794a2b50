//! How many workers a pod should run: derived from the container's CPU quota (cgroup v2
//! `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), not from the host's core count.
//!
//! Grab's lesson: under the Vertical Pod Autoscaler a container may get 1.94 CPUs; a runtime that
//! floors that to 1 worker leaves most of the quota idle and lag grows. Sluice rounds the quota
//! to the nearest whole CPU (at least 1) and never exceeds the CPUs the process may run on (its
//! affinity: std's `available_parallelism` already floors the quota, so it cannot be the cap).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that moves the cgroup filesystem's root (for tests).
pub const CGROUP_ROOT_ENV: &str = "SLUICE_CGROUP_ROOT";

/// The CPU limit the process runs under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLimit {
    /// The cgroup quota in CPUs (e.g. 1.94), `None` when unlimited or unknown.
    pub quota_cpus: Option<f64>,
    /// CPUs the process may be scheduled on (affinity).
    pub host_cpus: usize,
}

impl CpuLimit {
    /// Reads the limit of the current process from `/proc/self/cgroup` and the cgroup
    /// filesystem: `/sys/fs/cgroup`, or the directory `SLUICE_CGROUP_ROOT` names (a test's stand-in
    /// whose `cpu.max` it rewrites while the pipeline runs).
    pub fn detect() -> Self {
        let root = std::env::var_os(CGROUP_ROOT_ENV)
            .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from);
        Self::detect_in(&root)
    }

    /// [`CpuLimit::detect`] under the cgroup filesystem mounted at `root`.
    pub fn detect_in(root: &Path) -> Self {
        // Not `available_parallelism`: it already floors the cgroup quota (1.94 CPUs -> 1), so
        // the rounding below would be clamped back to 1.
        let host_cpus = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| affinity_cpus(&status))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        CpuLimit {
            quota_cpus: quota_from(root, &cgroup),
            host_cpus,
        }
    }

    /// The default worker count: the quota rounded to the nearest whole CPU, at least 1, at most
    /// the CPUs available; all available CPUs when there is no quota.
    pub fn workers(&self) -> usize {
        let host = self.host_cpus.max(1);
        match self.quota_cpus {
            Some(q) if q.is_finite() && q > 0.0 => (q.round() as usize).clamp(1, host),
            _ => host,
        }
    }
}

/// The CPUs the process may run on (its affinity, `sched_getaffinity`) from the
/// `Cpus_allowed_list` line of `/proc/self/status` (`0-3,6,8-9`).
pub fn affinity_cpus(status: &str) -> Option<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut count = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((lo, hi)) => hi.parse::<usize>().ok()?.checked_sub(lo.parse().ok()?)? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

/// The quota in CPUs for the process whose `/proc/self/cgroup` is `cgroup`, under the cgroup
/// filesystem mounted at `root`. The effective quota is the smallest along the path.
pub fn quota_from(root: &Path, cgroup: &str) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut keep = |q: Option<f64>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b: f64| b.min(q)));
        }
    };
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(c), Some(p)) => (id, c, p),
            _ => continue,
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: walk from the process's cgroup up to the root.
            for dir in ancestors(&root.join(rel), root) {
                keep(read_v2(&dir.join("cpu.max")));
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            // cgroup v1: the cpu controller's own hierarchy (mounted as cpu or cpu,cpuacct).
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                let base = root.join(mount);
                if !base.is_dir() {
                    continue;
                }
                for dir in ancestors(&base.join(rel), &base) {
                    keep(read_v1(&dir));
                }
                break;
            }
        }
    }
    best
}

fn ancestors(start: &Path, root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut dir = Some(start);
    while let Some(d) = dir {
        dirs.push(d.to_path_buf());
        if d == root {
            break;
        }
        dir = d.parent().filter(|p| p.starts_with(root));
    }
    dirs
}

/// `cpu.max`: "max 100000" (no limit) or "QUOTA PERIOD" in microseconds.
fn read_v2(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

/// `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`.
fn read_v1(dir: &Path) -> Option<f64> {
    let quota: f64 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: f64 = std::fs::read_to_string(dir.join("cpu.cfs_period_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// How often the quota is read again.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// When to read the quota next: a run's loop asks every turn, and it is read every
/// [`CHECK_EVERY`] (an in-place resize changes it while the pod runs).
#[derive(Debug)]
pub(crate) struct CpuWatch {
    next: Instant,
}

impl CpuWatch {
    pub(crate) fn new() -> CpuWatch {
        CpuWatch {
            next: Instant::now() + CHECK_EVERY,
        }
    }

    /// The limit now, if it is time to look again.
    pub(crate) fn due(&mut self) -> Option<CpuLimit> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + CHECK_EVERY;
        Some(CpuLimit::detect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn rounds_the_quota_to_whole_cpus() {
        let limit = |q: Option<f64>, host| {
            CpuLimit {
                quota_cpus: q,
                host_cpus: host,
            }
            .workers()
        };
        assert_eq!(
            limit(Some(1.94), 8),
            2,
            "Grab's 1.94 cores must not become 1 worker"
        );
        assert_eq!(limit(Some(2.4), 8), 2);
        assert_eq!(limit(Some(0.25), 8), 1);
        assert_eq!(
            limit(Some(16.0), 4),
            4,
            "never more than the CPUs we may run on"
        );
        assert_eq!(limit(None, 6), 6);
        assert_eq!(limit(Some(f64::NAN), 3), 3);
    }

    #[test]
    fn reads_cgroup_v2_taking_the_smallest_quota_on_the_path() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpu.max", "max 100000\n");
        write(root.path(), "kubepods/cpu.max", "400000 100000\n");
        write(root.path(), "kubepods/pod1/cpu.max", "194000 100000\n");
        write(root.path(), "kubepods/pod1/app/cpu.max", "max 100000\n");
        let q = quota_from(root.path(), "0::/kubepods/pod1/app\n").unwrap();
        assert!((q - 1.94).abs() < 1e-9, "{q}");
        assert_eq!(quota_from(root.path(), "0::/\n"), None, "root: unlimited");
    }

    #[test]
    fn reads_cgroup_v1_cpu_controller() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
            "150000\n",
        );
        write(
            root.path(),
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us",
            "100000\n",
        );
        write(root.path(), "cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
        write(root.path(), "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n";
        assert_eq!(quota_from(root.path(), cgroup), Some(1.5));
    }

    #[test]
    fn host_cpus_come_from_the_affinity_not_the_floored_quota() {
        let status = |list: &str| {
            format!(
                "Name:\tsluice\nCpus_allowed:\tff\nCpus_allowed_list:\t{list}\nMems_allowed:\t1\n"
            )
        };
        assert_eq!(affinity_cpus(&status("0-7")), Some(8));
        assert_eq!(affinity_cpus(&status("0-3,6,8-9")), Some(7));
        assert_eq!(affinity_cpus(&status("5")), Some(1));
        assert_eq!(affinity_cpus(&status("3-1")), None, "malformed");
        assert_eq!(affinity_cpus("Name:\tsluice\n"), None);
        // 1.94 CPUs on an 8-CPU node: 2 workers (std's available_parallelism says 1 there).
        let on_node = CpuLimit {
            quota_cpus: Some(1.94),
            host_cpus: affinity_cpus(&status("0-7")).unwrap(),
        };
        assert_eq!(on_node.workers(), 2);
    }

    #[test]
    fn detects_something_sane_on_this_machine() {
        let limit = CpuLimit::detect();
        assert!(limit.workers() >= 1 && limit.workers() <= limit.host_cpus);
    }
}
