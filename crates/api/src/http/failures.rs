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
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many addresses are remembered as blocked before the expired ones are forgotten.
const FORGET_AFTER: usize = 4096;

/// Refusals allowed per client address.
#[derive(Debug)]
pub struct FailureLimiter {
    refusals: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimiter {
    /// `per_minute` refusals a minute per address, in bursts of up to `burst`.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            refusals: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            blocked: Mutex::default(),
        }
    }

    /// How long `client` must wait before it is heard again, if it must.
    pub fn wait(&self, client: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&client)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a refusal of `client`; past its allowance, it is blocked until the next one.
    pub fn refused(&self, client: IpAddr) {
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
        for _ in 0..3 {
            assert_eq!(limiter.wait(guesser), None);
            limiter.refused(guesser);
        }
        assert_eq!(
            limiter.wait(guesser),
            None,
            "three refusals are within the burst"
        );
        limiter.refused(guesser);
        let wait = limiter.wait(guesser).expect("the fourth goes past it");
        assert!(
            wait <= Duration::from_secs(1),
            "one refusal a second comes back: {wait:?}"
        );
        assert_eq!(limiter.wait(node), None);
    }
}
