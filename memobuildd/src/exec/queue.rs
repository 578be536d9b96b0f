//! The build queue: at most `max-parallel-builds` builds run at once; the rest
//! wait. When a slot frees it goes to the waiting build whose project (context
//! directory) has the fewest builds running, the longest-waiting first among
//! equals, so one user's burst of builds cannot starve another project.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
