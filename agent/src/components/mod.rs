//! The guest components the agent starts and keeps running, as kata's agent
//! does (`agent.guest_components_procs`): the attestation-agent, then the
//! confidential-data-hub, then api-server-rest, each implying the ones before
//! it. This module holds the launch plan (paths, arguments, sockets: kata's
//! exact shapes) and the component names; [`supervisor`] runs the plan and
//! restarts what dies; [`status`] is the shared snapshot the RPCs read.
//!
//! The plan never takes a path from the host: binaries and sockets are
//! kata's fixed paths, overridable only for a non-PID-1 agent (tests).

pub mod status;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// kata's rootfs locations.
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
pub const DEFAULT_RUN_DIR: &str = "/run/confidential-containers";
/// kata's `OCICRYPT_KEYPROVIDER_CONFIG` for the data hub.
pub const OCICRYPT_CONFIG_PATH: &str = "/etc/ocicrypt_config.json";
/// kata's `agent.launch_process_timeout` default.
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(6);

/// One guest component, in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    AttestationAgent,
    ConfidentialDataHub,
    ApiServerRest,
}

impl Component {
    pub const ALL: [Component; 3] =
        [Component::AttestationAgent, Component::ConfidentialDataHub, Component::ApiServerRest];

    /// The binary's file name, also the component's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Component::AttestationAgent => "attestation-agent",
            Component::ConfidentialDataHub => "confidential-data-hub",
            Component::ApiServerRest => "api-server-rest",
        }
    }
}

/// `agent.guest_components_procs`: the last component to start; each one
/// implies those before it. kata's default is `api-server-rest` (all three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Procs {
    None,
    AttestationAgent,
    ConfidentialDataHub,
    #[default]
    ApiServerRest,
}

impl Procs {
    /// The components to start, in order.
    pub fn components(self) -> &'static [Component] {
        match self {
            Procs::None => &[],
            Procs::AttestationAgent => &[Component::AttestationAgent],
            Procs::ConfidentialDataHub => &[Component::AttestationAgent, Component::ConfidentialDataHub],
            Procs::ApiServerRest => &Component::ALL,
        }
    }
}

impl std::str::FromStr for Procs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Procs::None),
            "attestation-agent" => Ok(Procs::AttestationAgent),
            "confidential-data-hub" => Ok(Procs::ConfidentialDataHub),
            "api-server-rest" => Ok(Procs::ApiServerRest),
            other => Err(format!(
                "guest_components_procs {other:?} is not one of none, attestation-agent, confidential-data-hub, api-server-rest"
            )),
        }
    }
}

/// `agent.guest_components_rest_api`: what api-server-rest serves (`--features`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestApi {
    All,
    Attestation,
    #[default]
    Resource,
}

impl RestApi {
    pub fn as_str(self) -> &'static str {
        match self {
            RestApi::All => "all",
            RestApi::Attestation => "attestation",
            RestApi::Resource => "resource",
        }
    }
}

impl std::str::FromStr for RestApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(RestApi::All),
            "attestation" => Ok(RestApi::Attestation),
            "resource" => Ok(RestApi::Resource),
            other => Err(format!("guest_components_rest_api {other:?} is not one of all, attestation, resource")),
        }
    }
}

/// Where the binaries are and where their sockets and configs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub bin_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { bin_dir: DEFAULT_BIN_DIR.into(), run_dir: DEFAULT_RUN_DIR.into() }
    }
}

impl Paths {
    pub fn binary(&self, c: Component) -> PathBuf {
        self.bin_dir.join(c.name())
    }
    pub fn aa_socket(&self) -> PathBuf {
        self.run_dir.join("attestation-agent/attestation-agent.sock")
    }
    pub fn cdh_socket(&self) -> PathBuf {
        self.run_dir.join("cdh.sock")
    }
    /// Where the agent extracts initdata (`initdata.toml`, `aa.toml`, `cdh.toml`).
    pub fn initdata_dir(&self) -> PathBuf {
        self.run_dir.join("initdata")
    }
}

/// What the plan depends on besides the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    pub procs: Procs,
    pub rest_api: RestApi,
    /// `agent.launch_process_timeout`: how long to wait for a socket.
    pub timeout: Duration,
    /// The pod has initdata (the AA then gets `--initdata-toml`).
    pub initdata: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            procs: Procs::default(),
            rest_api: RestApi::default(),
            timeout: DEFAULT_LAUNCH_TIMEOUT,
            initdata: false,
        }
    }
}

/// How to start one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub component: Component,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Passed as `-c FILE` when the file exists at launch time (kata's rule).
    pub config: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// The socket the component serves on; launched = this path exists.
    pub wait_socket: Option<PathBuf>,
    pub timeout: Duration,
}

impl LaunchSpec {
    /// The full argument list at launch time.
    pub fn command_args(&self) -> Vec<String> {
        let mut args = self.args.clone();
        if let Some(config) = self.config.as_deref().filter(|c| c.exists()) {
            args.push("-c".into());
            args.push(config.display().to_string());
        }
        args
    }
}

/// kata's built-in plan (`builtin_coco_plan`), in launch order:
/// - `attestation-agent --attestation_sock unix://<aa.sock> [--initdata-toml <initdata.toml>] [-c aa.toml]`,
///   waiting for the AA socket;
/// - `confidential-data-hub [-c cdh.toml]` with `OCICRYPT_KEYPROVIDER_CONFIG`,
///   waiting for the CDH socket;
/// - `api-server-rest --features <rest_api>`, not waited for.
pub fn plan(opts: &PlanOptions, paths: &Paths) -> Vec<LaunchSpec> {
    let initdata = paths.initdata_dir();
    opts.procs
        .components()
        .iter()
        .map(|&c| match c {
            Component::AttestationAgent => {
                let mut args = vec!["--attestation_sock".into(), format!("unix://{}", paths.aa_socket().display())];
                if opts.initdata {
                    args.push("--initdata-toml".into());
                    args.push(initdata.join("initdata.toml").display().to_string());
                }
                LaunchSpec {
                    component: c,
                    program: paths.binary(c),
                    args,
                    config: Some(initdata.join(crate::initdata::AA_CONFIG)),
                    env: vec![],
                    wait_socket: Some(paths.aa_socket()),
                    timeout: opts.timeout,
                }
            }
            Component::ConfidentialDataHub => LaunchSpec {
                component: c,
                program: paths.binary(c),
                args: vec![],
                config: Some(initdata.join(crate::initdata::CDH_CONFIG)),
                env: vec![("OCICRYPT_KEYPROVIDER_CONFIG".into(), OCICRYPT_CONFIG_PATH.into())],
                wait_socket: Some(paths.cdh_socket()),
                timeout: opts.timeout,
            },
            Component::ApiServerRest => LaunchSpec {
                component: c,
                program: paths.binary(c),
                args: vec!["--features".into(), opts.rest_api.as_str().into()],
                config: None,
                env: vec![],
                wait_socket: None,
                timeout: Duration::ZERO,
            },
        })
        .collect()
}

/// kata's all-or-nothing rule: when any binary of the plan is missing, the
/// components were not provisioned and none is started. Returns the first
/// missing binary.
pub fn missing_binary(plan: &[LaunchSpec], exists: impl Fn(&Path) -> bool) -> Option<&Path> {
    plan.iter().map(|s| s.program.as_path()).find(|p| !exists(p))
}

/// Starts the guest components at boot as kata does: nothing when `procs` is
/// `none`, nothing (with a warning) when a binary of the plan is missing,
/// else every component in order under a [`supervisor::Supervisor`], which
/// reports to [`status::global`]. An error (a component that did not come
/// up) must stop the boot.
pub async fn start_at_boot(
    opts: &PlanOptions,
    paths: &Paths,
    reaper: crate::reaper::Reaper,
    die_with_agent: bool,
) -> Result<Option<supervisor::Supervisor>, supervisor::LaunchError> {
    let plan = plan(opts, paths);
    if plan.is_empty() {
        tracing::info!("agent.guest_components_procs=none: no guest components started");
        return Ok(None);
    }
    if let Some(missing) = missing_binary(&plan, Path::exists) {
        tracing::warn!(missing = %missing.display(), procs = ?opts.procs,
            "guest component binaries not available: none started (kata's rule; lower \
             agent.guest_components_procs to what the image ships)");
        return Ok(None);
    }
    let launcher = std::sync::Arc::new(supervisor::ProcessLauncher::new(reaper, die_with_agent));
    supervisor::Supervisor::start(plan, launcher, supervisor::RestartPolicy::default(), status::global().clone())
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_are_cumulative_and_default_to_all_three() {
        assert_eq!(Procs::default().components(), &Component::ALL);
        assert!(Procs::None.components().is_empty());
        assert_eq!(Procs::AttestationAgent.components(), &[Component::AttestationAgent]);
        assert_eq!(
            "confidential-data-hub".parse::<Procs>().unwrap().components(),
            &[Component::AttestationAgent, Component::ConfidentialDataHub]
        );
        assert!("cdh".parse::<Procs>().unwrap_err().contains("cdh"));
        assert_eq!("all".parse::<RestApi>(), Ok(RestApi::All));
        assert!("everything".parse::<RestApi>().is_err());
    }

    #[test]
    fn the_plan_has_katas_paths_arguments_and_sockets() {
        let paths = Paths::default();
        let opts = PlanOptions { initdata: true, ..Default::default() };
        let p = plan(&opts, &paths);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].program, Path::new("/usr/local/bin/attestation-agent"));
        assert_eq!(
            p[0].args,
            [
                "--attestation_sock",
                "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock",
                "--initdata-toml",
                "/run/confidential-containers/initdata/initdata.toml"
            ]
        );
        assert_eq!(p[0].config.as_deref(), Some(Path::new("/run/confidential-containers/initdata/aa.toml")));
        assert_eq!(
            p[0].wait_socket.as_deref(),
            Some(Path::new("/run/confidential-containers/attestation-agent/attestation-agent.sock"))
        );
        assert_eq!(p[0].timeout, Duration::from_secs(6));
        assert_eq!(p[1].program, Path::new("/usr/local/bin/confidential-data-hub"));
        assert!(p[1].args.is_empty());
        assert_eq!(p[1].env, [("OCICRYPT_KEYPROVIDER_CONFIG".to_owned(), "/etc/ocicrypt_config.json".to_owned())]);
        assert_eq!(p[1].wait_socket.as_deref(), Some(Path::new("/run/confidential-containers/cdh.sock")));
        assert_eq!(p[2].program, Path::new("/usr/local/bin/api-server-rest"));
        assert_eq!(p[2].args, ["--features", "resource"]);
        assert_eq!(p[2].wait_socket, None);
        // Without initdata the AA gets no --initdata-toml.
        let p = plan(&PlanOptions { procs: Procs::AttestationAgent, ..Default::default() }, &paths);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].args.len(), 2);
    }

    #[test]
    fn config_is_passed_only_when_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { bin_dir: dir.path().into(), run_dir: dir.path().into() };
        let p = plan(&PlanOptions { procs: Procs::ConfidentialDataHub, ..Default::default() }, &paths);
        assert!(p[1].command_args().is_empty());
        std::fs::create_dir(paths.initdata_dir()).unwrap();
        std::fs::write(paths.initdata_dir().join("cdh.toml"), "").unwrap();
        assert_eq!(p[1].command_args(), ["-c".to_owned(), paths.initdata_dir().join("cdh.toml").display().to_string()]);
    }

    #[test]
    fn one_missing_binary_means_none_is_started() {
        let p = plan(&PlanOptions::default(), &Paths::default());
        let missing = missing_binary(&p, |path| !path.ends_with("api-server-rest"));
        assert_eq!(missing, Some(Path::new("/usr/local/bin/api-server-rest")));
        assert_eq!(missing_binary(&p, |_| true), None);
    }
}
