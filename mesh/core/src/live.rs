//! Policies that change while the process runs.
//!
//! A [`Live<T>`] holds the current value of a policy (a retry policy, a breaker's thresholds,
//! an upstream's endpoints). Layers read it on every call with [`Live::get`], a read lock and a
//! reference-count increment; the config reloader ([`crate::reload`]) replaces it with
//! [`Live::set`] when mesh-config changes. A call keeps the value it started with, so a reload
//! never changes the rules under a call in flight. Tasks that must react to a change (DNS
//! re-resolution, say) wait on [`Live::changed`].

use std::sync::Arc;

use tokio::sync::watch;

/// A shared, replaceable policy value. Clones share the value.
#[derive(Debug)]
pub struct Live<T> {
    sender: Arc<watch::Sender<Arc<T>>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

// === impl Live ===

impl<T> Live<T> {
    /// A live value starting as `value`.
    pub fn new(value: T) -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(Arc::new(value))),
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.sender.borrow().clone()
    }

    /// Replaces the value for every holder; calls in flight keep the one they read.
    pub fn set(&self, value: T) {
        self.sender.send_replace(Arc::new(value));
    }

    /// A receiver that is notified of each later [`Live::set`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.sender.subscribe()
    }

    /// Resolves at the next [`Live::set`] after this call.
    pub async fn changed(&self) {
        let mut receiver = self.sender.subscribe();
        receiver.mark_unchanged();
        // The sender lives as long as `self`: this cannot fail.
        let _ = receiver.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holders_see_a_new_value_and_waiters_wake() {
        let live = Live::new(1);
        let holder = live.clone();
        let started_with = holder.get();
        let waiter = tokio::spawn({
            let live = live.clone();
            async move { live.changed().await }
        });
        tokio::task::yield_now().await;
        live.set(2);
        waiter.await.unwrap();
        assert_eq!(*holder.get(), 2, "a clone sees the new value");
        assert_eq!(*started_with, 1, "a value already read stays as it was");
    }
}
