//! The guest components' state as the RPCs see it: one small vector behind a
//! mutex held only to copy or update one entry, so GetMetrics and
//! GetGuestDetails never wait on the supervisor.

use std::sync::{Arc, Mutex, OnceLock};

use super::Component;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Launched, waiting for its socket.
    Starting,
    Running,
    /// Exited; waiting out the backoff before the next launch.
    Restarting,
    /// Gave up after too many failed starts in a row.
    Failed,
    /// Stopped by the agent (shutdown).
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    pub component: Component,
    pub state: State,
    pub pid: Option<i32>,
    /// Launches after the first one.
    pub restarts: u64,
}

/// Cloneable handle on the shared state.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<Vec<ComponentStatus>>>,
}

impl StatusBoard {
    pub fn snapshot(&self) -> Vec<ComponentStatus> {
        self.lock().clone()
    }

    pub fn get(&self, c: Component) -> Option<ComponentStatus> {
        self.lock().iter().find(|s| s.component == c).cloned()
    }

    /// Updates (or adds) the entry of `c`.
    pub fn update(&self, c: Component, f: impl FnOnce(&mut ComponentStatus)) {
        let mut all = self.lock();
        if !all.iter().any(|s| s.component == c) {
            all.push(ComponentStatus { component: c, state: State::Starting, pid: None, restarts: 0 });
            all.sort_by_key(|s| s.component);
        }
        if let Some(entry) = all.iter_mut().find(|s| s.component == c) {
            f(entry);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ComponentStatus>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The agent's board (what main's supervisor writes and the RPCs read).
pub fn global() -> &'static StatusBoard {
    static BOARD: OnceLock<StatusBoard> = OnceLock::new();
    BOARD.get_or_init(StatusBoard::default)
}
