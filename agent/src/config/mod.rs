//! Agent configuration: where to listen, how to log, how PID 1 boots and
//! which guest components to start.
//!
//! Sources, lowest to highest precedence (kata's order, with the command line on
//! top): built-in defaults, kernel parameters (`agent.server_addr=`,
//! `agent.log=`, ...), the environment (`KATA_AGENT_SERVER_ADDR`), then flags.
//! Kernel parameters come from the hypervisor command line; they are read but
//! an unknown `agent.*` key is only logged, never fatal.
//!
//! `agent.config_file=PATH` (or `--config PATH`) names a TOML file in the
//! image with kata's keys ([`file`]); as in kata it replaces the kernel
//! parameters altogether.
//! PID 1 settings (`InitParams`), kata's rule: cgroup v2 when
//! `systemd.unified_cgroup_hierarchy` is true or `cgroup_no_v1=all`, else v1
//! (kata's runtime passes both by default); the debug console off unless
//! `agent.debug_console` is given.

pub mod file;

use std::time::Duration;

use crate::components::{PlanOptions, Procs, RestApi};

pub use file::{FileConfig, LoadedFile};

use crate::transport::{AddrError, SockAddr};

pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";
pub const SERVER_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";
/// kata's variable naming the policy file (honoured only when not PID 1).
pub const POLICY_FILE_ENV: &str = "KATA_AGENT_POLICY_FILE";

/// The policy file the agent starts with. As PID 1 it is always the image's
/// [`crate::policy::DEFAULT_POLICY_FILE`]: PID 1's arguments and environment
/// come from the kernel command line, which the host writes, and a host that
/// could point the agent at another file in the image (say an allow-all
/// policy) would bypass the tenant's policy. The tenant replaces the policy
/// through initdata instead. A non-PID-1 agent (tests, development) takes
/// `--policy-file`, then `KATA_AGENT_POLICY_FILE`.
pub fn policy_file(
    pid1: bool,
    flag: Option<std::path::PathBuf>,
    env: Option<String>,
) -> (std::path::PathBuf, Option<&'static str>) {
    let default = std::path::PathBuf::from(crate::policy::DEFAULT_POLICY_FILE);
    if pid1 {
        let ignored = if flag.is_some() {
            Some("--policy-file")
        } else if env.as_deref().is_some_and(|e| !e.is_empty()) {
            Some(POLICY_FILE_ENV)
        } else {
            None
        };
        return (default, ignored);
    }
    let chosen = flag.or_else(|| env.filter(|e| !e.is_empty()).map(Into::into)).unwrap_or(default);
    (chosen, None)
}

/// Log verbosity, named as kata's `agent.log=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            // kata also accepts the slog levels above error; they all mean "only errors".
            "error" | "critical" | "fatal" => Ok(LogLevel::Error),
            other => Err(format!("unknown log level {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `agent.*` keys (and kata's cgroup keys) found on the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelParams {
    pub server_addr: Option<String>,
    pub log_level: Option<LogLevel>,
    /// `agent.config_file=PATH`: a TOML file in the image (see [`file`]).
    pub config_file: Option<std::path::PathBuf>,
    /// `agent.debug_console[=BOOL]`.
    pub debug_console: Option<bool>,
    /// `systemd.unified_cgroup_hierarchy=BOOL` (kata's `unified_cgroup_hierarchy`).
    pub unified_cgroup_hierarchy: Option<bool>,
    /// `cgroup_no_v1=all` (kata keeps only the value `all`).
    pub cgroup_no_v1_all: bool,
    /// `agent.log_vport=PORT`: also send logs to the host on this vsock port.
    pub log_vport: Option<u32>,
    /// `agent.launch_process_timeout=SECS` (> 0).
    pub launch_process_timeout: Option<Duration>,
    /// `agent.guest_components_procs=`.
    pub guest_components_procs: Option<Procs>,
    /// `agent.guest_components_rest_api=`.
    pub guest_components_rest_api: Option<RestApi>,
    /// `agent.image_pull_timeout=SECS` (kata's key; > 0): the deadline of
    /// one PullImage call to the confidential data hub.
    pub image_pull_timeout: Option<Duration>,
    /// Keys we saw but do not act on (yet), kept for one log line at start-up.
    pub ignored: Vec<String>,
}

impl KernelParams {
    /// Parses a `/proc/cmdline` string. Later occurrences of a key win, as the
    /// kernel's own parameter handling does.
    pub fn parse(cmdline: &str) -> Self {
        let mut params = KernelParams::default();
        for word in cmdline.split_ascii_whitespace() {
            if let Some(value) = word.strip_prefix("systemd.unified_cgroup_hierarchy=") {
                params.unified_cgroup_hierarchy = Some(kata_bool(value));
                continue;
            }
            if let Some(value) = word.strip_prefix("cgroup_no_v1=") {
                // kata: any other value leaves the setting as it was.
                if value == "all" {
                    params.cgroup_no_v1_all = true;
                }
                continue;
            }
            let Some(rest) = word.strip_prefix("agent.") else { continue };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            let ok = match key {
                "server_addr" => {
                    params.server_addr = Some(value.to_owned());
                    true
                }
                "log" => value.parse().map(|l| params.log_level = Some(l)).is_ok(),
                "config_file" if !value.is_empty() => {
                    params.config_file = Some(value.into());
                    true
                }
                "debug_console" => parse_bool(value).map(|b| params.debug_console = Some(b)).is_some(),
                "log_vport" => match value.parse::<u32>() {
                    Ok(p) if p > 0 => {
                        params.log_vport = Some(p);
                        true
                    }
                    _ => false,
                },
                "launch_process_timeout" => match value.parse::<u64>() {
                    Ok(s) if s > 0 => {
                        params.launch_process_timeout = Some(Duration::from_secs(s));
                        true
                    }
                    _ => false,
                },
                "guest_components_procs" => value.parse().map(|p| params.guest_components_procs = Some(p)).is_ok(),
                "guest_components_rest_api" => {
                    value.parse().map(|r| params.guest_components_rest_api = Some(r)).is_ok()
                }
                "image_pull_timeout" => match value.parse::<u64>() {
                    Ok(s) if s > 0 => {
                        params.image_pull_timeout = Some(Duration::from_secs(s));
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                params.ignored.push(word.to_owned());
            }
        }
        params
    }

    /// Reads `/proc/cmdline`; a missing or unreadable file means no parameters.
    pub fn from_proc() -> Self {
        std::fs::read_to_string("/proc/cmdline").map(|s| Self::parse(&s)).unwrap_or_default()
    }

    /// kata's rule for a config file: it is the whole configuration, so every
    /// kernel parameter is dropped (the file's path is kept for the logs).
    pub fn replaced_by_file(self, path: std::path::PathBuf, file: FileConfig) -> Self {
        KernelParams {
            server_addr: file.server_addr,
            log_level: file.log_level,
            config_file: Some(path),
            debug_console: file.debug_console,
            unified_cgroup_hierarchy: file.unified_cgroup_hierarchy,
            cgroup_no_v1_all: false,
            log_vport: file.log_vport,
            launch_process_timeout: file.launch_process_timeout.filter(|t| !t.is_zero()),
            guest_components_procs: file.guest_components_procs,
            guest_components_rest_api: file.guest_components_rest_api,
            image_pull_timeout: file.image_pull_timeout.filter(|t| !t.is_zero()),
            ignored: Vec::new(),
        }
    }

    /// What PID 1 needs from the parameters.
    pub fn init_params(&self) -> InitParams {
        InitParams {
            cgroup_v1: !cgroup_v2(self.unified_cgroup_hierarchy.unwrap_or(false), self.cgroup_no_v1_all),
            debug_console: self.debug_console.unwrap_or(false),
            log_vport: self.log_vport,
        }
    }

    /// Which guest components to start, and how.
    pub fn plan_options(&self, initdata: bool) -> PlanOptions {
        let defaults = PlanOptions::default();
        PlanOptions {
            procs: self.guest_components_procs.unwrap_or(defaults.procs),
            rest_api: self.guest_components_rest_api.unwrap_or(defaults.rest_api),
            timeout: self.launch_process_timeout.unwrap_or(defaults.timeout),
            initdata,
        }
    }
}

/// kata's hierarchy choice at boot: v2 when asked for by
/// `systemd.unified_cgroup_hierarchy` or when v1 is disabled altogether.
pub fn cgroup_v2(unified_cgroup_hierarchy: bool, cgroup_no_v1_all: bool) -> bool {
    unified_cgroup_hierarchy || cgroup_no_v1_all
}

/// kata's `get_bool_value`: `true`/`false`, else an integer (non-zero is
/// true), else false.
fn kata_bool(value: &str) -> bool {
    value.parse::<bool>().unwrap_or_else(|_| value.parse::<u64>().is_ok_and(|v| v != 0))
}

/// kata's boolean parameter forms; a bare key (`agent.debug_console`) is true.
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Settings PID 1 applies at boot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    pub cgroup_v1: bool,
    pub debug_console: bool,
    pub log_vport: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub server_addr: Option<String>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub server_addr: SockAddr,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// Deadline of one guest image pull (kata's default 1200 s).
    pub image_pull_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("server address from {source_name}: {err}")]
    ServerAddr { source_name: &'static str, err: AddrError },
    #[error("agent config file {path}: {reason}")]
    File { path: std::path::PathBuf, reason: String },
}

impl AgentConfig {
    /// Merges every source; `env_addr` is the value of `KATA_AGENT_SERVER_ADDR`.
    pub fn resolve(kernel: &KernelParams, env_addr: Option<String>, flags: &Overrides) -> Result<Self, ConfigError> {
        let (addr, source_name) = if let Some(a) = &flags.server_addr {
            (a.clone(), "--server-addr")
        } else if let Some(a) = env_addr.filter(|a| !a.is_empty()) {
            (a, SERVER_ADDR_ENV)
        } else if let Some(a) = &kernel.server_addr {
            (a.clone(), "kernel parameter agent.server_addr")
        } else {
            (DEFAULT_SERVER_ADDR.to_owned(), "the default")
        };
        let server_addr = addr.parse().map_err(|err| ConfigError::ServerAddr { source_name, err })?;
        Ok(AgentConfig {
            server_addr,
            log_level: flags.log_level.or(kernel.log_level).unwrap_or(LogLevel::Info),
            log_format: flags.log_format.unwrap_or(LogFormat::Text),
            image_pull_timeout: kernel.image_pull_timeout.unwrap_or(crate::image_pull::DEFAULT_IMAGE_PULL_TIMEOUT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_vsock_any_port_1024() {
        let cfg = AgentConfig::resolve(&KernelParams::default(), None, &Overrides::default()).unwrap();
        assert_eq!(cfg.server_addr.to_string(), "vsock://-1:1024");
        assert_eq!(cfg.log_level, LogLevel::Info);
    }

    #[test]
    fn kernel_params_are_read_and_unknown_ones_kept_aside() {
        let k =
            KernelParams::parse("console=ttyS0 agent.server_addr=vsock://-1:2048 agent.log=debug agent.devmode quiet");
        assert_eq!(k.server_addr.as_deref(), Some("vsock://-1:2048"));
        assert_eq!(k.log_level, Some(LogLevel::Debug));
        assert_eq!(k.ignored, vec!["agent.devmode".to_owned()]);
        assert!(KernelParams::parse("agent.config_file=").config_file.is_none());
    }

    #[test]
    fn precedence_is_flag_then_env_then_kernel() {
        let k = KernelParams::parse("agent.server_addr=vsock://-1:1 agent.log=warn");
        let env = Some("vsock://-1:2".to_owned());
        let flag = Overrides { server_addr: Some("unix:///run/a.sock".into()), ..Default::default() };
        assert_eq!(AgentConfig::resolve(&k, env.clone(), &flag).unwrap().server_addr.to_string(), "unix:///run/a.sock");
        let cfg = AgentConfig::resolve(&k, env, &Overrides::default()).unwrap();
        assert_eq!(cfg.server_addr.to_string(), "vsock://-1:2");
        assert_eq!(cfg.log_level, LogLevel::Warn);
        assert_eq!(
            AgentConfig::resolve(&k, None, &Overrides::default()).unwrap().server_addr.to_string(),
            "vsock://-1:1"
        );
    }

    #[test]
    fn cgroup_hierarchy_follows_katas_kernel_parameters() {
        // kata: v1 unless systemd.unified_cgroup_hierarchy is true or cgroup_no_v1=all.
        assert!(KernelParams::parse("quiet").init_params().cgroup_v1);
        for (cmdline, v1) in [
            ("cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1", false), // kata's runtime default
            ("systemd.unified_cgroup_hierarchy=1", false),
            ("systemd.unified_cgroup_hierarchy=true", false),
            ("systemd.unified_cgroup_hierarchy=7", false),
            ("cgroup_no_v1=all", false),
            ("cgroup_no_v1=all systemd.unified_cgroup_hierarchy=0", false),
            ("systemd.unified_cgroup_hierarchy=0", true),
            ("systemd.unified_cgroup_hierarchy=maybe", true),
            ("cgroup_no_v1=memory", true),
            ("systemd.unified_cgroup_hierarchy", true),
            ("systemd.unified_cgroup_hierarchy=1 systemd.unified_cgroup_hierarchy=false", true),
            // Not kata's key: logged as ignored, no effect.
            ("agent.unified_cgroup_hierarchy=1", true),
        ] {
            assert_eq!(KernelParams::parse(cmdline).init_params().cgroup_v1, v1, "{cmdline}");
        }
        assert!(!cgroup_v2(false, false) && cgroup_v2(true, false) && cgroup_v2(false, true));
    }

    #[test]
    fn init_params_have_no_debug_console_by_default_and_a_positive_log_port() {
        let k = KernelParams::parse("agent.debug_console agent.log_vport=1025 cgroup_no_v1=all");
        assert_eq!(k.init_params(), InitParams { cgroup_v1: false, debug_console: true, log_vport: Some(1025) });
        let k = KernelParams::parse("agent.log_vport=0 agent.log_vport=x");
        assert_eq!(k.init_params().log_vport, None);
        assert_eq!(k.ignored.len(), 2);
        let k = KernelParams::parse("agent.debug_console=off agent.debug_console=maybe");
        assert!(!k.init_params().debug_console);
        assert_eq!(k.ignored, vec!["agent.debug_console=maybe".to_owned()]);
    }

    #[test]
    fn guest_component_keys_default_to_katas_values() {
        let opts = KernelParams::parse("quiet").plan_options(false);
        assert_eq!(opts, PlanOptions::default());
        assert_eq!(opts.procs, Procs::ApiServerRest);
        assert_eq!(opts.timeout, Duration::from_secs(6));
        let k = KernelParams::parse(
            "agent.guest_components_procs=confidential-data-hub agent.guest_components_rest_api=all \
             agent.launch_process_timeout=12 agent.launch_process_timeout=0 agent.guest_components_procs=cdh",
        );
        let opts = k.plan_options(true);
        assert_eq!(
            (opts.procs, opts.rest_api, opts.timeout, opts.initdata),
            (Procs::ConfidentialDataHub, RestApi::All, Duration::from_secs(12), true)
        );
        assert_eq!(k.ignored, ["agent.launch_process_timeout=0", "agent.guest_components_procs=cdh"]);
    }

    #[test]
    fn a_config_file_replaces_the_kernel_parameters_as_in_kata() {
        let file = LoadedFile::parse(
            "server_addr = \"vsock://-1:9\"\ndebug_console = true\nguest_components_procs = \"none\"\n",
        )
        .unwrap()
        .config;
        let k = KernelParams::parse("agent.config_file=/etc/agent.toml agent.log=warn cgroup_no_v1=all agent.x=1");
        let k = k.replaced_by_file("/etc/agent.toml".into(), file);
        assert_eq!(k.config_file.as_deref(), Some(std::path::Path::new("/etc/agent.toml")));
        assert_eq!(k.server_addr.as_deref(), Some("vsock://-1:9"));
        assert_eq!(k.log_level, None, "agent.log from the command line must not survive");
        assert!(k.init_params().debug_console);
        assert!(k.init_params().cgroup_v1, "cgroup_no_v1 from the command line must not survive");
        assert_eq!(k.plan_options(false).procs, Procs::None);
        assert!(k.ignored.is_empty());
    }

    #[test]
    fn pid1_always_takes_the_image_policy_whatever_the_command_line_says() {
        let flag = Some(std::path::PathBuf::from("/etc/kata-opa/allow-all.rego"));
        let (p, ignored) = policy_file(true, flag.clone(), None);
        assert_eq!(p, std::path::Path::new(crate::policy::DEFAULT_POLICY_FILE));
        assert_eq!(ignored, Some("--policy-file"));
        let (_, ignored) = policy_file(true, None, Some("/x.rego".into()));
        assert_eq!(ignored, Some(POLICY_FILE_ENV));
        assert_eq!(
            policy_file(false, flag, Some("/x.rego".into())).0,
            std::path::Path::new("/etc/kata-opa/allow-all.rego")
        );
        assert_eq!(policy_file(false, None, Some("/x.rego".into())).0, std::path::Path::new("/x.rego"));
        assert_eq!(policy_file(false, None, None).0, std::path::Path::new(crate::policy::DEFAULT_POLICY_FILE));
    }

    #[test]
    fn image_pull_timeout_is_kata_s_key_in_seconds_default_1200() {
        let cfg = AgentConfig::resolve(&KernelParams::default(), None, &Overrides::default()).unwrap();
        assert_eq!(cfg.image_pull_timeout, std::time::Duration::from_secs(1200));
        let k = KernelParams::parse("agent.image_pull_timeout=30");
        assert_eq!(k.image_pull_timeout, Some(std::time::Duration::from_secs(30)));
        let k = KernelParams::parse("agent.image_pull_timeout=0 agent.image_pull_timeout=soon");
        assert_eq!((k.image_pull_timeout, k.ignored.len()), (None, 2));
        let file = file::LoadedFile::parse("image_pull_timeout = { secs = 60, nanos = 0 }").unwrap().config;
        let k = KernelParams::parse("agent.image_pull_timeout=5").replaced_by_file("/etc/agent.toml".into(), file);
        assert_eq!(k.image_pull_timeout, Some(std::time::Duration::from_secs(60)));
    }

    #[test]
    fn a_bad_address_names_where_it_came_from() {
        let k = KernelParams::parse("agent.server_addr=tcp://x");
        let err = AgentConfig::resolve(&k, None, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("agent.server_addr") && err.contains("tcp://x"), "{err}");
    }
}
