//! Fuzz target bodies (the `fuzz/` crate's targets call these; the unit test
//! below replays every committed input under `fuzz/regressions/<target>/`).
//! Thin wrappers over cdh.toml parsing; nothing here is used by the daemon.

use std::path::Path;

/// Target `configs` (data hub part): cdh.toml as the daemon reads it, and the
/// registry and proxy settings derived from it.
pub fn configs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = crate::config::CdhConfig::parse(&text, Path::new("cdh.toml")) {
        // A registries file named by the config is read from the (trusted)
        // guest filesystem: only the inline form is fuzzed.
        if c.image.registry_configuration_uri.is_none() {
            let _ = c.registries();
        }
        let _ = c.proxy();
        if let Some(d) = c.pull_deadline() {
            assert!(!d.is_zero(), "a zero pull deadline was accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    /// Replays the committed inputs of this crate's target.
    #[test]
    fn fuzz_regressions_replay() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/configs");
        let Ok(dir) = std::fs::read_dir(base) else { return };
        for entry in dir {
            let path = entry.unwrap().path();
            eprintln!("replaying {}", path.display());
            super::configs(&std::fs::read(&path).unwrap());
        }
    }
}
