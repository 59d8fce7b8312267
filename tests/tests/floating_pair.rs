//! Two replicas of a workload with a floating address, each the real ipmgr binary in
//! its own pod network namespace on its own node, as the webhook runs it for such a
//! pod (uid 0 with CAP_NET_ADMIN alone), contending for the address's Lease in the fake
//! API server and moving it in the fake EC2. A sampler looks at both pods' interfaces
//! every few milliseconds for the whole scene: at no instant may both have the address.
//! Needs root.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipmgmt_tests::fake_ec2::iam::Policy;
use ipmgmt_tests::fake_ec2::{ElasticIp, FakeEc2, Faults, Route, RouteTable, World};
use ipmgmt_tests::fake_kube::{FakeKube, Kind};
use ipmgmt_tests::netns::ipmgr_for_tests;
use ipmgmt_tests::pair::{self, Replica, Sampler};
use ipmgmt_tests::scenario::world;

const VIP: &str = "10.0.1.100";
const LEASE: &str = "ipmgmt-vip-";

struct Scene {
    vip: &'static str,
    /// Routed through route tables, never an ENI's address.
    routed: bool,
    ec2: FakeEc2,
    kube: FakeKube,
    a: Replica,
    b: Replica,
}

impl Scene {
    fn vip(&self) -> IpAddr {
        self.vip.parse().unwrap()
    }

    async fn start() -> Scene {
        Scene::start_with(world(), VIP, &[]).await
    }

    /// Two replicas with `vip` in `world`, each with `env` besides the defaults.
    async fn start_with(
        world: World,
        vip: &'static str,
        env: &[(&'static str, &'static str)],
    ) -> Scene {
        let ec2 = FakeEc2::new(world);
        // A reassigned address shows on its new ENI after a while, as EC2's remap is
        // asynchronous.
        ec2.set_faults(Faults {
            remap_delay_ms: 200,
            ..Faults::default()
        });
        let kube = FakeKube::default();
        let (a, b) = pair::replicas(&ec2, &kube, vip).await;
        let routed = env.iter().any(|(k, _)| *k == "IPMGR_ROUTE_TABLES");
        Scene {
            vip,
            routed,
            ec2,
            kube,
            a,
            b,
        }
    }

    fn on_interface(&self) -> Vec<&'static str> {
        [&self.a, &self.b]
            .into_iter()
            .filter(|r| r.net.has_address(self.vip()))
            .map(|r| r.name)
            .collect()
    }

    fn lease_holder(&self) -> Option<String> {
        let leases = self.kube.list(Kind::Lease);
        let lease = leases.iter().find(|l| {
            l["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(LEASE))
        })?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    /// Waits until exactly `who` has the address on its interface, its ENI holds it in
    /// EC2 and it holds the Lease; returns how long each took, interface then ENI.
    async fn wait_held_by(&self, who: &Replica, within: Duration) -> (Duration, Duration) {
        let start = Instant::now();
        let mut on_interface = None;
        loop {
            let iface = self.on_interface() == [who.name];
            if iface && on_interface.is_none() {
                on_interface = Some(start.elapsed());
            }
            let eni = self.routed || self.ec2.holder(self.vip()).as_deref() == Some(who.eni);
            if let (Some(i), true, true) = (on_interface, eni, iface) {
                assert_eq!(self.lease_holder().as_deref(), Some(who.name));
                return (i, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{} does not hold {} after {within:?}: on interfaces {:?}, ENI {:?}, lease {:?}\n{}: {}\n{}: {}",
                who.name,
                self.vip,
                self.on_interface(),
                self.ec2.holder(self.vip()),
                self.lease_holder(),
                self.a.name,
                self.a.log(),
                self.b.name,
                self.b.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `upf-0` started, and holding the address: on its interface, its ENI, the Lease.
    async fn a_holds(&mut self, env: &[(&str, &str)]) {
        self.a.start(&ipmgr_for_tests(), env);
        self.wait_held_by(&self.a, Duration::from_secs(10)).await;
    }

    /// `upf-1` started, and contending: it has seen the Lease held by `upf-0`.
    async fn b_waits(&mut self, env: &[(&str, &str)]) {
        self.b.start(&ipmgr_for_tests(), env);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    /// The replica holding the address and the other.
    fn holder_and_peer(&mut self) -> (&mut Replica, &mut Replica) {
        if self.a.net.has_address(self.vip()) {
            (&mut self.a, &mut self.b)
        } else {
            (&mut self.b, &mut self.a)
        }
    }
}

/// First start: exactly one holder, with the address on its interface and its ENI;
/// then the holder is stopped (SIGTERM) and the peer holds it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_and_a_graceful_handover_within_a_second() {
    let mut scene = Scene::start().await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.start(&ipmgr_for_tests(), &[]);
    scene.b.start(&ipmgr_for_tests(), &[]);
    let until = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let on = scene.on_interface();
        if on.len() == 1 && scene.lease_holder().as_deref() == Some(on[0]) {
            break on[0];
        }
        assert!(
            Instant::now() < until,
            "no holder: {}\n{}",
            scene.a.log(),
            scene.b.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let holder = if first == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    scene.wait_held_by(holder, Duration::from_secs(10)).await;

    let (holder, peer) = scene.holder_and_peer();
    let (holder_name, peer_name) = (holder.name, peer.name);
    holder.signal("-TERM");
    assert_eq!(holder.wait_exit(), Some(0), "{}", holder.log());
    let stopped = Instant::now();
    let peer = if peer_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    let (iface, eni) = scene.wait_held_by(peer, Duration::from_secs(10)).await;
    let handover = stopped.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!(
        "graceful handover {holder_name} -> {peer_name}: interface {iface:?}, ENI {eni:?} after the holder exited"
    );
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    assert!(samples > 50, "{samples} samples");
    // The holder gave the Lease up before it exited: the peer needed no expiry.
    assert!(
        iface < Duration::from_secs(1),
        "on the peer's interface after {iface:?}"
    );
    assert!(handover < Duration::from_secs(5), "{handover:?}");
    let peer = if peer_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    // The pass that took the address records "on the ENI" once it has confirmed it.
    let until = Instant::now() + Duration::from_secs(5);
    let mut metrics = peer.metrics();
    while !metrics.contains("stage=\"eni\"") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = peer.metrics();
    }
    for line in [
        "ipmgmt_manager_floating_holding 1",
        "ipmgmt_manager_floating_transitions_total{to=\"holding\"} 1",
        "ipmgmt_manager_floating_takeover_seconds_count{stage=\"interface\"} 1",
        "ipmgmt_manager_floating_takeover_seconds_count{stage=\"eni\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let holder = if holder_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    assert!(
        holder
            .log()
            .contains("floating addresses taken off the interfaces"),
        "{}",
        holder.log()
    );
}

/// The holder killed outright: the kernel takes the address off its dead pod's
/// interface by itself, and the peer holds it after the Lease's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_the_address_before_the_peer_takes_it() {
    let mut scene = Scene::start().await;
    scene.a_holds(&[]).await;
    scene.b_waits(&[]).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.signal("-KILL");
    scene.a.wait_exit();
    let killed = Instant::now();
    let (iface, eni) = scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    let (both, samples) = sampler.finish();
    eprintln!("after SIGKILL: on the peer's interface after {iface:?}, on its ENI after {eni:?}");
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    // Not before the Lease (3 s) could expire, not much after.
    let took = killed.elapsed();
    assert!(iface >= Duration::from_millis(2000), "{iface:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// The holder cut off from the API server but not from EC2: it takes the address off
/// its interface at the renew deadline, before the peer may take the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_api_server_lets_go_first() {
    let mut scene = Scene::start().await;
    scene.a_holds(&[]).await;
    scene.b_waits(&[]).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.cut_from_api_server();
    let cut = Instant::now();
    let until = cut + Duration::from_secs(5);
    while scene.a.net.has_address(scene.vip()) {
        assert!(Instant::now() < until, "{}", scene.a.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = cut.elapsed();
    scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    let taken = cut.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!("cut off: the holder let go after {dropped:?}, the peer held it after {taken:?}");
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    assert!(dropped < taken);
    // The kernel's lifetime or the holder's renew deadline, whichever came first.
    let log = scene.a.log();
    assert!(
        log.contains("the floating addresses lapse from the interfaces unless")
            && log.contains("could not renew the lease within the renew deadline"),
        "{log}"
    );
    // The cut-off replica is still running, waiting to contend again.
    assert!(
        scene
            .a
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    );
}

/// `scenario::world` with an Elastic IP and two route tables tagged for ipmgmt, and the
/// Multus ENIs' source/destination check as `check`.
fn world_with_eip_and_tables(check: bool) -> World {
    let mut w = world();
    let floating = || vec![("ipmgmt.aws/floating".to_owned(), "true".to_owned())];
    w.addresses = vec![ElasticIp {
        allocation_id: "eipalloc-0a1b2c3d".into(),
        public_ip: "203.0.113.10".parse().unwrap(),
        association: None,
        tags: floating(),
    }];
    w.route_tables = ["rtb-0a1b2c3d", "rtb-0e1f2a3b"]
        .map(|id| RouteTable {
            id: id.into(),
            routes: vec![Route {
                destination: "10.0.0.0/16".parse().unwrap(),
                eni: None,
                gateway: Some("local".into()),
            }],
            tags: floating(),
        })
        .into();
    for eni in &mut w.enis {
        eni.source_dest_check = check;
    }
    w
}

const EIP: [(&str, &str); 1] = [("IPMGR_ELASTIC_IP", "eipalloc-0a1b2c3d")];
/// Outside the VPC's CIDRs: reached through the route tables, across zones.
const ROUTED_VIP: &str = "192.168.100.1";
const TABLES: [(&str, &str); 1] = [("IPMGR_ROUTE_TABLES", "rtb-0a1b2c3d,rtb-0e1f2a3b")];

impl Scene {
    /// The ENI and private address the Elastic IP is associated with.
    fn eip(&self) -> Option<(String, String)> {
        let world = self.ec2.world();
        let a = world.addresses[0].association.clone()?;
        Some((a.eni, a.private_ip.to_string()))
    }

    /// The ENI each route table's route to the routed VIP points at.
    fn routes(&self) -> Vec<Option<String>> {
        let dest: ipnet::IpNet = format!("{ROUTED_VIP}/32").parse().unwrap();
        (self.ec2.world().route_tables.iter())
            .map(|t| {
                (t.routes.iter())
                    .find(|r| r.destination == dest)
                    .and_then(|r| r.eni.clone())
            })
            .collect()
    }

    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Scene) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < within,
                "{what} not within {within:?}: EIP {:?}, routes {:?}\n{}: {}\n{}: {}",
                self.eip(),
                self.routes(),
                self.a.name,
                self.a.log(),
                self.b.name,
                self.b.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
}

/// The Elastic IP follows the floating address to the peer on a graceful stop, and
/// the stopping pod gives back only an association that is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elastic_ip_follows_the_floating_address() {
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), VIP, &[]).await;
    scene.a_holds(&EIP).await;
    let on_a = Some(("eni-1n3".to_owned(), VIP.to_owned()));
    scene
        .wait_until("the EIP on upf-0's address", Duration::from_secs(10), |s| {
            s.eip() == on_a
        })
        .await;
    scene.b_waits(&EIP).await;
    scene.a.signal("-TERM");
    scene.a.wait_exit();
    let stopped = Instant::now();
    let on_b = Some(("eni-2n3".to_owned(), VIP.to_owned()));
    scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    scene
        .wait_until("the EIP on upf-1's address", Duration::from_secs(10), |s| {
            s.eip() == on_b
        })
        .await;
    eprintln!(
        "graceful: the EIP on the peer's address {:?} after the holder exited",
        stopped.elapsed()
    );
    // And it stays there: nothing the first holder did lands late.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scene.eip(), on_b);
    assert!(
        scene.b.log().contains("the Elastic IP points at this pod"),
        "{}",
        scene.b.log()
    );
}

/// A VIP outside the VPC's CIDRs across zones: never assigned to an ENI, its route in
/// every table points at the holder's ENI, and at the peer's after the holder is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_a_vip_outside_the_vpc() {
    let mut scene = Scene::start_with(world_with_eip_and_tables(false), ROUTED_VIP, &TABLES).await;
    scene.a_holds(&TABLES).await;
    let to = |eni: &str| vec![Some(eni.to_owned()); 2];
    scene
        .wait_until("routes to upf-0's ENI", Duration::from_secs(10), |s| {
            s.routes() == to("eni-1n3")
        })
        .await;
    scene.b_waits(&TABLES).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.signal("-KILL");
    scene.a.wait_exit();
    let killed = Instant::now();
    scene
        .wait_until("routes to upf-1's ENI", Duration::from_secs(10), |s| {
            s.routes() == to("eni-2n3")
        })
        .await;
    let took = killed.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!("after SIGKILL: the routes point at the peer after {took:?}");
    assert_eq!(
        both, 0,
        "both pods had {ROUTED_VIP} in {both} of {samples} samples"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(
        scene.ec2.holder(scene.vip()),
        None,
        "a routed VIP is never an ENI's address"
    );
}

/// Bad input: one line that names what to fix, and nothing changed in EC2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_and_changes_nothing() {
    // The ENI's source/destination check is on.
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), ROUTED_VIP, &TABLES).await;
    scene.a_holds(&TABLES).await;
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log()
                .contains("ENI eni-1n3 has its source/destination check on")
        })
        .await;
    assert!(scene.a.log().contains("no route was changed"));
    assert_eq!(scene.routes(), vec![None, None]);
    drop(scene);

    // A route table that does not exist.
    let missing = [("IPMGR_ROUTE_TABLES", "rtb-0a1b2c3d,rtb-0deadbee")];
    let mut scene = Scene::start_with(world_with_eip_and_tables(false), ROUTED_VIP, &missing).await;
    scene.a.start(&ipmgr_for_tests(), &missing);
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log().contains("InvalidRouteTableID.NotFound")
        })
        .await;
    assert!(
        scene.a.log().contains("check ipmgmt.aws/route-tables"),
        "{}",
        scene.a.log()
    );
    assert_eq!(scene.routes(), vec![None, None]);
    drop(scene);

    // The role lacks the floating policy.
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), VIP, &[]).await;
    let base: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/iam-policy.json")).unwrap();
    scene.ec2.set_policy(Some(Policy::parse(&base)));
    scene.a_holds(&EIP).await;
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log().contains("UnauthorizedOperation")
        })
        .await;
    let log = scene.a.log();
    let line = (log.lines())
        .find(|l| l.contains("UnauthorizedOperation"))
        .unwrap();
    assert!(
        line.contains("DescribeAddresses eipalloc-0a1b2c3d: UnauthorizedOperation")
            && line.contains("attach deploy/floating-iam-policy.json to it"),
        "{line}"
    );
    // Said once, however often it is retried.
    assert_eq!(log.matches("UnauthorizedOperation").count(), 1, "{log}");
    assert_eq!(scene.eip(), None);
}

/// EC2 throttling half the calls during a take-over: the Elastic IP still ends on the
/// new holder, and stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_throttling_converges_on_the_new_holder() {
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), VIP, &[]).await;
    scene.a_holds(&EIP).await;
    let on = |eni: &str| Some((eni.to_owned(), VIP.to_owned()));
    scene
        .wait_until("the EIP on upf-0", Duration::from_secs(10), |s| {
            s.eip() == on("eni-1n3")
        })
        .await;
    scene.b_waits(&EIP).await;
    scene.ec2.set_faults(Faults {
        remap_delay_ms: 200,
        throttle_fraction: 0.5,
        ..Faults::default()
    });
    scene.a.signal("-TERM");
    scene.a.wait_exit();
    scene.wait_held_by(&scene.b, Duration::from_secs(30)).await;
    scene
        .wait_until("the EIP on upf-1", Duration::from_secs(30), |s| {
            s.eip() == on("eni-2n3")
        })
        .await;
    scene.ec2.set_faults(Faults {
        remap_delay_ms: 200,
        ..Faults::default()
    });
    let throttled = (scene.ec2.log().iter())
        .filter(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
        .count();
    assert!(throttled > 0, "the fault throttled nothing");
    // Nothing upf-0 had in flight lands later and points it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scene.eip(), on("eni-2n3"));
    assert_eq!(scene.ec2.holder(scene.vip()).as_deref(), Some("eni-2n3"));
}

/// Without floating addresses, `tag:KEY=VALUE` gives each pod its own Elastic IP from
/// the pool, for its own address; a pod that stops gives its EIP back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_gets_its_own_elastic_ip_from_a_pool() {
    let mut w = world();
    let eip = |id: &str, ip: &str, tagged: bool| ElasticIp {
        allocation_id: id.into(),
        public_ip: ip.parse().unwrap(),
        association: None,
        tags: match tagged {
            true => vec![("ipmgmt.aws/pool".into(), "upf".into())],
            false => Vec::new(),
        },
    };
    w.addresses = vec![
        eip("eipalloc-0000000a", "203.0.113.10", true),
        eip("eipalloc-0000000b", "203.0.113.11", false),
        eip("eipalloc-0000000c", "203.0.113.12", true),
    ];
    let mut scene = Scene::start_with(w, VIP, &[]).await;
    let pool = [("IPMGR_ELASTIC_IP", "tag:ipmgmt.aws/pool=upf")];
    scene.a.start_without_floating(&ipmgr_for_tests(), &pool);
    scene.b.start_without_floating(&ipmgr_for_tests(), &pool);
    let associations = |s: &Scene| -> Vec<Option<(String, String)>> {
        (s.ec2.world().addresses.iter())
            .map(|a| (a.association.as_ref()).map(|x| (x.eni.clone(), x.private_ip.to_string())))
            .collect()
    };
    scene
        .wait_until("each pod's own EIP", Duration::from_secs(15), |s| {
            let got = associations(s);
            got[1].is_none()
                && got[0].is_some()
                && got[2].is_some()
                && got[0] != got[2]
                && got.iter().flatten().all(|(eni, ip)| {
                    (eni == "eni-1n3" && ip == "10.0.1.50")
                        || (eni == "eni-2n3" && ip == "10.0.1.60")
                })
        })
        .await;
    // No Lease and no capability: these managers hold no floating address.
    assert!(scene.kube.list(Kind::Lease).is_empty());
    scene.a.signal("-TERM");
    scene.a.wait_exit();
    let got = associations(&scene);
    assert_eq!(got.iter().flatten().count(), 1, "{got:?}");
    assert!(
        got.iter().flatten().all(|(eni, _)| eni == "eni-2n3"),
        "{got:?}"
    );
}

/// A floating address in the subnet of none of the pod's interfaces, without route
/// tables: no ENI of the node could hold it. One line says so, nothing reaches EC2,
/// and the replica gives the Lease up to one that might hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_no_subnet_of_the_pod_is_refused_and_the_lease_given_up() {
    let mut scene = Scene::start_with(world(), "10.0.9.100", &[]).await;
    scene.a.start(&ipmgr_for_tests(), &[]);
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log().contains("gave the lease up")
        })
        .await;
    let log = scene.a.log();
    let line = (log.lines())
        .find(|l| l.contains("so no ENI of the node can hold it"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("10.0.9.100") && line.contains("net1 (10.0.1.0/24)"),
        "{line}"
    );
    assert!(!scene.a.has_vip());
    assert_eq!(scene.ec2.holder(scene.vip()), None);
    assert_eq!(scene.lease_holder(), None, "the Lease is free for a peer");
}
