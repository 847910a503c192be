//! GetIPTables/SetIPTables: kata runs `iptables-save` and `iptables-restore`
//! (`ip6tables-*` for IPv6) and passes the rules text through. The binaries
//! are looked up in PATH; the rules are bounded in both directions, the child
//! runs under a deadline and is killed past it. Children are spawned through
//! the agent's reaper (never waited on here), and never through a shell.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{NetworkError, Result};
use crate::reaper::{ExitStatus, Reaper};

/// Largest rules text accepted from the host or returned to it (a ttrpc
/// message is at most 4 MiB).
pub const MAX_RULES_BYTES: usize = 2 << 20;
/// How long one iptables run may take.
const DEADLINE: Duration = Duration::from_secs(10);
/// `iptables-restore --wait`: seconds to wait for the xtables lock (kata's 5).
const RESTORE_LOCK_WAIT: &str = "5";
/// Stderr kept for an error message.
const MAX_STDERR: usize = 4096;
/// PATH when the agent has none (PID 1 starts with an empty environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the iptables tools as children of the agent.
#[derive(Clone, Debug)]
pub struct IpTables {
    reaper: Reaper,
}

impl IpTables {
    pub fn new(reaper: Reaper) -> IpTables {
        IpTables { reaper }
    }

    /// The rules of the agent's network namespace (`iptables-save`).
    pub async fn save(&self, ipv6: bool) -> Result<Vec<u8>> {
        let tool = if ipv6 { "ip6tables-save" } else { "iptables-save" };
        self.run(tool, &[], None).await
    }

    /// Replaces the rules with `rules` (`iptables-restore --wait 5`); answers
    /// the tool's stdout, as kata does.
    pub async fn restore(&self, ipv6: bool, rules: Vec<u8>) -> Result<Vec<u8>> {
        if rules.len() > MAX_RULES_BYTES {
            return Err(NetworkError::InvalidArgument(format!(
                "data: {} bytes of rules, at most {MAX_RULES_BYTES}",
                rules.len()
            )));
        }
        let tool = if ipv6 { "ip6tables-restore" } else { "iptables-restore" };
        self.run(tool, &["--wait", RESTORE_LOCK_WAIT], Some(rules)).await
    }

    async fn run(&self, tool: &str, args: &[&str], input: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let path = find_in_path(tool, std::env::var_os("PATH").as_deref().and_then(|p| p.to_str()))?;
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, waiter) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| NetworkError::Internal(format!("spawn {}: {e}", path.display())))?;
        let pid = child.id() as libc::pid_t;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let writer = tokio::task::spawn_blocking(move || match (stdin, input) {
            (Some(mut w), Some(data)) => w.write_all(&data),
            _ => Ok(()),
        });
        let out_reader = tokio::task::spawn_blocking(move || read_bounded(stdout, MAX_RULES_BYTES));
        let err_reader = tokio::task::spawn_blocking(move || read_bounded(stderr, MAX_STDERR));

        let status = match tokio::time::timeout(DEADLINE, waiter.wait()).await {
            Ok(status) => status,
            Err(_) => {
                // The waiter has not fired, so the pid was not reaped (barring
                // an exit in the last instant): it is still our child's.
                // SAFETY: kill(2) with integer arguments only.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(NetworkError::DeadlineExceeded(format!("{tool} did not finish within {DEADLINE:?}")));
            }
        };
        let (out, truncated) = join(out_reader).await?;
        let (err, _) = join(err_reader).await?;
        // A broken pipe on stdin is the tool refusing early; its status says why.
        let _ = writer.await;
        match status {
            Some(ExitStatus::Exited(0)) if !truncated => Ok(out),
            Some(ExitStatus::Exited(0)) => {
                Err(NetworkError::Internal(format!("{tool} wrote more than {MAX_RULES_BYTES} bytes")))
            }
            other => Err(NetworkError::Internal(format!(
                "{tool} failed ({other:?}): {}",
                String::from_utf8_lossy(&err).trim()
            ))),
        }
    }
}

async fn join(task: tokio::task::JoinHandle<(Vec<u8>, bool)>) -> Result<(Vec<u8>, bool)> {
    task.await.map_err(|e| NetworkError::Internal(format!("reader task: {e}")))
}

/// Reads up to `limit` bytes, then drains the rest so the child never blocks
/// on a full pipe; the flag tells whether anything was dropped.
fn read_bounded(pipe: Option<impl Read>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else { return (Vec::new(), false) };
    let mut kept = Vec::new();
    let _ = pipe.by_ref().take(limit as u64).read_to_end(&mut kept);
    let dropped = std::io::copy(&mut pipe, &mut std::io::sink()).unwrap_or(0);
    (kept, dropped > 0)
}

/// The first executable `tool` in `path` (or the default PATH).
fn find_in_path(tool: &str, path: Option<&str>) -> Result<PathBuf> {
    let path = path.filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| NetworkError::FailedPrecondition(format!("{tool} not found in PATH ({path}); install iptables")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_a_failed_precondition_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_in_path("iptables-save", dir.path().to_str()).unwrap_err();
        assert!(matches!(&err, NetworkError::FailedPrecondition(m) if m.contains("iptables-save not found")), "{err}");
    }

    #[test]
    fn only_executable_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("iptables-save");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        assert!(find_in_path("iptables-save", dir.path().to_str()).is_err());
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in_path("iptables-save", dir.path().to_str()).unwrap(), tool);
    }

    #[test]
    fn reading_stops_keeping_at_the_limit_and_says_so() {
        let (kept, dropped) = read_bounded(Some(&b"0123456789"[..]), 4);
        assert_eq!((kept.as_slice(), dropped), (&b"0123"[..], true));
        let (kept, dropped) = read_bounded(Some(&b"0123"[..]), 4);
        assert_eq!((kept.as_slice(), dropped), (&b"0123"[..], false));
    }
}
