//! RSA key pairs made ahead of demand.
//!
//! An RSA-2048 key takes tens of milliseconds of prime search (and varies tenfold), where
//! everything else a founding signs takes a few. A [`KeyPool`] keeps up to `capacity` keys made
//! by threads of its own (one per core) that run under Linux's `SCHED_IDLE` policy: they only
//! get a core no request wants, so refilling never slows request work, and a busy service simply
//! finds the pool empty and generates inline, as it would without one (counted as a miss).
//! Dedicated threads rather than tokio's blocking pool, because a pooled thread would keep the
//! low priority for whatever work it picks up next.
//!
//! Keys live only in memory, each is handed out once, and they wipe themselves when dropped:
//! with the pool's last handle, the refill thread stops and the keys still pooled are dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use plinth_domain::ports::pki::PkiError;

use crate::keys::{KeyAlgorithm, KeyPair};

/// Keys of one algorithm made ahead of demand, each as a `T` made from a fresh key (the key
/// itself, or its encodings ready to hand out); see the module's documentation.
#[derive(Debug)]
pub(crate) struct KeyPool<T: Pooled = KeyPair> {
    shared: Arc<Shared<T>>,
}

/// What a pool holds: made from a fresh key of an algorithm, on the refill thread.
pub(crate) trait Pooled: Send + 'static {
    /// A fresh one.
    ///
    /// # Errors
    /// Key generation or encoding failed.
    fn make(algorithm: KeyAlgorithm) -> Result<Self, PkiError>
    where
        Self: Sized;
}

impl Pooled for KeyPair {
    fn make(algorithm: KeyAlgorithm) -> Result<Self, PkiError> {
        KeyPair::generate(algorithm)
    }
}

#[derive(Debug)]
struct Shared<T> {
    algorithm: KeyAlgorithm,
    capacity: usize,
    keys: Mutex<VecDeque<T>>,
    /// Keys the refill threads are making now (changed only under `keys`' lock), so that
    /// together they never make more than there is room for.
    making: std::sync::atomic::AtomicUsize,
    /// Signalled when a key is taken (room to refill) and when the pool closes.
    room: Condvar,
    closed: AtomicBool,
    taken: AtomicU64,
    misses: AtomicU64,
    made: AtomicU64,
}

/// A pool's counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPoolStats {
    /// The keys it holds at most.
    pub capacity: usize,
    /// The keys it holds now.
    pub available: usize,
    /// Keys handed out from the pool.
    pub taken: u64,
    /// Keys asked of an empty pool, and made inline instead.
    pub misses: u64,
    /// Keys the refill thread made.
    pub made: u64,
}

impl<T: Pooled + std::fmt::Debug> KeyPool<T> {
    /// A pool of up to `capacity` keys (at least 1), filled from now on by threads of its own:
    /// one per core (at most `capacity`), as every idle core may make keys.
    ///
    /// # Errors
    /// A thread could not be started.
    pub fn start(algorithm: KeyAlgorithm, capacity: usize) -> std::io::Result<Self> {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            algorithm,
            capacity,
            keys: Mutex::new(VecDeque::with_capacity(capacity)),
            making: std::sync::atomic::AtomicUsize::new(0),
            room: Condvar::new(),
            closed: AtomicBool::new(false),
            taken: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            made: AtomicU64::new(0),
        });
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(capacity);
        // Built first, so that a thread that cannot start closes the pool (and stops the others).
        let pool = Self { shared };
        for _ in 0..threads {
            let refill = Arc::clone(&pool.shared);
            std::thread::Builder::new()
                .name(format!("plinth-{algorithm}-pool"))
                .spawn(move || refill.run())?;
        }
        Ok(pool)
    }

    /// The algorithm of its keys.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.shared.algorithm
    }

    /// A key nobody else gets: from the pool, or (empty pool: a miss) made now on this thread.
    pub(crate) fn take(&self) -> Result<T, PkiError> {
        let pooled = self.shared.lock().pop_front();
        match pooled {
            Some(key) => {
                self.shared.taken.fetch_add(1, Ordering::Relaxed);
                self.shared.room.notify_one();
                Ok(key)
            }
            None => {
                self.shared.misses.fetch_add(1, Ordering::Relaxed);
                T::make(self.shared.algorithm)
            }
        }
    }

    /// Its counters now.
    pub fn stats(&self) -> KeyPoolStats {
        KeyPoolStats {
            capacity: self.shared.capacity,
            available: self.shared.lock().len(),
            taken: self.shared.taken.load(Ordering::Relaxed),
            misses: self.shared.misses.load(Ordering::Relaxed),
            made: self.shared.made.load(Ordering::Relaxed),
        }
    }

    /// Waits (at most `limit`) until the pool is full; whether it is. For tests and benchmarks.
    pub fn wait_full(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.stats().available >= self.shared.capacity {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A handle that tells, once the pool is dropped, whether its keys are gone too. For tests.
    #[cfg(test)]
    fn storage(&self) -> std::sync::Weak<Shared<T>> {
        Arc::downgrade(&self.shared)
    }
}

impl<T: Pooled> Drop for KeyPool<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Taking the lock orders the store before the refill thread's next check.
        drop(self.shared.lock());
        self.shared.room.notify_all();
    }
}

impl<T: Pooled> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A refill thread: below every other thread's priority, one key at a time, outside the
    /// lock; sleeps while the pool is full (counting the keys other refill threads are making).
    fn run(&self) {
        lower_this_threads_priority();
        loop {
            {
                let mut keys = self.lock();
                while keys.len() + self.making.load(Ordering::Relaxed) >= self.capacity
                    && !self.closed()
                {
                    keys = self.room.wait(keys).unwrap_or_else(PoisonError::into_inner);
                }
                if self.closed() {
                    break;
                }
                self.making.fetch_add(1, Ordering::Relaxed);
            }
            let made = T::make(self.algorithm);
            let mut keys = self.lock();
            self.making.fetch_sub(1, Ordering::Relaxed);
            let Ok(key) = made else {
                // The CSPRNG failed: requests will make their keys inline (and fail the same way).
                break;
            };
            self.made.fetch_add(1, Ordering::Relaxed);
            if self.closed() {
                break;
            }
            keys.push_back(key);
        }
        // The keys left are dropped (and wiped) with the last `Arc`, this thread's or the pool's.
    }
}

/// `SCHED_IDLE` (Linux; the lowest niceness elsewhere): the thread runs only when a core is
/// otherwise idle. Failing that, it keeps the default priority: the pool still works.
fn lower_this_threads_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    // Best effort: a thread left at the default priority still fills the pool.
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn pool(capacity: usize) -> KeyPool<KeyPair> {
        let pool = KeyPool::start(KeyAlgorithm::Rsa2048, capacity).unwrap();
        assert!(
            pool.wait_full(Duration::from_secs(60)),
            "{:?}",
            pool.stats()
        );
        pool
    }

    fn public(key: &KeyPair) -> String {
        key.public_key_pem().unwrap()
    }

    #[test]
    fn each_key_is_handed_out_once() {
        let pool = pool(4);
        let mut seen = HashSet::new();
        for _ in 0..12 {
            let key = pool.take().unwrap();
            assert!(key.is_rsa());
            assert!(seen.insert(public(&key)), "a key was handed out twice");
        }
        let stats = pool.stats();
        assert_eq!(stats.taken + stats.misses, 12, "{stats:?}");
        assert!(stats.taken >= 4, "{stats:?}");
    }

    #[test]
    fn a_drained_pool_makes_keys_inline_and_counts_the_misses() {
        let pool = pool(2);
        let taken: Vec<_> = (0..5).map(|_| pool.take().unwrap()).collect();
        let stats = pool.stats();
        // The refill thread may have put one or two back meanwhile, never more than were taken.
        assert!(stats.misses >= 1, "{stats:?}");
        assert_eq!(stats.taken + stats.misses, 5, "{stats:?}");
        let distinct: HashSet<_> = taken.iter().map(public).collect();
        assert_eq!(distinct.len(), 5);
        // And it fills again.
        assert!(
            pool.wait_full(Duration::from_secs(60)),
            "{:?}",
            pool.stats()
        );
    }

    #[test]
    fn dropping_the_pool_stops_its_thread_and_drops_its_keys() {
        let pool = pool(3);
        let storage = pool.storage();
        assert_eq!(pool.stats().available, 3);
        drop(pool);
        // The refill thread was waiting for room: it wakes, sees the pool closed and lets go.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while storage.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pooled keys outlive the pool"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_refill_thread_runs_at_idle_priority() {
        let pool = pool(1);
        let task_dir = std::path::Path::new("/proc/self/task");
        let Ok(tasks) = std::fs::read_dir(task_dir) else {
            return; // not Linux
        };
        let mut policies = Vec::new();
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // The thread name, cut to the kernel's 15 characters.
            if comm.starts_with("plinth-rsa-2048") {
                let sched = std::fs::read_to_string(task.path().join("sched")).unwrap();
                let policy = sched
                    .lines()
                    .find(|l| l.starts_with("policy"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|p| p.trim().to_owned());
                policies.push(policy);
            }
        }
        drop(pool);
        // SCHED_IDLE is policy 5.
        assert!(
            policies.contains(&Some("5".to_owned())),
            "no refill thread at SCHED_IDLE: {policies:?}"
        );
    }
}
