//! The rise/fall hysteresis of one backend's active checks.
//!
//! A backend that is up goes down after `fall` consecutive failures; one that
//! is down comes up after `rise` consecutive passes; any result that agrees
//! with the current state resets the run. A backend whose state is still
//! `Unknown` is decided by its first result alone, so tether starts serving
//! after one round of checks instead of waiting rise x interval.

use crate::backend::Health;

#[derive(Debug, Clone)]
pub struct Counter {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    run: u32,
}

impl Counter {
    /// `rise` and `fall` below 1 act as 1 (config rejects them anyway).
    pub fn new(rise: u32, fall: u32, state: Health) -> Self {
        Counter {
            rise: rise.max(1),
            fall: fall.max(1),
            state,
            run: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Adopt the backend's actual state when something else changed it
    /// (passive failures mark a backend down between probes): the run starts
    /// over from there, so coming back still takes `rise` passes.
    pub fn sync(&mut self, actual: Health) {
        if actual != self.state {
            self.state = actual;
            self.run = 0;
        }
    }

    /// Count one probe result; the new state when it is a transition.
    pub fn record(&mut self, pass: bool) -> Option<Health> {
        let (agrees, needed, target) = match self.state {
            Health::Unknown => (false, 1, if pass { Health::Up } else { Health::Down }),
            Health::Up => (pass, self.fall, Health::Down),
            Health::Down => (!pass, self.rise, Health::Up),
        };
        if agrees {
            self.run = 0;
            return None;
        }
        self.run += 1;
        if self.run < needed {
            return None;
        }
        self.state = target;
        self.run = 0;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `results`; the transitions they cause, by index.
    fn run(c: &mut Counter, results: &[bool]) -> Vec<(usize, Health)> {
        results
            .iter()
            .enumerate()
            .filter_map(|(i, &r)| c.record(r).map(|h| (i, h)))
            .collect()
    }

    #[test]
    fn unknown_is_decided_by_the_first_result() {
        let mut c = Counter::new(3, 3, Health::Unknown);
        assert_eq!(c.record(true), Some(Health::Up));
        let mut c = Counter::new(3, 3, Health::Unknown);
        assert_eq!(c.record(false), Some(Health::Down));
        assert_eq!(c.state(), Health::Down);
    }

    #[test]
    fn up_goes_down_after_exactly_fall_failures() {
        let mut c = Counter::new(2, 3, Health::Up);
        assert_eq!(
            run(&mut c, &[false, false, false, false]),
            vec![(2, Health::Down)]
        );
    }

    #[test]
    fn down_comes_up_after_exactly_rise_passes() {
        let mut c = Counter::new(4, 2, Health::Down);
        assert_eq!(
            run(&mut c, &[true, true, true, true, true]),
            vec![(3, Health::Up)]
        );
    }

    #[test]
    fn interleaved_results_reset_the_run() {
        let mut c = Counter::new(2, 2, Health::Up);
        // fail, pass, fail, pass...: never two failures in a row.
        assert!(run(&mut c, &[false, true, false, true, false, true]).is_empty());
        assert_eq!(c.state(), Health::Up);
        let mut c = Counter::new(2, 2, Health::Down);
        assert!(run(&mut c, &[true, false, true, false]).is_empty());
        assert_eq!(run(&mut c, &[true, true]), vec![(1, Health::Up)]);
    }

    #[test]
    fn one_is_immediate() {
        let mut c = Counter::new(1, 1, Health::Up);
        assert_eq!(
            run(&mut c, &[false, true, false]),
            vec![(0, Health::Down), (1, Health::Up), (2, Health::Down)]
        );
    }

    #[test]
    fn sync_adopts_an_outside_change_and_restarts_the_run() {
        let mut c = Counter::new(2, 2, Health::Up);
        assert_eq!(c.record(true), None);
        // Passive failures marked it down meanwhile: rise passes are needed again.
        c.sync(Health::Down);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(Health::Up));
        // Half a run towards down is forgotten when the state is re-adopted.
        assert_eq!(c.record(false), None);
        c.sync(Health::Down);
        c.sync(Health::Up);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(Health::Down));
    }
}
