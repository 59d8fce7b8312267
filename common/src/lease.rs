//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it: one replica acts, the others wait.
//!
//! - A replica takes the Lease when it is absent, released (no holder), or unchanged
//!   for a whole lease duration as this replica observed it. Expiry is judged by this
//!   replica's own monotonic clock since it last saw the record change, never by
//!   comparing another machine's `renewTime` with ours.
//! - Every write carries the resourceVersion that was read, so of two replicas racing
//!   for the same record, the apiserver lets exactly one win (409 for the other).
//! - The leader renews every retry period and stops acting once it could not renew
//!   for the renew deadline, which is shorter than the lease duration: it has stopped
//!   before any other replica may start. Each try is cut off when the deadline
//!   passes, as client-go bounds its renewals: on a connection that stops carrying
//!   bytes without closing, a call could otherwise wait past the lease duration
//!   while this replica still believes it leads.
//! - On shutdown the leader releases the Lease, so the next one starts at once: the
//!   others watch the Lease and look again as soon as it changes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

pub struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// What to do when the API server refuses this replica the Lease (403): the
    /// RBAC its installer should have given it.
    pub when_forbidden: String,
    /// Told when each successful try (an acquisition or a renewal) began, for a
    /// holder whose hold on something else lapses unless it is renewed.
    pub renewed: Option<watch::Sender<Option<Instant>>>,
}

/// What this replica last saw of the Lease, and when it saw it change.
struct Observed {
    spec: Option<LeaseSpec>,
    at: Instant,
}

impl Observed {
    /// The duration the record asks for, or `default` when it names none.
    fn duration(&self, default: Duration) -> Duration {
        (self.spec.as_ref().and_then(|s| s.lease_duration_seconds)).map_or(default, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        })
    }
}

/// The lease duration as a Lease records it and the other replicas wait it: whole
/// seconds, rounded up (at least one), so they wait at least as long as the holder's
/// renew deadline was chosen against.
pub fn written(lease_duration: Duration) -> Duration {
    Duration::from_secs(lease_duration.as_millis().div_ceil(1000).max(1) as u64)
}

/// How long past a Lease's expiry a waiting replica looks, so that its clock has
/// surely passed it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(10);

impl Election {
    /// Runs until `stop` turns true, keeping `leading` true exactly while this
    /// replica holds the Lease; then releases it if held.
    pub async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut observed: Option<Observed> = None;
        let only_this = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut changes = watcher::watcher(self.api.clone(), only_this)
            .default_backoff()
            .boxed();
        let mut last_renewal: Option<Instant> = None;
        loop {
            // A leader's try may last until its renew deadline; anyone else's, a
            // renew deadline too, so a hung call never stalls the loop.
            let bound = match last_renewal {
                Some(at) if *leading.borrow() => self.renew_deadline.saturating_sub(at.elapsed()),
                _ => self.renew_deadline,
            };
            // A renewal counts from when the try began, before its write reached the API
            // server: the other replicas' lease duration starts later than that, so the
            // renew deadline always ends first.
            let began = Instant::now();
            let tried = tokio::time::timeout(bound, self.try_acquire_or_renew(&mut observed))
                .await
                .unwrap_or_else(|_| Err(TryError::Deadline(bound)));
            match tried {
                Ok(true) => {
                    if !*leading.borrow() {
                        info!(lease = %self.name, identity = %self.identity, "leading");
                    }
                    last_renewal = Some(began);
                    if let Some(renewed) = &self.renewed {
                        renewed.send_replace(Some(began));
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        warn!(lease = %self.name, "another replica holds the lease: no longer leading");
                    }
                    last_renewal = None;
                    leading.send_replace(false);
                }
                Err(e) => {
                    let stale = last_renewal.is_some_and(|t| t.elapsed() >= self.renew_deadline);
                    if *leading.borrow() && stale {
                        warn!(lease = %self.name, error = %e, "could not renew the lease within the renew deadline: no longer leading");
                        leading.send_replace(false);
                        last_renewal = None;
                    } else if e.is_forbidden() {
                        warn!(lease = %self.name, error = %e, "{}", self.when_forbidden);
                    } else {
                        warn!(lease = %self.name, error = %e, "lease");
                    }
                }
            }
            // A replica waiting for another's Lease looks again when it would expire, if
            // that is sooner than the retry period: a crashed holder's peer takes over a
            // lease duration after the last renewal it saw, not up to a period later.
            let pause = match (&observed, *leading.borrow()) {
                (Some(o), false) => {
                    let expiry = o.at + o.duration(self.lease_duration);
                    let until = expiry.saturating_duration_since(Instant::now());
                    self.retry_period.min(until + EXPIRY_MARGIN)
                }
                _ => self.retry_period,
            };
            // A waiting replica also looks again the moment the Lease changes: a holder
            // that gives it up on stopping is succeeded at once, and a renewal is seen
            // when it is written, so that its expiry is counted from then.
            let waiting = !*leading.borrow();
            let changed = async {
                loop {
                    match changes.next().await {
                        Some(Ok(_)) if waiting => return,
                        Some(_) => continue,
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
                _ = changed => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            let released = tokio::time::timeout(self.renew_deadline, self.release())
                .await
                .unwrap_or_else(|_| Err(TryError::Deadline(self.renew_deadline)));
            match released {
                Ok(()) => info!(lease = %self.name, "released the lease"),
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "could not release the lease; it expires by itself")
                }
            }
        }
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<bool, TryError> {
        let now = MicroTime(Timestamp::now());
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        if observed
            .as_ref()
            .is_none_or(|o| o.spec.as_ref() != Some(&spec))
        {
            *observed = Some(Observed {
                spec: Some(spec.clone()),
                at: Instant::now(),
            });
        }
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let mine = holder == self.identity;
        let expired = observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= o.duration(self.lease_duration));
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let (acquired, transitions) = if mine {
            (
                spec.acquire_time.clone().unwrap_or_else(|| now.clone()),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now.clone(), spec.lease_transitions.unwrap_or(0) + 1)
        };
        let mut next = current;
        next.spec = Some(self.spec(acquired, now, transitions));
        // `replace` sends the resourceVersion read above: a write based on an old
        // read fails with 409 instead of overwriting another replica's.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                *observed = Some(Observed {
                    spec: written.spec,
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(written(self.lease_duration).as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn release(&self) -> Result<(), TryError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(TryError::from)
    }
}

/// Why a try at the Lease did not complete.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    Deadline(Duration),
}

impl TryError {
    fn is_forbidden(&self) -> bool {
        matches!(self, TryError::Api(kube::Error::Api(status)) if status.code == 403)
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
