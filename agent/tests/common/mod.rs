//! Starts the real `cvm-agent` binary on a unix socket and runs the real
//! `cvm-agent-ctl` against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_cvm-agent");
pub const CTL: &str = env!("CARGO_BIN_EXE_cvm-agent-ctl");
/// The shipped development policy; tests of the runtime run under it unless
/// they pass `--policy-file` themselves.
pub const ALLOW_ALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/allow-all.rego");
/// The shipped confidential default policy.
pub const CONFIDENTIAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/confidential.rego");

/// The agent binary: CVM_AGENT_TEST_BIN (e.g. the static release build, for
/// `make soak`), else this crate's.
pub fn agent_bin() -> String {
    std::env::var("CVM_AGENT_TEST_BIN").unwrap_or_else(|_| AGENT.to_string())
}

pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent on `<dir>/agent.sock` and waits until it answers.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Agent {
        Self::start_with(dir, |cmd| {
            cmd.arg("--server-addr").arg(format!("unix://{}", dir.join("agent.sock").display())).args(extra_args);
        })
    }

    /// Starts the agent with a caller-built command line; the socket is still
    /// expected at `<dir>/agent.sock`.
    pub fn start_with(dir: &Path, configure: impl FnOnce(&mut Command)) -> Agent {
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let mut cmd = Command::new(agent_bin());
        cmd.env_remove("KATA_AGENT_SERVER_ADDR")
            .env("KATA_AGENT_POLICY_FILE", ALLOW_ALL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn cvm-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("cvm-agent exited early ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "cvm-agent did not listen on {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, socket, log }
    }

    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the agent to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "cvm-agent did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cvm-agent-ctl` with `args`.
pub fn ctl(args: &[&str]) -> Output {
    Command::new(CTL).args(args).env_remove("CVM_AGENT_ADDR").stdin(Stdio::null()).output().expect("run cvm-agent-ctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
