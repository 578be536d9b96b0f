//! The build queue: at most `max-parallel-builds` builds run at once; the rest
//! wait. When a slot frees it goes to the waiting build whose user (the uid
//! that asked) has the fewest builds running, then whose project (context
//! directory) has, the longest-waiting first among equals: one user's burst of
//! builds cannot starve another user, nor one project another of the same user.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct Queue {
    limit: AtomicUsize,
    state: Mutex<State>,
    granted: tokio::sync::Notify,
}

/// Whose build asks for a slot: the user, then the project, share fairly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Who {
    /// The uid that asked (`None`: the daemon's own background builds).
    pub user: Option<u32>,
    /// The project's context directory.
    pub project: String,
}

#[derive(Default)]
struct State {
    running: usize,
    per_user: HashMap<Option<u32>, usize>,
    per_project: HashMap<String, usize>,
    /// (ticket, who) in arrival order.
    waiting: Vec<(u64, Who)>,
    /// (ticket, who) given a slot whose waiter has not woken yet.
    ready: Vec<(u64, Who)>,
    next_ticket: u64,
}

/// A running build's slot; frees it on drop.
pub(crate) struct Slot {
    queue: Arc<Queue>,
    owner: Who,
}

impl Queue {
    pub(crate) fn new(limit: usize) -> Arc<Queue> {
        Arc::new(Queue {
            limit: AtomicUsize::new(limit.max(1)),
            state: Mutex::new(State::default()),
            granted: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::SeqCst);
        self.grant(&mut self.lock());
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Builds holding a slot.
    pub(crate) fn running(&self) -> usize {
        self.lock().running
    }

    /// Builds waiting for a slot.
    pub(crate) fn queued(&self) -> usize {
        let s = self.lock();
        s.waiting.len() + s.ready.len()
    }

    /// A slot at once if one is free and nobody waits; else `None` (then [`Queue::wait`]).
    pub(crate) fn try_acquire(self: &Arc<Self>, owner: &Who) -> Option<Slot> {
        let mut s = self.lock();
        if s.running < self.limit() && s.waiting.is_empty() && s.ready.is_empty() {
            take(&mut s, owner);
            return Some(self.slot(owner));
        }
        None
    }

    /// Waits for a slot. Dropping the future gives up the place in the queue.
    pub(crate) async fn wait(self: &Arc<Self>, owner: &Who) -> Slot {
        let ticket = {
            let mut s = self.lock();
            s.next_ticket += 1;
            let t = s.next_ticket;
            s.waiting.push((t, owner.clone()));
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

    fn slot(self: &Arc<Self>, owner: &Who) -> Slot {
        Slot {
            queue: self.clone(),
            owner: owner.clone(),
        }
    }

    /// Hands free slots to waiters: fewest running builds of the same user
    /// first, then of the same project, then the longest waiting.
    fn grant(&self, s: &mut State) {
        let mut woke = false;
        while s.running < self.limit() && !s.waiting.is_empty() {
            let pick = (0..s.waiting.len())
                .min_by_key(|&i| {
                    let who = &s.waiting[i].1;
                    (
                        s.per_user.get(&who.user).copied().unwrap_or(0),
                        s.per_project.get(&who.project).copied().unwrap_or(0),
                        i,
                    )
                })
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

    fn release(&self, owner: &Who) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        if let Some(n) = s.per_user.get_mut(&owner.user) {
            *n -= 1;
            if *n == 0 {
                s.per_user.remove(&owner.user);
            }
        }
        if let Some(n) = s.per_project.get_mut(&owner.project) {
            *n -= 1;
            if *n == 0 {
                s.per_project.remove(&owner.project);
            }
        }
        self.grant(&mut s);
    }
}

fn take(s: &mut State, owner: &Who) {
    s.running += 1;
    *s.per_user.entry(owner.user).or_default() += 1;
    *s.per_project.entry(owner.project.clone()).or_default() += 1;
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

    /// Project `p` of user 1000 (the tests of fairness between projects).
    fn project(p: &str) -> Who {
        of(1000, p)
    }

    fn of(user: u32, p: &str) -> Who {
        Who {
            user: Some(user),
            project: p.to_string(),
        }
    }

    async fn granted(queue: &Arc<Queue>, owner: &str) -> tokio::task::JoinHandle<Slot> {
        waiting(queue, project(owner)).await
    }

    async fn waiting(queue: &Arc<Queue>, who: Who) -> tokio::task::JoinHandle<Slot> {
        let q = queue.clone();
        let handle = tokio::spawn(async move { q.wait(&who).await });
        // Let it take its place in the queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle
    }

    #[tokio::test]
    async fn a_burst_of_one_project_does_not_starve_another() {
        let queue = Queue::new(2);
        let a1 = queue.try_acquire(&project("a")).expect("a free slot");
        let x1 = queue.try_acquire(&project("x")).expect("a free slot");
        assert!(queue.try_acquire(&project("b")).is_none(), "the limit is 2");
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
        let a1 = queue.try_acquire(&project("a")).unwrap();
        let b1 = queue.try_acquire(&project("b")).unwrap();
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

    #[tokio::test]
    async fn a_user_with_many_queued_builds_does_not_starve_another_user() {
        let queue = Queue::new(2);
        // User 1001 fills both slots and queues ten more, each its own project.
        let r1 = queue.try_acquire(&of(1001, "p0")).unwrap();
        let r2 = queue.try_acquire(&of(1001, "p1")).unwrap();
        let mut burst = Vec::new();
        for i in 2..12 {
            burst.push(waiting(&queue, of(1001, &format!("p{i}"))).await);
        }
        // User 1002 asks last, for one build.
        let other = waiting(&queue, of(1002, "q")).await;
        assert_eq!(queue.queued(), 11);
        drop(r1);
        // Per project, every waiter ties (none of their projects runs); per
        // user, 1002 has nothing running: its one build goes first.
        let o = other.await.unwrap();
        assert!(burst.iter().all(|b| !b.is_finished()));
        drop(r2);
        // Then 1001's, oldest first.
        let first = burst.remove(0).await.unwrap();
        assert!(burst.iter().all(|b| !b.is_finished()));
        drop(o);
        let second = burst.remove(0).await.unwrap();
        assert!(burst.iter().all(|b| !b.is_finished()));
        drop((first, second));
        for b in burst {
            drop(b.await.unwrap());
        }
        assert_eq!((queue.queued(), queue.running()), (0, 0));
    }
}
