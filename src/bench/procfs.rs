//! CPU time and peak memory of processes, read from Linux's /proc. A figure that cannot be read is 0
//! rather than an error: it annotates a row, and the rates do not depend on it.

/// CPU time (user + system) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ticks(&stat) / per_second
}

/// utime + stime of a `/proc/<pid>/stat` line, in clock ticks.
fn cpu_ticks(stat: &str) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces and parentheses itself:
    // utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The peak resident set size of process `pid` so far, in MiB.
pub(super) fn peak_rss_mib(pid: u32) -> f64 {
    vm_hwm_mib(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

/// `VmHWM` (the RSS high-water mark, in KiB) of a `/proc/<pid>/status` text, in MiB.
fn vm_hwm_mib(status: &str) -> f64 {
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The local RabbitMQ, when there is one: the busiest Erlang VM (`beam.smp`), since RabbitMQ's
/// command-line tools run in an Erlang VM of their own too.
fn broker_pid() -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "beam.smp"))
        .max_by(|a, b| cpu_seconds(*a).total_cmp(&cpu_seconds(*b)))
}

/// The CPU use over a step of herald (when the step runs one), of the broker when it runs on this machine
/// and of this bench process (the ceiling's consumer, or the reader of herald's events): together they
/// show where a step's time goes on a machine they all share, and herald's own is less noisy than its rate.
pub(super) struct StepCpu {
    /// (pid, CPU seconds at the start) of each.
    herald: Option<(u32, f64)>,
    broker: Option<(u32, f64)>,
    bench: (u32, f64),
}

impl StepCpu {
    /// Starts counting; `herald` is the pid of the step's herald child.
    pub fn start(herald: Option<u32>) -> StepCpu {
        let at_start = |pid: u32| (pid, cpu_seconds(pid));
        StepCpu {
            herald: herald.map(at_start),
            broker: broker_pid().map(at_start),
            bench: at_start(std::process::id()),
        }
    }

    /// Herald's CPU per job since `start`, in µs (0 when the step runs no herald).
    pub fn herald_per_job(&self, jobs: usize) -> f64 {
        self.herald.map_or(0.0, |h| per_job(h, jobs))
    }

    /// ", broker CPU N µs/job, bench M µs/job" since `start`; the broker's only when it is a local process.
    pub fn others_per_job(&self, jobs: usize) -> String {
        let bench = per_job(self.bench, jobs);
        match self.broker {
            Some(broker) => format!(
                ", broker CPU {:.0} µs/job, bench {bench:.0} µs/job",
                per_job(broker, jobs)
            ),
            None => format!(", bench CPU {bench:.0} µs/job"),
        }
    }
}

/// CPU µs per job that process `pid` spent since it had used `at_start` seconds.
fn per_job((pid, at_start): (u32, f64), jobs: usize) -> f64 {
    (cpu_seconds(pid) - at_start) / jobs.max(1) as f64 * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_a_command_name_that_holds_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (tokio (x) 1) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 70 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), 320.0);
        assert_eq!(cpu_ticks(""), 0.0);
    }

    #[test]
    fn the_peak_rss_is_vm_hwm_in_mib() {
        let status = "Name:\therald\nVmPeak:\t  900000 kB\nVmHWM:\t   26624 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(vm_hwm_mib(status), 26.0);
        assert_eq!(vm_hwm_mib("Name:\tgone\n"), 0.0);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let me = std::process::id();
        assert!(peak_rss_mib(me) > 0.0);
        assert!(cpu_seconds(me) >= 0.0);
    }
}
