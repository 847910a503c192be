//! `cvm-agent`: wires configuration, logging and the ttrpc server together.
//! As PID 1 of the VM it first does the init duties (`cvm_agent::init`) and,
//! whatever happens, ends by powering the VM off instead of exiting.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cvm_agent::config::{
    AgentConfig, KernelParams, LoadedFile, LogFormat, LogLevel, Overrides, POLICY_FILE_ENV, SERVER_ADDR_ENV,
};
use cvm_agent::init;
use cvm_agent::policy::AgentPolicy;

/// Guest agent of the confidential VM (kata agent protocol over ttrpc).
#[derive(Debug, Default, Parser)]
#[command(name = "cvm-agent", version)]
struct Args {
    /// Listen address: vsock://CID:PORT (CID -1 = any) or unix:///path.
    /// Overrides KATA_AGENT_SERVER_ADDR and the agent.server_addr kernel parameter.
    #[arg(long, value_name = "ADDR")]
    server_addr: Option<String>,
    /// Log verbosity (default: agent.log= kernel parameter, else info).
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// Log line format on stderr.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Agent policy (Rego) to start with, instead of /etc/kata-opa/default-policy.rego.
    /// Also KATA_AGENT_POLICY_FILE. Ignored when the agent is PID 1 (see config::policy_file).
    #[arg(long, value_name = "FILE")]
    policy_file: Option<std::path::PathBuf>,
    /// An initdata device image (kata's layout) to use as if attached; its
    /// policy.rego replaces the policy file. Ignored when the agent is PID 1,
    /// which finds the device in /dev itself.
    #[arg(long, value_name = "FILE")]
    initdata_device: Option<std::path::PathBuf>,
    /// Agent config file (kata's TOML keys); as agent.config_file, it
    /// replaces the agent.* kernel parameters.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Directory of the guest component binaries instead of /usr/local/bin.
    /// Ignored when the agent is PID 1.
    #[arg(long, value_name = "DIR")]
    guest_components_bin_dir: Option<std::path::PathBuf>,
    /// Directory of the guest components' sockets and initdata instead of
    /// /run/confidential-containers. Ignored when the agent is PID 1.
    #[arg(long, value_name = "DIR")]
    guest_components_run_dir: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    // Re-executed as a container init by the runtime (see `jail`). Checked
    // first: in its own pid namespace that process is PID 1 too.
    if cvm_agent::jail::is_init_invocation() {
        return cvm_agent::jail::main();
    }
    let pid1 = init::is_pid1();
    if !pid1 {
        return run(Args::parse(), false);
    }
    init::early_boot();
    // The kernel passes unrecognised command-line words to init as arguments;
    // PID 1 must not die on them.
    let args = Args::try_parse().unwrap_or_else(|err| {
        eprintln!("cvm-agent: ignoring init arguments: {}", err.kind());
        Args::default()
    });
    let code = run(args, true);
    init::power_off(if code == ExitCode::SUCCESS { "agent stopped" } else { "fatal error (see above)" })
}

fn run(args: Args, pid1: bool) -> ExitCode {
    let mut kernel = KernelParams::from_proc();
    // kata: --config first, then agent.config_file; the file is the whole configuration.
    let file = args.config.clone().or_else(|| kernel.config_file.clone()).map(|p| (LoadedFile::load(&p), p));
    let mut file_warnings = None;
    let file_error = match file {
        Some((Ok(loaded), path)) => {
            kernel = kernel.replaced_by_file(path.clone(), loaded.config.clone());
            file_warnings = Some((loaded, path));
            None
        }
        Some((Err(err), _)) => Some(err),
        None => None,
    };
    let flags = Overrides { server_addr: args.server_addr, log_level: args.log_level, log_format: args.log_format };
    let config = match AgentConfig::resolve(&kernel, std::env::var(SERVER_ADDR_ENV).ok(), &flags) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("cvm-agent: {err}");
            return ExitCode::from(2);
        }
    };
    cvm_agent::logging::init(config.log_level, config.log_format);
    install_panic_logger(pid1);
    if let Some(err) = file_error {
        tracing::error!(%err, "cannot use the agent config file");
        return ExitCode::from(2);
    }
    if let Some((loaded, path)) = &file_warnings {
        tracing::info!(file = %path.display(), "agent config file: the agent.* kernel parameters are not read (kata's rule)");
        loaded.log_warnings(path);
    }
    if !kernel.ignored.is_empty() {
        tracing::info!(params = ?kernel.ignored, "ignoring agent.* kernel parameters this agent does not handle");
    }
    if pid1 {
        if let Err(err) = init::late_boot(&kernel.init_params()) {
            tracing::error!(%err, "init: boot failed");
            return ExitCode::FAILURE;
        }
    }

    // No policy, no service: a guest that cannot load its policy must not
    // answer the host at all (as PID 1 this powers the VM off).
    let (policy_path, ignored) =
        cvm_agent::config::policy_file(pid1, args.policy_file, std::env::var(POLICY_FILE_ENV).ok());
    if let Some(source) = ignored {
        tracing::warn!(source, "ignoring a policy file given to PID 1 on the kernel command line");
    }
    let mut component_paths = cvm_agent::components::Paths::default();
    let run_dir_given = !pid1 && args.guest_components_run_dir.is_some();
    if pid1 {
        if args.guest_components_bin_dir.is_some() || args.guest_components_run_dir.is_some() {
            tracing::warn!("ignoring guest component directories given to PID 1 on the kernel command line");
        }
    } else {
        component_paths.bin_dir = args.guest_components_bin_dir.unwrap_or(component_paths.bin_dir);
        component_paths.run_dir = args.guest_components_run_dir.unwrap_or(component_paths.run_dir);
    }
    // Extracted for the guest components as PID 1, or where a test points them.
    let initdata_dir = component_paths.initdata_dir();
    let extract_to = (pid1 || run_dir_given).then_some(initdata_dir.as_path());
    let initdata = match cvm_agent::initdata::load(pid1, args.initdata_device.as_deref(), extract_to) {
        Ok(i) => i,
        Err(err) => {
            tracing::error!(%err, "cannot read the initdata; refusing to serve without the tenant's configuration");
            return ExitCode::FAILURE;
        }
    };
    let plan_options = kernel.plan_options(initdata.is_some());
    let initdata_policy = initdata.as_ref().and_then(|i| i.get(cvm_agent::initdata::POLICY));
    let policy = match AgentPolicy::load_startup_policy(&policy_path, initdata_policy) {
        Ok(p) => std::sync::Arc::new(p),
        Err(err) => {
            tracing::error!(%err, "cannot load the agent policy; refusing to serve");
            return ExitCode::FAILURE;
        }
    };

    cvm_agent::memory::single_malloc_arena();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    // DestroySandbox requests it; after the server stops, `is_requested()`
    // tells a requested shutdown from a signal.
    let shutdown = cvm_agent::shutdown::Shutdown::new();
    let result = runtime.block_on(async {
        let stop = cvm_agent::server::termination_signal()?;
        // As PID 1 this also reaps every orphan re-parented to the VM's init.
        let reaper = cvm_agent::reaper::Reaper::start().context("cannot start the child reaper")?;
        let mut components =
            cvm_agent::components::start_at_boot(&plan_options, &component_paths, reaper.clone(), !pid1)
                .await
                .context("guest components did not start")?;
        let served = cvm_agent::server::serve_until(&config, shutdown.clone(), reaper, policy, stop).await;
        if let Some(c) = components.as_mut() {
            c.stop().await;
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "agent stopped");
            ExitCode::FAILURE
        }
    }
}

/// Panics are bugs; in release builds they abort. Log them first so the
/// console shows what happened; as PID 1, power off instead of aborting
/// (an init that dies panics the kernel).
fn install_panic_logger(pid1: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "agent bug: panic");
        if pid1 {
            init::power_off("agent bug: panic");
        }
        default(info);
    }));
}
