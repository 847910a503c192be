//! Runtime measurements: ExtendRuntimeMeasurement appends an event to our
//! event log and extends a TEE register (RTMR) with the event's digest.
//!
//! Write-ahead: the pending event is fsynced to `<log>.wal` before the
//! register is extended, appended to the log after, and only then is the WAL
//! removed. A crash between the steps is repaired at the next open by
//! replaying the log and reading the register: if the register already holds
//! the pending extension the event is committed, if it holds the replayed
//! value the event is dropped, and anything else is an error (the log no
//! longer explains the register), never a silent guess.
//!
//! Digest of an event: SHA-384 of `"<domain> <operation> <content>"` (the
//! AAEL entry); register update `R' = SHA-384(R || digest)`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::attester::{Attester, AttesterError};

pub const MAX_DOMAIN: usize = 256;
pub const MAX_OPERATION: usize = 256;
pub const MAX_CONTENT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MeasurementError {
    #[error("event log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("event log {path} line {line} is corrupt: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: String },
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error(transparent)]
    Register(#[from] AttesterError),
    #[error("register {register} is {found}, but the event log replays to {replayed} (or {with_pending} with the pending event): the log no longer explains the register")]
    Inconsistent { register: u64, found: String, replayed: String, with_pending: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    /// The register's value when the log first touched it.
    Init {
        register: u64,
        value: String,
    },
    Event {
        seq: u64,
        register: u64,
        domain: String,
        operation: String,
        content: String,
        digest: String,
    },
}

#[derive(Debug, Default)]
struct State {
    records: Vec<Record>,
    next_seq: u64,
}

/// The runtime event log of one agent.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    wal: PathBuf,
    attester: Arc<dyn Attester>,
    state: Mutex<State>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MeasurementError + '_ {
    move |source| MeasurementError::Io { path: path.to_owned(), source }
}

/// `SHA-384(register || digest)`.
pub fn extend_value(register: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut h = Sha384::new();
    h.update(register);
    h.update(digest);
    h.finalize().to_vec()
}

pub fn event_digest(domain: &str, operation: &str, content: &str) -> Vec<u8> {
    Sha384::digest(format!("{domain} {operation} {content}").as_bytes()).to_vec()
}

impl EventLog {
    /// Opens (or creates) the log at `path`, repairing an interrupted extension.
    pub fn open(path: impl Into<PathBuf>, attester: Arc<dyn Attester>) -> Result<Self, MeasurementError> {
        let path = path.into();
        let wal = PathBuf::from(format!("{}.wal", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let records = read_records(&path)?;
        let next_seq = records
            .iter()
            .filter_map(|r| match r {
                Record::Event { seq, .. } => Some(seq + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let log = Self { path, wal, attester, state: Mutex::new(State { records, next_seq }) };
        log.recover()?;
        Ok(log)
    }

    fn recover(&self) -> Result<(), MeasurementError> {
        let pending = match std::fs::read(&self.wal) {
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(r @ Record::Event { .. }) => Some(r),
                // A torn WAL write: the register was not touched yet.
                _ => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.wal)(e)),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ref record @ Record::Event { seq, register, ref digest, .. }) = pending {
            let committed = state.records.iter().any(|r| matches!(r, Record::Event { seq: s, .. } if *s == seq));
            if !committed {
                let replayed = replay(&state.records, register)?;
                let found = self.attester.read_register(register)?;
                let digest_bytes = hex::decode(digest).map_err(|e| MeasurementError::InvalidEvent(e.to_string()))?;
                let with_pending = replayed.as_ref().map(|v| extend_value(v, &digest_bytes));
                if replayed.as_deref() == Some(&found[..]) {
                    tracing::warn!(
                        seq,
                        register,
                        "dropping an event whose register extension never happened (crash before extend)"
                    );
                } else if with_pending.as_deref() == Some(&found[..]) {
                    tracing::warn!(
                        seq,
                        register,
                        "committing an event whose register extension happened before a crash"
                    );
                    let record = record.clone();
                    append(&self.path, &record)?;
                    state.records.push(record);
                    state.next_seq = state.next_seq.max(seq + 1);
                } else {
                    return Err(MeasurementError::Inconsistent {
                        register,
                        found: hex::encode(&found),
                        replayed: replayed.map(hex::encode).unwrap_or_else(|| "(no init record)".into()),
                        with_pending: with_pending.map(hex::encode).unwrap_or_default(),
                    });
                }
            }
        }
        remove_wal(&self.wal)
    }

    /// Records the event and extends `register` with its digest.
    pub fn extend(&self, register: u64, domain: &str, operation: &str, content: &str) -> Result<(), MeasurementError> {
        validate(domain, operation, content)?;
        let digest = event_digest(domain, operation, content);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if replay(&state.records, register)?.is_none() {
            let value = self.attester.read_register(register)?;
            let init = Record::Init { register, value: hex::encode(value) };
            append(&self.path, &init)?;
            state.records.push(init);
        }
        let seq = state.next_seq;
        let record = Record::Event {
            seq,
            register,
            domain: domain.into(),
            operation: operation.into(),
            content: content.into(),
            digest: hex::encode(&digest),
        };
        write_wal(&self.wal, &record)?;
        if let Err(err) = self.attester.extend_register(register, &digest) {
            remove_wal(&self.wal)?;
            return Err(err.into());
        }
        append(&self.path, &record)?;
        state.records.push(record);
        state.next_seq = seq + 1;
        remove_wal(&self.wal)?;
        tracing::info!(register, seq, domain, operation, "runtime measurement extended");
        Ok(())
    }

    /// The value the log says `register` must hold (None before its first event).
    pub fn replayed(&self, register: u64) -> Result<Option<Vec<u8>>, MeasurementError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        replay(&state.records, register)
    }

    /// The log of `register` as AAEL text (`INIT sha384/<hex>` then one
    /// `<domain> <operation> <content>` line per event); None when empty.
    pub fn aael(&self, register: u64) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for r in &state.records {
            match r {
                Record::Init { register: reg, value } if *reg == register => {
                    out.push_str(&format!("INIT sha384/{value}\n"));
                }
                Record::Event { register: reg, domain, operation, content, .. } if *reg == register => {
                    out.push_str(&format!("{domain} {operation} {content}\n"));
                }
                _ => {}
            }
        }
        (!out.is_empty()).then_some(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn validate(domain: &str, operation: &str, content: &str) -> Result<(), MeasurementError> {
    let bad = |what: &str, v: &str, max: usize, spaces: bool| -> Option<String> {
        if v.is_empty() && what != "content" {
            return Some(format!("{what} is empty"));
        }
        if v.len() > max {
            return Some(format!("{what} is {} bytes (max {max})", v.len()));
        }
        if v.chars().any(|c| c.is_control() || (!spaces && c == ' ')) {
            return Some(format!(
                "{what} contains {}",
                if spaces { "control characters" } else { "spaces or control characters" }
            ));
        }
        None
    };
    if let Some(reason) = bad("domain", domain, MAX_DOMAIN, false)
        .or_else(|| bad("operation", operation, MAX_OPERATION, false))
        .or_else(|| bad("content", content, MAX_CONTENT, true))
    {
        return Err(MeasurementError::InvalidEvent(reason));
    }
    Ok(())
}

fn replay(records: &[Record], register: u64) -> Result<Option<Vec<u8>>, MeasurementError> {
    let mut value: Option<Vec<u8>> = None;
    for r in records {
        match r {
            Record::Init { register: reg, value: v } if *reg == register => {
                value = Some(hex::decode(v).map_err(|e| MeasurementError::InvalidEvent(e.to_string()))?);
            }
            Record::Event { register: reg, digest, .. } if *reg == register => {
                let d = hex::decode(digest).map_err(|e| MeasurementError::InvalidEvent(e.to_string()))?;
                let current = value.as_ref().ok_or_else(|| {
                    MeasurementError::InvalidEvent(format!("event for register {register} before its init record"))
                })?;
                value = Some(extend_value(current, &d));
            }
            _ => {}
        }
    }
    Ok(value)
}

fn read_records(path: &Path) -> Result<Vec<Record>, MeasurementError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut raw = {
        let mut buf = Vec::new();
        use std::io::Read;
        BufReader::new(file).read_to_end(&mut buf).map_err(io_err(path))?;
        buf
    };
    // A torn last line (no newline) is an append that never completed: its
    // WAL entry decides, so it is cut off here.
    let complete = match raw.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < raw.len() {
        tracing::warn!(path = %path.display(), "cutting a torn last line from the event log");
        let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        f.set_len(complete as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    raw.truncate(complete);
    let mut records = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        let record: Record = serde_json::from_str(&line).map_err(|e| MeasurementError::Corrupt {
            path: path.to_owned(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// A record as one JSON line's bytes (no newline).
fn encode(record: &Record) -> Result<Vec<u8>, MeasurementError> {
    serde_json::to_vec(record)
        .map_err(|e| MeasurementError::InvalidEvent(format!("cannot encode the event record: {e}")))
}

fn append(path: &Path, record: &Record) -> Result<(), MeasurementError> {
    let mut line = encode(record)?;
    line.push(b'\n');
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    f.write_all(&line).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

fn write_wal(wal: &Path, record: &Record) -> Result<(), MeasurementError> {
    let mut f = File::create(wal).map_err(io_err(wal))?;
    f.write_all(&encode(record)?).map_err(io_err(wal))?;
    f.sync_all().map_err(io_err(wal))
}

fn remove_wal(wal: &Path) -> Result<(), MeasurementError> {
    match std::fs::remove_file(wal) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(wal)(e)),
    }
}

/// Events per register, for tests and diagnostics.
pub fn count_events(log: &EventLog) -> BTreeMap<u64, usize> {
    let state = log.state.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = BTreeMap::new();
    for r in &state.records {
        if let Record::Event { register, .. } = r {
            *out.entry(*register).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attester::sample::SampleAttester;

    fn sample() -> Arc<dyn Attester> {
        Arc::new(SampleAttester::default())
    }

    #[test]
    fn extends_register_and_replays_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let att = sample();
        let log = EventLog::open(dir.path().join("log"), att.clone()).unwrap();
        log.extend(2, "github.com/confidential-containers", "PullImage", "docker.io/library/busybox:latest").unwrap();
        log.extend(2, "github.com/confidential-containers", "CreateContainer", "c1").unwrap();
        assert_eq!(log.replayed(2).unwrap().unwrap(), att.read_register(2).unwrap());
        let aael = log.aael(2).unwrap();
        assert!(aael.starts_with(&format!("INIT sha384/{}\n", "00".repeat(48))), "{aael}");
        assert!(aael.contains("github.com/confidential-containers PullImage docker.io/library/busybox:latest\n"));
        // Reopen: the log survives and sequence numbers continue.
        drop(log);
        let log = EventLog::open(dir.path().join("log"), att.clone()).unwrap();
        assert_eq!(count_events(&log)[&2], 2);
    }

    #[test]
    fn crash_after_extend_commits_the_pending_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let att = sample();
        let log = EventLog::open(&path, att.clone()).unwrap();
        log.extend(2, "d", "op", "first").unwrap();
        // Simulate: WAL written, register extended, crash before the append.
        let digest = event_digest("d", "op", "second");
        let pending = Record::Event {
            seq: 1,
            register: 2,
            domain: "d".into(),
            operation: "op".into(),
            content: "second".into(),
            digest: hex::encode(&digest),
        };
        write_wal(&log.wal, &pending).unwrap();
        att.extend_register(2, &digest).unwrap();
        drop(log);
        let log = EventLog::open(&path, att.clone()).unwrap();
        assert_eq!(count_events(&log)[&2], 2);
        assert_eq!(log.replayed(2).unwrap().unwrap(), att.read_register(2).unwrap());
        assert!(!PathBuf::from(format!("{}.wal", path.display())).exists());
    }

    #[test]
    fn crash_before_extend_drops_the_pending_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let att = sample();
        let log = EventLog::open(&path, att.clone()).unwrap();
        log.extend(2, "d", "op", "first").unwrap();
        let pending = Record::Event {
            seq: 1,
            register: 2,
            domain: "d".into(),
            operation: "op".into(),
            content: "lost".into(),
            digest: hex::encode(event_digest("d", "op", "lost")),
        };
        write_wal(&log.wal, &pending).unwrap();
        drop(log);
        let log = EventLog::open(&path, att.clone()).unwrap();
        assert_eq!(count_events(&log)[&2], 1);
        assert!(!log.aael(2).unwrap().contains("lost"));
    }

    #[test]
    fn register_the_log_cannot_explain_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let att = sample();
        let log = EventLog::open(&path, att.clone()).unwrap();
        log.extend(2, "d", "op", "first").unwrap();
        let pending = Record::Event {
            seq: 1,
            register: 2,
            domain: "d".into(),
            operation: "op".into(),
            content: "x".into(),
            digest: hex::encode(event_digest("d", "op", "x")),
        };
        write_wal(&log.wal, &pending).unwrap();
        att.extend_register(2, &[7; 48]).unwrap(); // someone else extended
        drop(log);
        let err = EventLog::open(&path, att).unwrap_err();
        assert!(matches!(err, MeasurementError::Inconsistent { register: 2, .. }), "{err}");
    }

    #[test]
    fn torn_last_line_is_cut_and_garbage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let att = sample();
        EventLog::open(&path, att.clone()).unwrap().extend(2, "d", "op", "c").unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"ev").unwrap();
        drop(f);
        let log = EventLog::open(&path, att.clone()).unwrap();
        assert_eq!(count_events(&log)[&2], 1);
        drop(log);
        std::fs::write(&path, b"not json\n").unwrap();
        assert!(matches!(EventLog::open(&path, att).unwrap_err(), MeasurementError::Corrupt { line: 1, .. }));
    }

    #[test]
    fn rejects_hostile_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path().join("log"), sample()).unwrap();
        assert!(log.extend(2, "a b", "op", "c").is_err());
        assert!(log.extend(2, "d", "op", "line\nINIT sha384/00").is_err());
        assert!(log.extend(2, "d", "op", &"x".repeat(MAX_CONTENT + 1)).is_err());
        assert!(log.extend(2, "", "op", "c").is_err());
    }
}
