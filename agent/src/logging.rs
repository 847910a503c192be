//! Structured logs to stderr (the console when the agent is PID 1), as text or
//! one JSON object per line. No regex-based filter: the level is the filter,
//! except that policy decisions (`policy_audit`) are always kept at INFO or
//! finer: the level comes from the host (`agent.log=`), and a host must not be
//! able to hide its denied requests from the guest's log.
//! Each line is also offered to the vsock log port (`agent.log_vport`), which
//! is a no-op unless PID 1 started it.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, LogLevel};

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// Which events are written: `level`, and policy decisions at least at INFO.
pub fn filter(level: LogLevel) -> Targets {
    let level = LevelFilter::from(level);
    Targets::new().with_default(level).with_target(crate::policy::audit::TARGET, level.max(LevelFilter::INFO))
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel, format: LogFormat) {
    let layer = tracing_subscriber::fmt::layer().with_writer(|| ConsoleWriter).with_ansi(false).with_target(true);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json().flatten_event(true).with_current_span(false)),
    };
    if let Err(err) = tracing_subscriber::registry().with(layer.with_filter(filter(level))).try_init() {
        eprintln!("logging already initialised: {err}");
    }
}

/// stderr, plus a copy of every line for the vsock log port.
struct ConsoleWriter;

impl std::io::Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::init::log_port::copy(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn policy_decisions_stay_visible_whatever_level_the_host_sets() {
        let f = filter(LogLevel::Error);
        assert!(f.would_enable(crate::policy::audit::TARGET, &Level::INFO));
        assert!(f.would_enable(crate::policy::audit::TARGET, &Level::WARN));
        assert!(!f.would_enable(crate::policy::audit::TARGET, &Level::DEBUG));
        assert!(!f.would_enable("cvm_agent::rpc::agent", &Level::WARN));
        assert!(filter(LogLevel::Debug).would_enable(crate::policy::audit::TARGET, &Level::DEBUG));
    }
}
