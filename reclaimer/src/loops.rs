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
                _ = leading.wait_for(|l| !*l) => break,
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
