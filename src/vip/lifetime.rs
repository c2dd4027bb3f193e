//! How long the address may stay on an interface, so that a leader that
//! stops (SIGKILL, OOM kill, SIGSTOP, a paused VM) loses it by itself, and
//! when a new leader may add it.
//!
//! The leader adds the address with `valid_lft` = `preferred_lft` = the
//! lease rounded up to whole seconds, and refreshes it after every renewal
//! (`NLM_F_REPLACE`); the kernel then removes it by itself unless refreshed.
//! The arithmetic, with L the lease, ⌈L⌉ it rounded up to seconds, δ =
//! [`ANSWER_SLACK`] and `lag` = [`KERNEL_LAG`]:
//!
//! - Leader: a renewal sent at `s` (its monotonic clock) was applied by Redis
//!   at some `r ≥ s`, so the lease now expires at `E = r + L ≥ s + L`. At
//!   `t = s + age` the address gets `v = ⌊⌈L⌉ + δ − age⌋` seconds (= ⌈L⌉
//!   whenever the answer took at most δ; none at all below 1 s). The kernel
//!   counts `v` from when it applies the change, `≤ t`, and removes the
//!   address at most `lag` after it runs out: gone by `t + v + lag ≤ s + ⌈L⌉
//!   + δ + lag ≤ E + (⌈L⌉ − L) + δ + lag`. The clock is read again once the
//!   kernel has answered ([`refresh_landed_in_time`]): if the process was
//!   stopped between computing `v` and the kernel applying it, the address
//!   is removed at once instead of living `v` more seconds.
//! - Standby: when Redis lets it take a lease that lapsed, the old lease had
//!   expired by the instant `T` it received that answer (its own monotonic
//!   clock), so the old holder's copy is gone by `T + (⌈L⌉ − L) + δ + lag`
//!   ([`free_at`]): for L = 1 s or 2 s that is T + 1.1 s, for L = 1.5 s
//!   T + 1.6 s. Every node must use the same `vip.lease`.
//!
//! A takeover after a leader dies right after a renewal therefore takes
//! `⌈L⌉ + δ + lag` (2.1 s at L = 1 s) plus a Redis round trip, the gratuitous
//! ARP and the client's next attempt. Nothing in it is slack: `lag` is the
//! kernel's, δ the time a renewal's answer may take to back a full lifetime,
//! and a lease under 1 s gains nothing (the lifetime is at least 1 s).
//!
//! `lag`, from the kernel's lifetime check (IPv4 `check_lifetime`, IPv6
//! `addrconf_verify`): one delayed work item (per network namespace in
//! recent kernels), which deletes every address whose lifetime ends within
//! 20 ms (`ADDRCONF_TIMER_FUZZ_MINUS`, HZ/50), then sleeps until the next
//! end, rounded up to a whole second when that costs under 250 ms, but never
//! less than 1 s (`ADDRCONF_TIMER_FUZZ_MAX`). Any address added or refreshed
//! in the namespace (our own refreshes, DHCP, another VIP) runs it at once.
//! Worst case: a run just over 20 ms before the end, then 1 s, plus the
//! timer wheel's rounding of a 1 s delay (8 jiffies at HZ 100/250/300:
//! 80/32/27 ms; 64 jiffies at HZ 1000: 64 ms), plus the worker waking up:
//! 1 s + 80 ms − 20 ms + 10 ms = 1.07 s. Measured on the 2-core lab VM
//! (HZ 250): at most 0.23 s late alone, 1.004 s with another address of the
//! namespace changed 35 ms before the end; 20 ms early at times (safe).

use std::time::Duration;

use tokio::time::Instant;

/// How late the kernel may remove an address whose lifetime ran out (see
/// the module doc for where 1.07 s comes from).
pub(super) const KERNEL_LAG: Duration = Duration::from_millis(1070);
/// How old a renewal's answer may be when the address gets the full
/// lifetime from it: the renewal's round trip to Redis (with `WAIT` for a
/// replica) and the netlink change, a few milliseconds; under load the task
/// may also wait for a worker thread. A slower answer gives a lifetime one
/// second shorter (none at L = 1 s: the address then lives on the previous
/// refresh, which two such answers in a row at renew = L/3 do not exhaust),
/// never a later end. Part of every takeover's wait, so kept small.
pub(super) const ANSWER_SLACK: Duration = Duration::from_millis(30);

/// `d` rounded up to whole seconds.
fn whole_secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The address's lifetime (`valid_lft` = `preferred_lft`, seconds) `age`
/// after sending the renewal that backs it; `None` when that renewal is too
/// old to back even one second.
pub(super) fn lifetime(lease: Duration, age: Duration) -> Option<u32> {
    let budget = Duration::from_secs(whole_secs_up(lease)) + ANSWER_SLACK;
    let secs = budget.checked_sub(age)?.as_secs();
    // u32::MAX is the kernel's "forever".
    (secs >= 1).then(|| {
        u32::try_from(secs)
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1)
    })
}

/// Whether a refresh to `secs`, for a renewal sent `age_after` before the
/// kernel's answer, still ends in time: applied no later than that answer,
/// it runs out by `⌈L⌉ + δ` after the send.
pub(super) fn refresh_landed_in_time(lease: Duration, secs: u32, age_after: Duration) -> bool {
    let budget = Duration::from_secs(whole_secs_up(lease)) + ANSWER_SLACK;
    age_after + Duration::from_secs(u64::from(secs)) <= budget
}

/// When the copy of a holder whose lease had expired by `expired_by` is
/// surely gone from its interface.
pub(super) fn free_at(expired_by: Instant, lease: Duration) -> Instant {
    let rounding = Duration::from_secs(whole_secs_up(lease)).saturating_sub(lease);
    expired_by + rounding + ANSWER_SLACK + KERNEL_LAG
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_lifetime_is_the_lease_rounded_up_while_the_answer_is_fresh() {
        assert_eq!(lifetime(ms(2000), ms(3)), Some(2));
        assert_eq!(lifetime(ms(1500), ms(3)), Some(2));
        assert_eq!(lifetime(ms(1000), ms(0)), Some(1));
        assert_eq!(lifetime(ms(1000), ANSWER_SLACK), Some(1));
        assert_eq!(lifetime(ms(500), ms(20)), Some(1));
    }

    #[test]
    fn an_old_answer_gives_less_or_nothing() {
        let late = ANSWER_SLACK + ms(1);
        assert_eq!(lifetime(ms(2000), late), Some(1));
        assert_eq!(lifetime(ms(1000), late), None);
        assert_eq!(lifetime(ms(2000), ms(5000)), None);
    }

    /// The leader's copy never outlives `free_at` of the instant its lease
    /// expires, whatever the lease and however late the refresh lands.
    #[test]
    fn the_leaders_copy_is_gone_by_the_standbys_free_at() {
        let s = Instant::now();
        for lease_ms in [500, 999, 1000, 1001, 1500, 2000, 2500, 7300] {
            let lease = ms(lease_ms);
            for age_ms in (0..3000).step_by(7) {
                let age = ms(age_ms);
                let Some(v) = lifetime(lease, age) else {
                    continue;
                };
                // Applied at the latest when the kernel answers, `extra` later.
                for extra_ms in [0, 1, 5, 29, 30, 31, 99, 400] {
                    let landed = age + ms(extra_ms);
                    if !refresh_landed_in_time(lease, v, landed) {
                        continue;
                    }
                    let gone = s + landed + Duration::from_secs(v.into()) + KERNEL_LAG;
                    // Redis applied the renewal no sooner than it was sent.
                    let expiry = s + lease;
                    assert!(
                        gone <= free_at(expiry, lease),
                        "lease {lease:?}, age {age:?}, landed {landed:?}: {v} s"
                    );
                }
            }
        }
    }

    #[test]
    fn a_refresh_held_up_past_its_budget_is_caught() {
        let v = lifetime(ms(2000), ms(2)).expect("fresh");
        assert!(refresh_landed_in_time(ms(2000), v, ms(20)));
        assert!(!refresh_landed_in_time(ms(2000), v, ms(3000)));
    }

    #[test]
    fn a_standby_waits_the_rounding_the_slack_and_the_kernel() {
        let t = Instant::now();
        assert_eq!(free_at(t, ms(2000)) - t, ms(1100));
        assert_eq!(free_at(t, ms(1000)) - t, ms(1100));
        assert_eq!(free_at(t, ms(1500)) - t, ms(1600));
    }
}
