//! The agent config file (`agent.config_file=PATH` or `--config PATH`), kata's
//! TOML keys. As in kata, the file is the whole configuration: the other
//! `agent.*` kernel parameters are not read when it is given.
//!
//! Every key kata's agent knows is either mapped or accepted with a warning
//! that it is ignored; a key kata does not know is warned about too (kata's
//! parser skips them silently). A known key with a value of the wrong type is
//! an error, as in kata. Only the file's size is bounded: it is in the image.

use std::time::Duration;

use crate::components::{Procs, RestApi};

use super::{ConfigError, LogLevel};

/// Largest agent config file read (it is a handful of keys).
pub const CONFIG_FILE_MAX: u64 = 64 * 1024;

/// The keys this agent acts on.
const MAPPED: &[&str] = &[
    "server_addr",
    "log_level",
    "debug_console",
    "log_vport",
    "unified_cgroup_hierarchy",
    "launch_process_timeout",
    "guest_components_procs",
    "guest_components_rest_api",
    "image_pull_timeout",
];

/// kata's other keys: accepted, ignored with a warning naming them.
const ACCEPTED_IGNORED: &[&str] = &[
    "dev_mode",
    "hotplug_timeout",
    "cdh_api_timeout",
    "cdi_timeout",
    "visible_cdi_devices",
    "debug_console_vport",
    "container_pipe_size",
    "passfd_listener_port",
    "tracing",
    "https_proxy",
    "no_proxy",
    "secure_storage_integrity",
    // The policy comes from the image default or initdata only (see config::policy_file).
    "policy_file",
    "mem_agent_enable",
    "mem_agent_memcg_disable",
    "mem_agent_memcg_swap",
    "mem_agent_memcg_swappiness_max",
    "mem_agent_memcg_period_secs",
    "mem_agent_memcg_period_psi_percent_limit",
    "mem_agent_memcg_eviction_psi_percent_limit",
    "mem_agent_memcg_eviction_run_aging_count_min",
    "mem_agent_compact_disable",
    "mem_agent_compact_period_secs",
    "mem_agent_compact_period_psi_percent_limit",
    "mem_agent_compact_psi_percent_limit",
    "mem_agent_compact_sec_max",
    "mem_agent_compact_order",
    "mem_agent_compact_threshold",
    "mem_agent_compact_force_times",
];

/// The mapped keys of the file.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FileConfig {
    pub server_addr: Option<String>,
    #[serde(default, deserialize_with = "de_parse")]
    pub log_level: Option<LogLevel>,
    pub debug_console: Option<bool>,
    pub log_vport: Option<u32>,
    pub unified_cgroup_hierarchy: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub launch_process_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_parse")]
    pub guest_components_procs: Option<Procs>,
    #[serde(default, deserialize_with = "de_parse")]
    pub guest_components_rest_api: Option<RestApi>,
    /// The deadline of one guest image pull (`agent.image_pull_timeout`).
    #[serde(default, deserialize_with = "de_duration")]
    pub image_pull_timeout: Option<Duration>,
}

/// A parsed file and what to warn about once logging is up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    pub config: FileConfig,
    /// kata keys this agent ignores.
    pub ignored: Vec<String>,
    /// Keys kata's agent does not know either.
    pub unknown: Vec<String>,
}

fn de_parse<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}

/// kata's form is serde's `Duration` (`{ secs = 6, nanos = 0 }`); a plain
/// integer of seconds is accepted too.
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Form {
        Secs(u64),
        Serde {
            secs: u64,
            #[serde(default)]
            nanos: u32,
        },
    }
    let form: Option<Form> = serde::Deserialize::deserialize(d)?;
    Ok(form.map(|f| match f {
        Form::Secs(s) => Duration::from_secs(s),
        Form::Serde { secs, nanos } => Duration::new(secs, nanos),
    }))
}

impl LoadedFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut loaded = LoadedFile::default();
        for key in table.keys() {
            if ACCEPTED_IGNORED.contains(&key.as_str()) {
                loaded.ignored.push(key.clone());
            } else if !MAPPED.contains(&key.as_str()) {
                loaded.unknown.push(key.clone());
            }
        }
        loaded.config = FileConfig::deserialize_from(table)?;
        if loaded.config.log_vport == Some(0) {
            loaded.config.log_vport = None;
        }
        Ok(loaded)
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

    /// One log line per kind of key not acted on.
    pub fn log_warnings(&self, path: &std::path::Path) {
        if !self.ignored.is_empty() {
            tracing::warn!(file = %path.display(), keys = ?self.ignored,
                "agent config file: kata keys accepted but ignored by this agent");
        }
        if !self.unknown.is_empty() {
            tracing::warn!(file = %path.display(), keys = ?self.unknown, "agent config file: unknown keys ignored");
        }
    }
}

impl FileConfig {
    fn deserialize_from(table: toml::Table) -> Result<Self, String> {
        // Only the mapped keys are typed; the rest were sorted out above.
        let mapped: toml::Table = table.into_iter().filter(|(k, _)| MAPPED.contains(&k.as_str())).collect();
        toml::Value::Table(mapped).try_into().map_err(|e: toml::de::Error| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn katas_sample_file_loads_with_its_unknown_table_warned() {
        // The shape of kata's samples/configuration-all-endpoints.toml.
        let text =
            "dev_mode = true\nserver_addr = 'vsock://8:2048'\n\n[endpoints]\nallowed = [\"CreateContainerRequest\"]\n";
        let f = LoadedFile::parse(text).unwrap();
        assert_eq!(f.config.server_addr.as_deref(), Some("vsock://8:2048"));
        assert_eq!(f.ignored, ["dev_mode"]);
        assert_eq!(f.unknown, ["endpoints"]);
    }

    #[test]
    fn every_mapped_key_is_read_in_katas_forms() {
        let text = "log_level = \"warning\"\ndebug_console = true\nlog_vport = 1025\nunified_cgroup_hierarchy = true\n\
                    launch_process_timeout = { secs = 9, nanos = 0 }\nguest_components_procs = \"confidential-data-hub\"\n\
                    guest_components_rest_api = \"all\"\nhotplug_timeout = { secs = 3, nanos = 0 }\nsever_addr = 1\n";
        let f = LoadedFile::parse(text).unwrap();
        let c = &f.config;
        assert_eq!(c.log_level, Some(LogLevel::Warn));
        assert_eq!((c.debug_console, c.log_vport, c.unified_cgroup_hierarchy), (Some(true), Some(1025), Some(true)));
        assert_eq!(c.launch_process_timeout, Some(Duration::from_secs(9)));
        assert_eq!(c.guest_components_procs, Some(Procs::ConfidentialDataHub));
        assert_eq!(c.guest_components_rest_api, Some(RestApi::All));
        assert_eq!(f.ignored, ["hotplug_timeout"]);
        assert_eq!(f.unknown, ["sever_addr"]);
        assert_eq!(
            LoadedFile::parse("launch_process_timeout = 4").unwrap().config.launch_process_timeout,
            Some(Duration::from_secs(4))
        );
        assert_eq!(LoadedFile::parse("log_vport = 0").unwrap().config.log_vport, None);
    }

    #[test]
    fn the_key_lists_do_not_overlap() {
        assert!(MAPPED.iter().all(|k| !ACCEPTED_IGNORED.contains(k)));
    }

    #[test]
    fn bad_values_of_known_keys_and_huge_files_are_errors() {
        assert!(LoadedFile::parse("log_level = \"loud\"").unwrap_err().contains("loud"));
        assert!(LoadedFile::parse("guest_components_procs = \"cdh\"").unwrap_err().contains("cdh"));
        assert!(LoadedFile::parse("server_addr = 5").is_err());
        assert!(LoadedFile::parse("not toml [").is_err());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(CONFIG_FILE_MAX as usize + 1)).unwrap();
        let err = LoadedFile::load(&big).unwrap_err().to_string();
        assert!(err.contains("big.toml") && err.contains("larger than"), "{err}");
        let err = LoadedFile::load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
