//! Agent configuration: where to listen and how to log.
//!
//! Sources, lowest to highest precedence (kata's order, with the command line on
//! top): built-in defaults, kernel parameters (`agent.server_addr=`,
//! `agent.log=`), the environment (`KATA_AGENT_SERVER_ADDR`), then flags.
//! Kernel parameters come from the hypervisor command line; they are read but
//! an unknown `agent.*` key is only logged, never fatal.

use crate::transport::{AddrError, SockAddr};

pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";
pub const SERVER_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";

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
                _ => params.ignored.push(word.to_owned()),
            }
        }
        params
    }

    /// Reads `/proc/cmdline`; a missing or unreadable file means no parameters.
    pub fn from_proc() -> Self {
        std::fs::read_to_string("/proc/cmdline").map(|s| Self::parse(&s)).unwrap_or_default()
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("server address from {source_name}: {err}")]
    ServerAddr { source_name: &'static str, err: AddrError },
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
        let k = KernelParams::parse(
            "console=ttyS0 agent.server_addr=vsock://-1:2048 agent.log=debug agent.debug_console quiet",
        );
        assert_eq!(k.server_addr.as_deref(), Some("vsock://-1:2048"));
        assert_eq!(k.log_level, Some(LogLevel::Debug));
        assert_eq!(k.ignored, vec!["agent.debug_console".to_owned()]);
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
    fn a_bad_address_names_where_it_came_from() {
        let k = KernelParams::parse("agent.server_addr=tcp://x");
        let err = AgentConfig::resolve(&k, None, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("agent.server_addr") && err.contains("tcp://x"), "{err}");
    }
}
