//! Agent configuration: where to listen and how to log.
//!
//! Sources, lowest to highest precedence (kata's order, with the command line on
//! top): built-in defaults, kernel parameters (`agent.server_addr=`,
//! `agent.log=`), the environment (`KATA_AGENT_SERVER_ADDR`), then flags.
//! Kernel parameters come from the hypervisor command line; they are read but
//! an unknown `agent.*` key is only logged, never fatal.
//!
//! `agent.config_file=PATH` names a TOML file in the image whose keys
//! (`server_addr`, `log_level`, `debug_console`, `unified_cgroup_hierarchy`,
//! `log_vport`, `image_pull_timeout`)
//! sit below the kernel parameters: a key given on the command line wins.
//! PID 1 settings (`InitParams`): cgroup v2 unless
//! `agent.unified_cgroup_hierarchy=0`; the debug console off unless
//! `agent.debug_console` is given.

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

/// `agent.*` keys found on the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelParams {
    pub server_addr: Option<String>,
    pub log_level: Option<LogLevel>,
    /// `agent.config_file=PATH`: a TOML file in the image (see [`FileConfig`]).
    pub config_file: Option<std::path::PathBuf>,
    /// `agent.debug_console[=BOOL]`.
    pub debug_console: Option<bool>,
    /// `agent.unified_cgroup_hierarchy=BOOL` (false selects cgroup v1).
    pub unified_cgroup_hierarchy: Option<bool>,
    /// `agent.log_vport=PORT`: also send logs to the host on this vsock port.
    pub log_vport: Option<u32>,
    /// `agent.image_pull_timeout=SECS` (kata's key; > 0): the deadline of
    /// one PullImage call to the confidential data hub.
    pub image_pull_timeout: Option<std::time::Duration>,
    /// Keys we saw but do not act on (yet), kept for one log line at start-up.
    pub ignored: Vec<String>,
}

impl KernelParams {
    /// Parses a `/proc/cmdline` string. Later occurrences of a key win, as the
    /// kernel's own parameter handling does.
    pub fn parse(cmdline: &str) -> Self {
        let mut params = KernelParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("agent.") else { continue };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            match key {
                "server_addr" => params.server_addr = Some(value.to_owned()),
                "log" => match value.parse() {
                    Ok(level) => params.log_level = Some(level),
                    Err(_) => params.ignored.push(word.to_owned()),
                },
                "config_file" if !value.is_empty() => params.config_file = Some(value.into()),
                "debug_console" => match parse_bool(value) {
                    Some(b) => params.debug_console = Some(b),
                    None => params.ignored.push(word.to_owned()),
                },
                "unified_cgroup_hierarchy" => match parse_bool(value) {
                    Some(b) => params.unified_cgroup_hierarchy = Some(b),
                    None => params.ignored.push(word.to_owned()),
                },
                "log_vport" => match value.parse::<u32>() {
                    Ok(p) if p > 0 => params.log_vport = Some(p),
                    _ => params.ignored.push(word.to_owned()),
                },
                "image_pull_timeout" => match value.parse::<u64>() {
                    Ok(s) if s > 0 => params.image_pull_timeout = Some(std::time::Duration::from_secs(s)),
                    _ => params.ignored.push(word.to_owned()),
                },
                _ => params.ignored.push(word.to_owned()),
            }
        }
        params
    }

    /// Reads `/proc/cmdline`; a missing or unreadable file means no parameters.
    pub fn from_proc() -> Self {
        std::fs::read_to_string("/proc/cmdline").map(|s| Self::parse(&s)).unwrap_or_default()
    }

    /// Fills every key the command line left unset from `file`.
    pub fn with_file_defaults(mut self, file: FileConfig) -> Self {
        self.server_addr = self.server_addr.or(file.server_addr);
        self.log_level = self.log_level.or(file.log_level);
        self.debug_console = self.debug_console.or(file.debug_console);
        self.unified_cgroup_hierarchy = self.unified_cgroup_hierarchy.or(file.unified_cgroup_hierarchy);
        self.log_vport = self.log_vport.or(file.log_vport);
        self.image_pull_timeout =
            self.image_pull_timeout.or(file.image_pull_timeout.filter(|s| *s > 0).map(std::time::Duration::from_secs));
        self
    }

    /// What PID 1 needs from the parameters.
    pub fn init_params(&self) -> InitParams {
        InitParams {
            cgroup_v1: self.unified_cgroup_hierarchy == Some(false),
            debug_console: self.debug_console.unwrap_or(false),
            log_vport: self.log_vport,
        }
    }
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

/// Largest agent config file read (it is a handful of keys).
const CONFIG_FILE_MAX: u64 = 64 * 1024;

/// The `agent.config_file` TOML. Unknown keys are refused by name.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server_addr: Option<String>,
    #[serde(default, deserialize_with = "de_level")]
    pub log_level: Option<LogLevel>,
    pub debug_console: Option<bool>,
    pub unified_cgroup_hierarchy: Option<bool>,
    pub log_vport: Option<u32>,
    /// Seconds, as `agent.image_pull_timeout`.
    pub image_pull_timeout: Option<u64>,
}

fn de_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LogLevel>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses the file, bounded in size.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let bad = |reason: String| ConfigError::File { path: path.to_owned(), reason };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut text = String::new();
        file.take(CONFIG_FILE_MAX + 1).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > CONFIG_FILE_MAX {
            return Err(bad(format!("larger than {CONFIG_FILE_MAX} bytes")));
        }
        Self::parse(&text).map_err(bad)
    }
}

/// Values given explicitly on the agent's command line.
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
    fn init_params_default_to_cgroup_v2_and_no_debug_console() {
        assert_eq!(KernelParams::parse("quiet").init_params(), InitParams::default());
        let k = KernelParams::parse("agent.unified_cgroup_hierarchy=0 agent.debug_console agent.log_vport=1025");
        assert_eq!(k.init_params(), InitParams { cgroup_v1: true, debug_console: true, log_vport: Some(1025) });
        let k = KernelParams::parse("agent.log_vport=0 agent.log_vport=x");
        assert_eq!(k.init_params().log_vport, None);
        assert_eq!(k.ignored.len(), 2);
        let k = KernelParams::parse("agent.unified_cgroup_hierarchy=maybe agent.debug_console=off");
        assert_eq!(k.init_params(), InitParams::default());
        assert_eq!(k.ignored, vec!["agent.unified_cgroup_hierarchy=maybe".to_owned()]);
    }

    #[test]
    fn config_file_sits_below_kernel_parameters() {
        let file =
            FileConfig::parse("server_addr = \"vsock://-1:9\"\nlog_level = \"debug\"\ndebug_console = true\n").unwrap();
        let k = KernelParams::parse("agent.config_file=/etc/agent.toml agent.log=warn").with_file_defaults(file);
        assert_eq!(k.config_file.as_deref(), Some(std::path::Path::new("/etc/agent.toml")));
        assert_eq!(k.server_addr.as_deref(), Some("vsock://-1:9"));
        assert_eq!(k.log_level, Some(LogLevel::Warn));
        assert!(k.init_params().debug_console);
    }

    #[test]
    fn config_file_refuses_unknown_keys_bad_values_and_huge_files() {
        assert!(FileConfig::parse("sever_addr = \"x\"").unwrap_err().contains("sever_addr"));
        assert!(FileConfig::parse("log_level = \"loud\"").unwrap_err().contains("loud"));
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(CONFIG_FILE_MAX as usize + 1)).unwrap();
        let err = FileConfig::load(&big).unwrap_err().to_string();
        assert!(err.contains("big.toml") && err.contains("larger than"), "{err}");
        let err = FileConfig::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
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
        let file = FileConfig::parse("image_pull_timeout = 60").unwrap();
        let k = KernelParams::parse("").with_file_defaults(file);
        assert_eq!(k.image_pull_timeout, Some(std::time::Duration::from_secs(60)));
    }

    #[test]
    fn a_bad_address_names_where_it_came_from() {
        let k = KernelParams::parse("agent.server_addr=tcp://x");
        let err = AgentConfig::resolve(&k, None, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("agent.server_addr") && err.contains("tcp://x"), "{err}");
    }
}
