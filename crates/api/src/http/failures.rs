//! A bound on refused bootstrap fetches per client address: a client that keeps presenting
//! wrong tokens gets `429` with `Retry-After` instead of another database read, so a flood of
//! guesses neither drains the pool nor gets many tries. Only refusals count; a node fetching its
//! bundle with its own token is never slowed. The address is the TCP peer's (a proxy in front
//! of plinth makes every client one address: give the bootstrap route its own listener then).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// How many addresses are remembered as blocked before the expired ones are forgotten.
const FORGET_AFTER: usize = 4096;

/// Refusals allowed per client address.
#[derive(Debug)]
pub struct FailureLimiter {
    refusals: RateLimiter<
        IpAddr,
        DefaultKeyedStateStore<IpAddr>,
        DefaultClock,
        StateInformationMiddleware,
    >,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimiter {
    /// `per_minute` refusals a minute per address, in bursts of up to `burst`.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            refusals: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
            blocked: Mutex::default(),
        }
    }

    /// How long `client` must wait before it is heard again, if it must.
    pub fn wait(&self, client: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&client)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a refusal of `client`. Once its allowance is spent, it is blocked until the next
    /// refusal would fit, so that no further guess costs a database read before then.
    pub fn refused(&self, client: IpAddr) {
        if let Ok(left) = self.refusals.check_key(&client)
            && left.remaining_burst_capacity() > 0
        {
            return;
        }
        // Spent (by this refusal or before it): this check finds nothing left and says when the
        // next one is allowed (should a cell arrive in between, it takes it and blocks nothing;
        // the next refusal then blocks).
        if let Err(not_until) = self.refusals.check_key(&client) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if blocked.len() >= FORGET_AFTER {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(client, Instant::now() + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32) -> FailureLimiter {
        FailureLimiter::new(
            NonZeroU32::new(60).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    #[test]
    fn an_address_is_blocked_once_its_refusals_exceed_the_burst_and_others_are_not() {
        let limiter = limiter(3);
        let (guesser, node) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for n in 1..=3 {
            assert_eq!(
                limiter.wait(guesser),
                None,
                "refusal {n} is within the burst"
            );
            limiter.refused(guesser);
        }
        let wait = limiter
            .wait(guesser)
            .expect("a fourth would go past the burst: it is not heard");
        assert!(
            wait <= Duration::from_secs(1),
            "one refusal a second comes back: {wait:?}"
        );
        assert_eq!(limiter.wait(node), None);
    }

    #[test]
    fn after_the_burst_each_refill_hears_exactly_one_more_refusal() {
        // 300 a minute: a refusal comes back every 200 ms.
        let limiter =
            FailureLimiter::new(NonZeroU32::new(300).unwrap(), NonZeroU32::new(2).unwrap());
        let guesser = "10.0.0.1".parse().unwrap();
        limiter.refused(guesser);
        limiter.refused(guesser);
        for round in 0..2 {
            let wait = limiter
                .wait(guesser)
                .expect("blocked once the allowance is spent");
            assert!(
                wait <= Duration::from_millis(200),
                "round {round}: {wait:?}"
            );
            std::thread::sleep(wait + Duration::from_millis(1));
            assert_eq!(limiter.wait(guesser), None, "round {round}: heard again");
            limiter.refused(guesser);
        }
        assert!(limiter.wait(guesser).is_some());
    }
}
