//! EC2's request rate limits: token buckets per account and Region, one per
//! category (mutating actions, filtered describes, unfiltered describes), at the
//! published rates.

use std::time::Instant;

use super::query::Query;

/// The three buckets, at EC2's published defaults.
pub(super) struct Buckets {
    mutating: Bucket,
    filtered: Bucket,
    unfiltered: Bucket,
}

impl Buckets {
    pub(super) fn new() -> Self {
        Buckets {
            mutating: Bucket::new(100.0, 5.0),
            filtered: Bucket::new(100.0, 20.0),
            unfiltered: Bucket::new(50.0, 10.0),
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
    fn new(capacity: f64, per_second: f64) -> Self {
        Bucket {
            capacity,
            per_second,
            tokens: capacity,
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
