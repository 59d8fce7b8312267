//! Init mode: every address assigned once, confirmed, within the deadline; then exit.

use std::time::{Duration, Instant};

use tracing::{Instrument, info_span, warn};

use super::{Failure, first_addresses, jittered, log_outcome, manager, unassigned};
use crate::aws::Attempts;
use crate::config::Args;
use crate::discover::Addresses;
use crate::ec2::Ec2;
use crate::manager::{AddressError, Take};

/// init's backoff between passes; its deadline bounds the whole.
const INIT_RETRY_FIRST: Duration = Duration::from_millis(250);
const INIT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Init mode: assigns every address once, confirmed, within the deadline.
pub async fn init<E: Ec2, A: Addresses>(
    ec2: E,
    mut addresses: A,
    args: &Args,
    attempts: &Attempts,
) -> Result<(), Failure> {
    let wait = args.address_wait;
    let mut snapshot = first_addresses(&mut addresses, wait).await?;

    let deadline = args.deadline;
    let until = Instant::now() + deadline;
    let cut = |last: Option<String>| {
        // The SDK retries inside a call: what its attempts ran into is the real cause.
        let in_flight = attempts
            .summary()
            .map(|s| format!("the pass in flight did not finish: {s}"));
        let last = in_flight
            .or(last)
            .unwrap_or_else(|| "the pass in flight did not finish".into());
        Failure::Deadline { deadline, last }
    };
    let mgr = match tokio::time::timeout_at(until.into(), manager(ec2, args, &snapshot.addresses))
        .await
    {
        Ok(mgr) => mgr?,
        Err(_) => return Err(cut(None)),
    };
    let mut backoff = INIT_RETRY_FIRST;
    let mut last = None;
    let mut attempt = 0_u32;
    loop {
        attempt += 1;
        let pass = (mgr.assign(&snapshot.addresses, Take::All)).instrument(info_span!(
            "pass",
            trigger = "init",
            attempt
        ));
        let last_failure = match tokio::time::timeout_at(until.into(), pass).await {
            Err(_) => return Err(cut(last)),
            Ok(Err(e)) if e.is_permanent() => return Err(e.into()),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(outcome)) if outcome.is_complete() => {
                log_outcome("init", &outcome);
                return Ok(());
            }
            Ok(Ok(outcome)) if outcome.failed.iter().all(AddressError::is_permanent) => {
                return Err(Failure::Unassigned(outcome.failed));
            }
            Ok(Ok(outcome)) => unassigned(&outcome.failed),
        };
        if Instant::now() + backoff >= until {
            return Err(Failure::Deadline {
                deadline,
                last: last_failure,
            });
        }
        warn!(error = %last_failure, retry_in = ?backoff, "assignment pass incomplete; retrying");
        last = Some(last_failure);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(INIT_RETRY_MAX);
        snapshot = addresses.snapshot().await?;
    }
}
