//! Starting the process that takes over: `weir run --upgrade` with the
//! same configuration file, control socket and flags as the running one.
//! `weir upgrade` starts it detached from the command line; a reload whose
//! changes only a new process can apply (listeners, admin, runtime) starts
//! it from the running gateway itself.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{query, Instance, UpgradeError};

/// How to start a successor of a running weir.
#[derive(Clone, Debug)]
pub struct Successor {
    /// The binary to run. Captured when the process starts: after a package
    /// upgrade replaced the file, the path names the new binary, which is
    /// what an upgrade should run.
    pub exe: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// The control socket both processes use.
    pub socket: PathBuf,
    /// `--threads`, when the running process was given it.
    pub threads: Option<u16>,
    /// `--log-level`, when the running process was given it.
    pub log_level: Option<String>,
}

/// A successor that has taken over.
#[derive(Clone, Debug)]
pub struct TakenOver {
    /// The new process.
    pub pid: u32,
    /// The process it took over from.
    pub old: Instance,
}

impl Successor {
    /// Starts the successor and waits until it serves the control socket
    /// (it has taken the listening sockets over), it exits, or `timeout`
    /// passes. `detached` puts it in its own process group, so that a
    /// Ctrl-C meant for a `weir upgrade` command does not reach it; started
    /// from the gateway itself it stays in the gateway's group and inherits
    /// its standard streams (same log, same access log). Blocks: call it off
    /// the async runtime.
    pub fn start(&self, detached: bool, timeout: Duration) -> Result<TakenOver, UpgradeError> {
        let old = query(&self.socket)?;
        let mut cmd = Command::new(&self.exe);
        if let Some(level) = &self.log_level {
            cmd.args(["--log-level", level]);
        }
        cmd.args(["run", "--upgrade", "--config"])
            .arg(&self.config)
            .arg("--upgrade-socket")
            .arg(&self.socket);
        if let Some(n) = self.threads {
            cmd.args(["--threads", &n.to_string()]);
        }
        cmd.stdin(Stdio::null());
        if detached {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|e| UpgradeError::Start {
            exe: self.exe.clone(),
            error: e,
        })?;
        let pid = child.id();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(UpgradeError::SuccessorExited {
                    status: status.to_string(),
                    old_pid: old.pid,
                });
            }
            if query(&self.socket).is_ok_and(|now| now.pid == pid) {
                return Ok(TakenOver { pid, old });
            }
            if Instant::now() >= deadline {
                return Err(UpgradeError::SuccessorTimeout { pid, timeout });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
