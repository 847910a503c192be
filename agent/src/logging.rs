//! Structured logs to stderr (the console when the agent is PID 1), as text or
//! one JSON object per line. No regex-based filter: the level is the filter.
//! Each line is also offered to the vsock log port (`agent.log_vport`), which
//! is a no-op unless PID 1 started it.

use tracing_subscriber::filter::LevelFilter;

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

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(|| ConsoleWriter)
        .with_max_level(LevelFilter::from(level))
        .with_ansi(false)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if let Err(err) = result {
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
