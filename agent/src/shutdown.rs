//! A one-shot "please stop the agent" latch shared by the RPC layer and
//! `main.rs`. DestroySandbox requests it after tearing everything down; the
//! server loop waits on it. It never stops anything by itself.

use std::sync::Arc;

use tokio::sync::watch;

/// Cloneable handle: any clone may request, any clone may wait.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Shutdown { tx: Arc::new(tx) }
    }

    /// Asks the agent to stop; idempotent.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_requested(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once `request()` has been called (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|requested| *requested).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_request_from_another_clone() {
        let s = Shutdown::new();
        let other = s.clone();
        let waiter = tokio::spawn(async move { other.wait().await });
        assert!(!s.is_requested());
        s.request();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // Waiting after the fact returns at once.
        s.wait().await;
    }
}
