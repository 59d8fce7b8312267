//! EC2's request rate limits: token buckets per account and Region, one per
//! category (mutating actions, filtered describes, unfiltered describes), at the
//! published rates (or smaller ones a test sets).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::query::Query;

/// One bucket: how many requests it holds when full, and how many it regains a second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

/// The three buckets' rates. `Default` is EC2's published defaults; smaller ones let a
/// test with a few pods see what hundreds see against the real ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Assign/Unassign and every other mutating action.
    pub mutating: Rate,
    /// Describes with a filter or IDs.
    pub filtered: Rate,
    pub unfiltered: Rate,
}

impl Default for Rates {
    fn default() -> Self {
        let rate = |burst, per_second| Rate { burst, per_second };
        Rates {
            mutating: rate(100.0, 5.0),
            filtered: rate(100.0, 20.0),
            unfiltered: rate(50.0, 10.0),
        }
    }
}

/// The three buckets, full at the start.
pub(super) struct Buckets {
    mutating: Bucket,
    filtered: Bucket,
    unfiltered: Bucket,
}

impl Buckets {
    pub(super) fn new(rates: Rates) -> Self {
        Buckets {
            mutating: Bucket::new(rates.mutating),
            filtered: Bucket::new(rates.filtered),
            unfiltered: Bucket::new(rates.unfiltered),
        }
    }

    /// Whether a request of `action` may go ahead now.
    pub(super) fn take(&mut self, action: &str, q: &Query) -> bool {
        if action.starts_with("Describe") {
            let filtered =
                q.0.iter()
                    .any(|(k, _)| k.starts_with("Filter.") || k.contains("Id."));
            if filtered {
                self.filtered.take()
            } else {
                self.unfiltered.take()
            }
        } else {
            self.mutating.take()
        }
    }
}

struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Bucket {
            capacity: rate.burst,
            per_second: rate.per_second,
            tokens: rate.burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
