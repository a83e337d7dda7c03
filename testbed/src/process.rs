//! The test bed's own processes: started detached inside the bed's network namespace, each recorded
//! by PID and start time so that `down` ends exactly the processes it started, even from another
//! command, and never a process that later got the same PID.

use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::layout::Layout;
use crate::Error;

/// A daemon of the cluster: a name (its log and PID file), the program and its arguments.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A recorded process: its PID and its start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub pid: i32,
    pub start: u64,
}

/// Starts `daemon` in the bed's network namespace, output appended to `logs/<name>.log`.
pub fn spawn(layout: &Layout, daemon: &Daemon) -> Result<Recorded, Error> {
    let log_path = layout.logs().join(format!("{}.log", daemon.name));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    // nsenter, not `ip netns exec`: the latter also remounts /sys for the namespace, which hides
    // /sys/fs/cgroup from the kubelet and runc.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", layout.netns()))
        .arg("--")
        .arg(&daemon.program)
        .args(&daemon.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C or the end of a test binary does not reach the cluster.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Spawn {
            what: daemon.name.to_owned(),
            source: e,
        })?;
    let pid = i32::try_from(child.id()).map_err(|_| Error::Invalid("pid out of range".into()))?;
    // nsenter execs the program, so this PID is the daemon's. A thread reaps it, so a
    // daemon that dies while this process lives is gone, not a zombie that looks alive.
    std::thread::spawn(move || child.wait());
    let start = start_time(pid).ok_or_else(|| Error::Died {
        what: daemon.name.to_owned(),
        log: log_path.clone(),
        tail: log_tail(&log_path, 20),
    })?;
    let recorded = Recorded { pid, start };
    let pid_path = pid_file(layout, daemon.name);
    fs::write(&pid_path, format!("{pid} {start}\n")).map_err(|e| Error::io(&pid_path, e))?;
    Ok(recorded)
}

fn pid_file(layout: &Layout, name: &str) -> PathBuf {
    layout.pids().join(name)
}

/// The daemons recorded for a bed, by name.
pub fn recorded(layout: &Layout) -> Vec<(String, Recorded)> {
    let Ok(entries) = fs::read_dir(layout.pids()) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = fs::read_to_string(e.path()).ok()?;
            let mut it = text.split_whitespace();
            let pid = it.next()?.parse().ok()?;
            let start = it.next()?.parse().ok()?;
            Some((name, Recorded { pid, start }))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Whether the recorded process still runs (same PID and same start time, not a zombie).
pub fn alive(r: Recorded) -> bool {
    stat(r.pid).is_some_and(|(state, start)| start == r.start && state != 'Z' && state != 'X')
}

/// Ends a recorded process: SIGTERM, then SIGKILL after `grace`. Returns once it is gone.
pub fn stop(r: Recorded, grace: Duration) {
    if !alive(r) {
        return;
    }
    let pid = Pid::from_raw(r.pid);
    let _ = kill(pid, Signal::SIGTERM);
    if wait_gone(r, grace) {
        return;
    }
    let _ = kill(pid, Signal::SIGKILL);
    wait_gone(r, Duration::from_secs(10));
}

/// SIGKILL for a process found (not started) by the bed: a shim or a container process.
pub fn kill_now(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

fn wait_gone(r: Recorded, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if !alive(r) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(r)
}

/// State letter and start time (field 22) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// PIDs of every process whose command line mentions `needle` (used to find containerd's shims,
/// which name the bed's containerd socket, and to prove nothing of a bed is left).
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).ok() != Some(me))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| stat(*pid).is_some_and(|(s, _)| s != 'Z'))
        .collect()
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    let text = std::io::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a short command to completion; a non-zero exit is an error naming the command and its
/// output.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn {
            what: program.to_owned(),
            source: e,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_stat() {
        let me = i32::try_from(std::process::id()).unwrap();
        let (state, start) = stat(me).unwrap();
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert!(alive(Recorded { pid: me, start }));
        assert!(
            !alive(Recorded {
                pid: me,
                start: start + 1
            }),
            "a reused PID is not ours"
        );
    }
}
