//! What a run made EC2 do, read from the fake's request log: requests by action,
//! those throttled, and the least time EC2's buckets allow for the requests that went
//! through.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::fake_ec2::{LogEntry, Rate, Rates};

/// Requests of one action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub requests: usize,
    pub throttled: usize,
    /// Answered with another error.
    pub failed: usize,
}

impl Count {
    /// Requests that went through the bucket (answered, success or not).
    pub fn answered(&self) -> usize {
        self.requests - self.throttled
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls(pub BTreeMap<String, Count>);

impl Calls {
    pub fn of(log: &[LogEntry]) -> Calls {
        let mut out = BTreeMap::<String, Count>::new();
        for e in log {
            let c = out.entry(e.action.clone()).or_default();
            c.requests += 1;
            match e.code.as_deref() {
                Some("RequestLimitExceeded") => c.throttled += 1,
                Some(_) => c.failed += 1,
                None => {}
            }
        }
        Calls(out)
    }

    pub fn throttled(&self) -> usize {
        self.0.values().map(|c| c.throttled).sum()
    }

    pub fn requests(&self) -> usize {
        self.0.values().map(|c| c.requests).sum()
    }

    fn answered_where(&self, pick: impl Fn(&str) -> bool) -> usize {
        (self.0.iter())
            .filter(|(a, _)| pick(a))
            .map(|(_, c)| c.answered())
            .sum()
    }

    /// The least wall time the buckets allow for the requests that went through: past
    /// each bucket's burst, its refill rate. (Every describe here is filtered.)
    pub fn bound(&self, rates: &Rates) -> Duration {
        let past = |n: usize, r: Rate| ((n as f64 - r.burst).max(0.0) / r.per_second).max(0.0);
        let mutating = self.answered_where(|a| !a.starts_with("Describe"));
        let describes = self.answered_where(|a| a.starts_with("Describe"));
        Duration::from_secs_f64(past(mutating, rates.mutating).max(past(describes, rates.filtered)))
    }

    /// A table: action, requests, throttled, other errors, requests per pod.
    pub fn table(&self, pods: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  {:<28} {:>9} {:>9} {:>7} {:>9} {:>11}",
            "action", "requests", "throttled", "errors", "per pod", "answered/pod"
        );
        let per = |n: usize| n as f64 / pods.max(1) as f64;
        for (action, c) in &self.0 {
            let _ = writeln!(
                out,
                "  {action:<28} {:>9} {:>9} {:>7} {:>9.2} {:>11.2}",
                c.requests,
                c.throttled,
                c.failed,
                per(c.requests),
                per(c.answered())
            );
        }
        let total = Count {
            requests: self.requests(),
            throttled: self.throttled(),
            failed: self.0.values().map(|c| c.failed).sum(),
        };
        let _ = writeln!(
            out,
            "  {:<28} {:>9} {:>9} {:>7} {:>9.2} {:>11.2}",
            "all",
            total.requests,
            total.throttled,
            total.failed,
            per(total.requests),
            per(total.answered())
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, code: Option<&str>) -> LogEntry {
        LogEntry {
            action: action.into(),
            status: if code.is_some() { 503 } else { 200 },
            code: code.map(str::to_owned),
            eni: None,
            at_us: 0,
        }
    }

    #[test]
    fn the_bound_counts_what_went_through_past_the_burst() {
        let mut log: Vec<LogEntry> = (0..300)
            .map(|_| entry("AssignPrivateIpAddresses", None))
            .collect();
        log.extend(
            (0..50).map(|_| entry("AssignPrivateIpAddresses", Some("RequestLimitExceeded"))),
        );
        log.extend((0..140).map(|_| entry("DescribeNetworkInterfaces", None)));
        let calls = Calls::of(&log);
        assert_eq!(calls.throttled(), 50);
        // 300 Assigns: 100 burst, then 200 at 5/s; 140 describes: 40 at 20/s.
        assert_eq!(calls.bound(&Rates::default()), Duration::from_secs(40));
    }
}
