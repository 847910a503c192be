//! OOM kills of a container, announced on the sandbox's GetOOMEvent queue.
//! A task samples the cgroup's `oom_kill` counter every 200 ms; the
//! container's init exit and its removal check once more (`flush`), so a
//! kill is announced before WaitProcess answers and is never lost to a
//! cgroup removed between two samples.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cgroups::{read_oom_kills, ContainerCgroup};

/// How often the OOM-kill counter of a container is sampled.
const OOM_POLL: Duration = Duration::from_millis(200);

struct Counter {
    id: String,
    /// memory.events (v2) or memory.oom_control (v1); None without a memory controller.
    file: Option<PathBuf>,
    /// The highest count announced so far.
    seen: AtomicU64,
    tx: mpsc::Sender<String>,
}

impl Counter {
    /// Announces a kill when the counter moved past what was announced;
    /// false once nobody can receive events any more.
    fn check(&self) -> bool {
        let Some(file) = &self.file else { return true };
        let now = read_oom_kills(file);
        // The sampler and a flush may race: fetch_max lets exactly one announce.
        if self.seen.fetch_max(now, Ordering::AcqRel) >= now {
            return true;
        }
        tracing::info!(container = %self.id, oom_kills = now, "OOM kill in container");
        match self.tx.try_send(self.id.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(container = %self.id, "OOM event dropped: the host is not reading GetOOMEvent");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The OOM watch of one container; stops sampling when dropped.
pub struct OomWatch {
    counter: Arc<Counter>,
    task: tokio::task::JoinHandle<()>,
}

impl OomWatch {
    pub fn spawn(id: String, cgroup: &ContainerCgroup, tx: mpsc::Sender<String>) -> OomWatch {
        Self::watch(id, cgroup.oom_kill_file(), tx)
    }

    fn watch(id: String, file: Option<PathBuf>, tx: mpsc::Sender<String>) -> OomWatch {
        let seen = AtomicU64::new(file.as_deref().map_or(0, read_oom_kills));
        let counter = Arc::new(Counter { id, file, seen, tx });
        let c = counter.clone();
        let task = tokio::spawn(async move {
            if c.file.is_none() {
                return;
            }
            loop {
                tokio::time::sleep(OOM_POLL).await;
                if !c.check() {
                    return;
                }
            }
        });
        OomWatch { counter, task }
    }

    /// Checks the counter now (the init exited, or the cgroup is about to go).
    pub fn flush(&self) {
        self.counter.check();
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn write_count(file: &Path, n: u64) {
        std::fs::write(file, format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n")).unwrap();
    }

    /// A kill between two samples, followed at once by the cgroup's removal,
    /// is still announced, once.
    #[tokio::test(start_paused = true)]
    async fn a_flush_announces_a_kill_the_sampler_has_not_seen_yet_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.oom_control");
        write_count(&file, 2);
        let (tx, mut rx) = mpsc::channel(8);
        let watch = OomWatch::watch("c1".into(), Some(file.clone()), tx);
        write_count(&file, 3);
        watch.flush();
        assert_eq!(rx.try_recv().unwrap(), "c1");
        watch.flush();
        tokio::time::sleep(OOM_POLL * 3).await;
        assert!(rx.try_recv().is_err(), "the same kill announced twice");
        // The sampler on its own sees the next one.
        write_count(&file, 4);
        tokio::time::sleep(OOM_POLL * 2).await;
        assert_eq!(rx.try_recv().unwrap(), "c1");
        drop(watch);
    }

    #[tokio::test]
    async fn no_memory_controller_means_no_events() {
        let (tx, mut rx) = mpsc::channel(8);
        let watch = OomWatch::watch("c1".into(), None, tx);
        watch.flush();
        assert!(rx.try_recv().is_err());
    }
}
