//! The build queue: at most `max-parallel-builds` builds run at once; the rest
//! wait. When a slot frees it goes to the waiting build whose project (context
//! directory) has the fewest builds running, the longest-waiting first among
//! equals, so one user's burst of builds cannot starve another project.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Queue {
    limit: AtomicUsize,
    state: Mutex<State>,
    granted: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    running: usize,
    per_owner: HashMap<String, usize>,
    /// (ticket, owner) in arrival order.
    waiting: Vec<(u64, String)>,
    /// (ticket, owner) given a slot whose waiter has not woken yet.
    ready: Vec<(u64, String)>,
    next_ticket: u64,
}

/// A running build's slot; frees it on drop.
pub struct Slot {
    queue: Arc<Queue>,
    owner: String,
}

impl Queue {
    pub fn new(limit: usize) -> Arc<Queue> {
        Arc::new(Queue {
            limit: AtomicUsize::new(limit.max(1)),
            state: Mutex::new(State::default()),
            granted: tokio::sync::Notify::new(),
        })
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::SeqCst);
        self.grant(&mut self.lock());
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Builds holding a slot.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Builds waiting for a slot.
    pub fn queued(&self) -> usize {
        let s = self.lock();
        s.waiting.len() + s.ready.len()
    }

    /// A slot at once if one is free and nobody waits; else `None` (then [`Queue::wait`]).
    pub fn try_acquire(self: &Arc<Self>, owner: &str) -> Option<Slot> {
        let mut s = self.lock();
        if s.running < self.limit() && s.waiting.is_empty() && s.ready.is_empty() {
            take(&mut s, owner);
            return Some(self.slot(owner));
        }
        None
    }

    /// Waits for a slot. Dropping the future gives up the place in the queue.
    pub async fn wait(self: &Arc<Self>, owner: &str) -> Slot {
        let ticket = {
            let mut s = self.lock();
            s.next_ticket += 1;
            let t = s.next_ticket;
            s.waiting.push((t, owner.to_string()));
            self.grant(&mut s);
            t
        };
        let mut place = Place {
            queue: self.clone(),
            ticket,
            done: false,
        };
        loop {
            let notified = self.granted.notified();
            {
                let mut s = self.lock();
                if let Some(i) = s.ready.iter().position(|(t, _)| *t == ticket) {
                    s.ready.remove(i);
                    place.done = true;
                    return self.slot(owner);
                }
            }
            notified.await;
        }
    }

    fn slot(self: &Arc<Self>, owner: &str) -> Slot {
        Slot {
            queue: self.clone(),
            owner: owner.to_string(),
        }
    }

    /// Hands free slots to waiters: fewest running builds of the same owner first.
    fn grant(&self, s: &mut State) {
        let mut woke = false;
        while s.running < self.limit() && !s.waiting.is_empty() {
            let pick = (0..s.waiting.len())
                .min_by_key(|&i| (s.per_owner.get(&s.waiting[i].1).copied().unwrap_or(0), i))
                .unwrap_or(0);
            let (ticket, owner) = s.waiting.remove(pick);
            take(s, &owner);
            s.ready.push((ticket, owner));
            woke = true;
        }
        if woke {
            self.granted.notify_waiters();
        }
    }

    fn release(&self, owner: &str) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        if let Some(n) = s.per_owner.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                s.per_owner.remove(owner);
            }
        }
        self.grant(&mut s);
    }
}

fn take(s: &mut State, owner: &str) {
    s.running += 1;
    *s.per_owner.entry(owner.to_string()).or_default() += 1;
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queue.release(&self.owner);
    }
}

/// A waiter's place; a waiter that goes away (cancelled) leaves the queue, and
/// hands on a slot it was granted but never took.
struct Place {
    queue: Arc<Queue>,
    ticket: u64,
    done: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let granted = {
            let mut s = self.queue.lock();
            if let Some(i) = s.waiting.iter().position(|(t, _)| *t == self.ticket) {
                s.waiting.remove(i);
                return;
            }
            match s.ready.iter().position(|(t, _)| *t == self.ticket) {
                Some(i) => s.ready.remove(i).1,
                None => return,
            }
        };
        // Granted but never taken: the slot was counted for us; hand it on.
        self.queue.release(&granted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn granted(queue: &Arc<Queue>, owner: &str) -> tokio::task::JoinHandle<Slot> {
        let (q, o) = (queue.clone(), owner.to_string());
        let handle = tokio::spawn(async move { q.wait(&o).await });
        // Let it take its place in the queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle
    }

    #[tokio::test]
    async fn a_burst_of_one_project_does_not_starve_another() {
        let queue = Queue::new(2);
        let a1 = queue.try_acquire("a").expect("a free slot");
        let x1 = queue.try_acquire("x").expect("a free slot");
        assert!(queue.try_acquire("b").is_none(), "the limit is 2");
        // Project a queues a burst before b asks.
        let a2 = granted(&queue, "a").await;
        let a3 = granted(&queue, "a").await;
        let b1 = granted(&queue, "b").await;
        assert_eq!(queue.queued(), 3);
        drop(x1);
        // a already has a build running; b has none: b goes first.
        let b = b1.await.unwrap();
        assert!(!a2.is_finished() && !a3.is_finished());
        drop(a1);
        // Among a's builds, the one that waited longest.
        let a = a2.await.unwrap();
        assert!(!a3.is_finished());
        drop(b);
        let _a3 = a3.await.unwrap();
        drop(a);
        assert_eq!((queue.queued(), queue.running()), (0, 1));
    }

    #[tokio::test]
    async fn fewest_running_owner_goes_first_and_leaving_the_queue_frees_the_place() {
        let queue = Queue::new(2);
        let a1 = queue.try_acquire("a").unwrap();
        let b1 = queue.try_acquire("b").unwrap();
        let a2 = granted(&queue, "a").await;
        let c1 = granted(&queue, "c").await;
        // A waiter that gives up (a cancelled build) leaves no trace.
        let gone = granted(&queue, "d").await;
        gone.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(queue.queued(), 2);
        drop(b1);
        // a still has a build running, c has none: c goes first though a waited longer.
        let c = c1.await.unwrap();
        assert!(!a2.is_finished());
        drop(a1);
        let _a = a2.await.unwrap();
        drop(c);
        assert_eq!(queue.running(), 1);
    }
}
