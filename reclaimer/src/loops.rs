//! What every loop of the controller shares: it runs passes only while this replica
//! leads, one every interval and one soon after its trigger fires (a change it
//! watches), and starts afresh each time it starts leading.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// One of the controller's loops.
pub trait Loop {
    /// Called each time this replica starts leading: forget what the last term knew.
    fn start(&mut self) {}

    /// One pass.
    fn pass(&mut self) -> impl Future<Output = ()> + Send;
}

/// When a loop runs besides its interval.
pub struct Trigger<F> {
    /// Completes when something the loop watches changed.
    pub changed: F,
    /// How long to wait after a change for the rest of its burst.
    pub settle: Duration,
}

/// No trigger: the interval only.
pub fn interval_only() -> Trigger<impl Fn() -> std::future::Pending<()>> {
    Trigger {
        changed: std::future::pending,
        settle: Duration::ZERO,
    }
}

/// Runs `each`'s passes while `leading` says this replica leads; returns when the
/// election ends.
pub async fn while_leading<L, F, Fut>(
    mut each: L,
    mut leading: watch::Receiver<bool>,
    interval: Duration,
    trigger: Trigger<F>,
) where
    L: Loop,
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        each.start();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The select's output holds no borrow of `leading` across the sleep below.
            let changed = tokio::select! {
                _ = tick.tick() => false,
                () = (trigger.changed)() => true,
                lost = leading.wait_for(|l| !*l) => match lost {
                    Ok(_) => break,
                    // The election ended while leading: no term can follow.
                    Err(_) => return,
                },
            };
            if changed && !trigger.settle.is_zero() {
                tokio::time::sleep(trigger.settle).await;
            }
            if !*leading.borrow() {
                break;
            }
            each.pass().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[derive(Clone, Default)]
    struct Counts {
        starts: Arc<AtomicUsize>,
        passes: Arc<AtomicUsize>,
    }

    impl Loop for Counts {
        fn start(&mut self) {
            self.starts.fetch_add(1, Ordering::SeqCst);
        }

        async fn pass(&mut self) {
            self.passes.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn passes_run_only_while_leading_at_the_trigger_and_each_term_starts_afresh() {
        let counts = Counts::default();
        let (leading_tx, leading) = watch::channel(false);
        let changed = Arc::new(Notify::new());
        let trigger = {
            let changed = changed.clone();
            Trigger {
                changed: move || {
                    let changed = changed.clone();
                    async move { changed.notified().await }
                },
                settle: Duration::ZERO,
            }
        };
        // An hour's interval: after the first tick, only the trigger makes a pass.
        let task = tokio::spawn(while_leading(
            counts.clone(),
            leading,
            Duration::from_secs(3600),
            trigger,
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            counts.passes.load(Ordering::SeqCst),
            0,
            "not leading: no pass"
        );
        assert_eq!(counts.starts.load(Ordering::SeqCst), 0);

        leading_tx.send_replace(true);
        until("the first term's first pass", || {
            counts.passes.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(counts.starts.load(Ordering::SeqCst), 1);
        changed.notify_one();
        until("a pass at the trigger", || {
            counts.passes.load(Ordering::SeqCst) == 2
        })
        .await;

        leading_tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        changed.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            counts.passes.load(Ordering::SeqCst),
            2,
            "no pass after leadership is lost"
        );

        leading_tx.send_replace(true);
        until("the second term's start", || {
            counts.starts.load(Ordering::SeqCst) == 2
        })
        .await;
        drop(leading_tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("returns when the election ends")
            .unwrap();
    }
}
