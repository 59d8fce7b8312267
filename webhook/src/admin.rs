//! The webhook's readiness, which its admin port (`ipmgmt_common::shell::admin_router`,
//! plain HTTP apart from the TLS port so that probes and scrapes never need the
//! serving certificate) answers at `/readyz`. The metric families are registered by
//! the components that keep them (`server`, `tls`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipmgmt_common::shell::Readiness;

/// Readiness: set once TLS material is loaded and the listener is bound, cleared as
/// soon as shutdown begins so the Service stops sending new reviews here.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// What `/readyz` answers.
    pub fn readiness(self: &Arc<Self>) -> Readiness {
        let health = self.clone();
        Arc::new(move || {
            if health.is_ready() {
                Ok("ready\n")
            } else {
                Err("not ready\n")
            }
        })
    }
}
