//! The subnets (and their VPCs) a pass places addresses in, described once and kept
//! between passes: a subnet never changes VPC, and a release on stop needs no call.

use std::collections::HashMap;

use tracing::warn;

use super::{Manager, PassError};
use crate::ec2::{Ec2, Ec2Error};
use crate::eni::{self, Eni, Local, Subnet};

impl<E: Ec2> Manager<E> {
    /// The subnets `place` needs, described only when some address has no ENI by MAC.
    /// `cached`: make do with the last pass's subnets when they cover the ENIs.
    pub(super) async fn subnets(
        &self,
        locals: &[Local],
        enis: &[Eni],
        cached: bool,
    ) -> Result<HashMap<String, Subnet>, PassError> {
        let mut cache = self
            .subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // What is known already still helps: an address outside its VPC, found once,
        // is left alone without another refused call.
        if !eni::needs_subnets(locals, enis) {
            return Ok(cache);
        }
        let ids = eni::secondary_subnet_ids(enis);
        if ids.is_empty() || (cached && ids.iter().all(|id| cache.contains_key(id))) {
            return Ok(cache);
        }
        let fresh = self.ec2.subnets(&ids).await?;
        merge(&mut cache, fresh);
        *self.subnets.lock().unwrap_or_else(|p| p.into_inner()) = cache.clone();
        Ok(cache)
    }

    /// The cached subnets, with the VPCs of `ids` described. A failure is logged and
    /// leaves them undescribed: the addresses outside their subnets stay errors.
    pub(super) async fn with_vpcs(&self, ids: &[String]) -> HashMap<String, Subnet> {
        let mut cache = self
            .subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut vpc_ids: Vec<String> = (ids.iter())
            .filter_map(|id| cache.get(id))
            .filter(|s| s.vpc.is_none())
            .map(|s| s.vpc_id.clone())
            .collect();
        vpc_ids.sort();
        vpc_ids.dedup();
        if vpc_ids.is_empty() {
            return cache;
        }
        match self.ec2.vpcs(&vpc_ids).await {
            Ok(vpcs) => {
                for s in cache.values_mut() {
                    s.vpc = s
                        .vpc
                        .take()
                        .or_else(|| vpcs.iter().find(|v| v.id == s.vpc_id).cloned());
                }
                *self.subnets.lock().unwrap_or_else(|p| p.into_inner()) = cache.clone();
            }
            Err(e) => {
                warn!(error = %e, "the VPC could not be described: addresses outside their ENI's subnet stay errors")
            }
        }
        cache
    }

    /// The cached subnets, with `ids` and their VPCs described.
    pub(super) async fn described(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Subnet>, Ec2Error> {
        let cache = self
            .subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !cache.contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let fresh = self.ec2.subnets(&missing).await?;
            merge(
                &mut self.subnets.lock().unwrap_or_else(|p| p.into_inner()),
                fresh,
            );
        }
        Ok(self.with_vpcs(ids).await)
    }
}

/// Subnets described afresh into the cache, keeping a VPC already described: a
/// subnet never changes VPC, and its VPC's blocks are looked up only when needed.
fn merge(cache: &mut HashMap<String, Subnet>, fresh: Vec<Subnet>) {
    for mut s in fresh {
        if let Some(old) = cache.get(&s.id).filter(|old| old.vpc_id == s.vpc_id) {
            s.vpc = old.vpc.clone();
        }
        cache.insert(s.id.clone(), s);
    }
}
