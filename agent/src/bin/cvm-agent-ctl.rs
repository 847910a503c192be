//! `cvm-agent-ctl`: drives a guest agent from the host, like a kata shim would.
//!
//! Exit status: 0 on success; 1 when the agent answered with a non-OK ttrpc
//! status (code and message on stderr); 2 on a usage or request-body error;
//! 3 when the agent could not be reached or did not answer in time.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cvm_agent::ctl::{self, CtlError, Target};
use cvm_agent::transport::SockAddr;

#[derive(Debug, Parser)]
#[command(name = "cvm-agent-ctl", version, about = "Call the confidential VM's guest agent over ttrpc")]
struct Args {
    /// Agent address: unix:///path, vsock://CID:PORT, or with --hybrid-vsock
    /// the unix:///path of the hybrid-vsock multiplexer socket.
    #[arg(long, env = "CVM_AGENT_ADDR", value_name = "ADDR")]
    addr: Option<String>,
    /// Reach guest vsock PORT through the hybrid-vsock socket given by --addr
    /// (sends "CONNECT PORT\n", expects "OK ...").
    #[arg(long, value_name = "PORT")]
    hybrid_vsock: Option<u32>,
    /// Seconds to wait for the connection and the reply; 0 waits for the reply
    /// forever (long-polling RPCs such as ReadStdout or WaitProcess).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// grpc.Health/Check: prints the serving status.
    Check,
    /// grpc.Health/Version: prints the agent and API versions.
    Version,
    /// Calls any RPC by name, e.g. `call CreateContainer '{"container_id":"c1"}'`.
    Call {
        /// Method name as in the agent API (CreateContainer, ReadStdout, Check, ...).
        method: String,
        /// Request as JSON (kata's JSON shape), or @file.json; omitted means {}.
        body: Option<String>,
    },
    /// Lists every method `call` accepts.
    Methods,
}

/// Upper bound on connecting when the call itself may wait forever.
const CONNECT_TIMEOUT_WITH_NO_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    let (method, body) = match &args.command {
        Command::Methods => {
            for m in ctl::METHODS {
                println!("{m}");
            }
            return ExitCode::SUCCESS;
        }
        Command::Check => ("Check", None),
        Command::Version => ("Version", None),
        Command::Call { method, body } => (method.as_str(), body.as_deref()),
    };
    let Some(addr) = args.addr.as_deref() else {
        eprintln!("cvm-agent-ctl: --addr (or CVM_AGENT_ADDR) is required");
        return ExitCode::from(2);
    };
    let addr: SockAddr = match addr.parse() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("cvm-agent-ctl: {err}");
            return ExitCode::from(2);
        }
    };
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        eprintln!("cvm-agent-ctl: --timeout must be a non-negative number of seconds");
        return ExitCode::from(2);
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let body = match ctl::read_body(body) {
        Ok(b) => b,
        Err(err) => {
            eprintln!("cvm-agent-ctl: {err}");
            return ExitCode::from(2);
        }
    };
    let target = Target { addr, hybrid_vsock_port: args.hybrid_vsock };

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cvm-agent-ctl: cannot start async runtime: {err}");
            return ExitCode::from(3);
        }
    };
    let connect_timeout = if timeout.is_zero() { CONNECT_TIMEOUT_WITH_NO_DEADLINE } else { timeout };
    let result = runtime.block_on(async {
        let client = target.connect(connect_timeout).await?;
        ctl::call_on(&client, method, &body, timeout).await
    });
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cvm-agent-ctl: {method}: {err}");
            ExitCode::from(match err {
                CtlError::Status { .. } => 1,
                CtlError::UnknownMethod(_) | CtlError::BadBody { .. } | CtlError::BodyFile { .. } => 2,
                _ => 3,
            })
        }
    }
}
