//! A fake of the EC2 Query API, faithful to EC2's documented semantics for the actions
//! ipmgr calls. moto speaks the same wire format but ignores what ipmgr depends on
//! (AllowReassignment, per-ENI limits, subnet checks, some filters), so semantics are
//! tested here and moto is kept as a wire-format check.
//!
//! - AssignPrivateIpAddresses: with AllowReassignment an address held by another ENI
//!   moves (after `remap_delay`, as floating-IP remaps are asynchronous); without it,
//!   `InvalidIPAddress.InUse`. Addresses must lie in the ENI's subnet; an ENI may hold
//!   as many IPv4 addresses as its instance type allows (primary included), else
//!   `PrivateIpAddressLimitExceeded`.
//! - AssignIpv6Addresses: no reassignment; in use elsewhere is `InvalidIPAddress.InUse`.
//! - Unassign*: only addresses the ENI holds; never the primary.
//! - DescribeNetworkInterfaces shows each ENI's tags (the VPC CNI's `no_manage` tag
//!   among them) and its attachment's device index (0 is the instance's primary ENI).
//! - Throttling by token buckets at EC2's published rates, per category.
//! - Injected faults: denied actions (`UnauthorizedOperation`), random throttling and
//!   5xx, added latency. Every request is logged for tests to count.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub private_dns_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Eni {
    pub id: String,
    pub instance_id: Option<String>,
    pub device_index: i32,
    pub mac: String,
    pub subnet_id: String,
    /// The first is the primary.
    pub ipv4: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Vec<Ipv6Addr>,
    /// Key, value.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

/// The tag that keeps the VPC CNI away from an ENI.
pub const NO_MANAGE: (&str, &str) = ("node.k8s.amazonaws.com/no_manage", "true");

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub ipv4: Ipv4Net,
    #[serde(default)]
    pub ipv6: Vec<Ipv6Net>,
}

/// The account's resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct World {
    pub instances: Vec<Instance>,
    pub enis: Vec<Eni>,
    pub subnets: Vec<Subnet>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Apply EC2's token-bucket request rates.
    #[serde(default)]
    pub rate_limits: bool,
    /// Fraction of requests answered RequestLimitExceeded regardless of rates.
    #[serde(default)]
    pub throttle_fraction: f64,
    /// Fraction answered HTTP 500 InternalError.
    #[serde(default)]
    pub server_error_fraction: f64,
    /// Added to every answer.
    #[serde(default)]
    pub delay_ms: u64,
    /// Actions answered UnauthorizedOperation.
    #[serde(default)]
    pub deny: BTreeSet<String>,
    /// How long a reassigned IPv4 address takes to show on its new ENI.
    #[serde(default)]
    pub remap_delay_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    pub action: String,
    pub status: u16,
    pub code: Option<String>,
    pub eni: Option<String>,
    /// When the request arrived, in microseconds since the fake started.
    pub at_us: u64,
}

/// Addresses per ENI (IPv4 including the primary; IPv6 the same) by instance type.
pub fn addresses_per_eni(instance_type: &str) -> usize {
    match instance_type {
        "t3.medium" => 6,
        "m5.large" | "c5.large" | "r5.large" => 10,
        "m5.xlarge" | "c5.xlarge" => 15,
        "m5.24xlarge" | "c5.24xlarge" => 50,
        _ => 30,
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

struct Remap {
    ip: Ipv4Addr,
    to: String,
    visible_at: Instant,
}

struct Inner {
    world: World,
    faults: Faults,
    log: Vec<LogEntry>,
    started: Instant,
    mutating: Bucket,
    filtered: Bucket,
    unfiltered: Bucket,
    remaps: Vec<Remap>,
    rng: u64,
}

/// The fake; clone it to share between the server and the test.
#[derive(Clone)]
pub struct FakeEc2 {
    inner: Arc<Mutex<Inner>>,
}

struct Fail {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        status: StatusCode::BAD_REQUEST,
        code,
        message: message.into(),
    }
}

impl FakeEc2 {
    pub fn new(world: World) -> Self {
        FakeEc2 {
            inner: Arc::new(Mutex::new(Inner {
                world,
                faults: Faults::default(),
                log: Vec::new(),
                started: Instant::now(),
                // EC2's published defaults per account and Region.
                mutating: Bucket::new(100.0, 5.0),
                filtered: Bucket::new(100.0, 20.0),
                unfiltered: Bucket::new(50.0, 10.0),
                remaps: Vec::new(),
                rng: 0x9e37_79b9_7f4a_7c15,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Microseconds since the fake started: the clock of `LogEntry::at_us`.
    pub fn now_us(&self) -> u64 {
        self.lock().started.elapsed().as_micros() as u64
    }

    /// Replaces the account's resources (between benchmark runs).
    pub fn set_world(&self, world: World) {
        let mut inner = self.lock();
        inner.world = world;
        inner.remaps.clear();
    }

    /// Puts `ip` on ENI `eni` at once, taking it from any other ENI: what another pod's
    /// assignment does behind this one's back.
    pub fn move_address(&self, ip: IpAddr, eni: &str) {
        let mut inner = self.lock();
        inner.apply_remaps();
        for e in &mut inner.world.enis {
            match ip {
                IpAddr::V4(v4) => e.ipv4.retain(|x| *x != v4),
                IpAddr::V6(v6) => e.ipv6.retain(|x| *x != v6),
            }
            if e.id == eni {
                match ip {
                    IpAddr::V4(v4) => e.ipv4.push(v4),
                    IpAddr::V6(v6) => e.ipv6.push(v6),
                }
            }
        }
    }

    /// Takes `ip` off whichever ENI holds it, as an unassignment by someone else would.
    pub fn remove_address(&self, ip: IpAddr) {
        self.move_address(ip, "");
    }

    /// The world as a describe would show it now.
    pub fn world(&self) -> World {
        let mut inner = self.lock();
        inner.apply_remaps();
        inner.world.clone()
    }

    /// Which ENI holds an address now (as EC2 would describe it).
    pub fn holder(&self, ip: IpAddr) -> Option<String> {
        let world = self.world();
        world
            .enis
            .iter()
            .find(|e| match ip {
                IpAddr::V4(v4) => e.ipv4.contains(&v4),
                IpAddr::V6(v6) => e.ipv6.contains(&v6),
            })
            .map(|e| e.id.clone())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", post(handle))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 for any); returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::serve(self.router(), addr).await
    }
}

async fn handle(State(fake): State<FakeEc2>, body: Bytes) -> Response {
    let arrived = fake.now_us();
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let q = Query(params);
    let action = q.get("Action").unwrap_or_default().to_owned();
    let (delay, result) = {
        let mut inner = fake.lock();
        inner.apply_remaps();
        let delay = Duration::from_millis(inner.faults.delay_ms);
        (delay, inner.dispatch(&action, &q))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, code, body) = match result {
        Ok(body) => (StatusCode::OK, None, body),
        Err(f) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
                f.code,
                xml(&f.message),
                request_id()
            );
            (f.status, Some(f.code.to_owned()), body)
        }
    };
    {
        let mut inner = fake.lock();
        inner.log.push(LogEntry {
            action,
            status: status.as_u16(),
            code,
            eni: q.get("NetworkInterfaceId").map(str::to_owned),
            at_us: arrived,
        });
    }
    (status, [("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `Prefix.1`, `Prefix.2`, … in index order.
    fn list(&self, prefix: &str) -> Vec<String> {
        let mut items: Vec<(u32, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
                Some((n, v.clone()))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    fn filters(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Some(name) = self.get(&format!("Filter.{n}.Name")) else {
                break;
            };
            out.push((name.to_owned(), self.list(&format!("Filter.{n}.Value"))));
        }
        out
    }
}

impl Inner {
    fn random(&mut self) -> f64 {
        // xorshift: deterministic across runs, good enough for fault injection.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) as f64 / 1_000_000.0
    }

    fn apply_remaps(&mut self) {
        let now = Instant::now();
        let (due, pending): (Vec<Remap>, Vec<Remap>) =
            self.remaps.drain(..).partition(|r| r.visible_at <= now);
        self.remaps = pending;
        for r in due {
            for eni in &mut self.world.enis {
                eni.ipv4.retain(|ip| *ip != r.ip);
            }
            if let Some(eni) = self.world.enis.iter_mut().find(|e| e.id == r.to) {
                eni.ipv4.push(r.ip);
            }
        }
    }

    fn dispatch(&mut self, action: &str, q: &Query) -> Result<String, Fail> {
        if self.faults.deny.contains(action) {
            return Err(Fail {
                status: StatusCode::FORBIDDEN,
                code: "UnauthorizedOperation",
                message: "You are not authorized to perform this operation.".into(),
            });
        }
        let throttled = self.random() < self.faults.throttle_fraction
            || (self.faults.rate_limits && !self.take_token(action, q));
        if throttled {
            return Err(Fail {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "RequestLimitExceeded",
                message: "Request limit exceeded.".into(),
            });
        }
        if self.random() < self.faults.server_error_fraction {
            return Err(Fail {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "InternalError",
                message: "An internal error has occurred.".into(),
            });
        }
        let body = match action {
            "DescribeNetworkInterfaces" => self.describe_network_interfaces(q)?,
            "DescribeSubnets" => self.describe_subnets(q)?,
            "DescribeInstances" => self.describe_instances(q)?,
            "AssignPrivateIpAddresses" => self.assign_private(q)?,
            "UnassignPrivateIpAddresses" => self.unassign_private(q)?,
            "AssignIpv6Addresses" => self.assign_ipv6(q)?,
            "UnassignIpv6Addresses" => self.unassign_ipv6(q)?,
            other => {
                return Err(fail(
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                ));
            }
        };
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{XMLNS}\"><requestId>{}</requestId>{body}</{action}Response>",
            request_id()
        ))
    }

    fn take_token(&mut self, action: &str, q: &Query) -> bool {
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

    fn eni_index(&self, q: &Query) -> Result<usize, Fail> {
        let id = q.get("NetworkInterfaceId").ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter networkInterfaceId",
            )
        })?;
        self.world
            .enis
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| {
                fail(
                    "InvalidNetworkInterfaceID.NotFound",
                    format!("The networkInterface ID '{id}' does not exist"),
                )
            })
    }

    fn limit_of(&self, eni: &Eni) -> usize {
        let ty = eni
            .instance_id
            .as_ref()
            .and_then(|i| self.world.instances.iter().find(|x| x.id == *i))
            .map_or("m5.large", |i| i.instance_type.as_str());
        addresses_per_eni(ty)
    }

    fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.world.subnets.iter().find(|s| s.id == id)
    }

    fn describe_network_interfaces(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("NetworkInterfaceId");
        let filters = q.filters();
        let mut items = String::new();
        for eni in &self.world.enis {
            if !ids.is_empty() && !ids.contains(&eni.id) {
                continue;
            }
            let mut keep = true;
            for (name, values) in &filters {
                let matches = match name.as_str() {
                    "attachment.instance-id" => {
                        eni.instance_id.as_ref().is_some_and(|i| values.contains(i))
                    }
                    "attachment.device-index" => values.contains(&eni.device_index.to_string()),
                    "mac-address" => values.iter().any(|v| v.eq_ignore_ascii_case(&eni.mac)),
                    "subnet-id" => values.contains(&eni.subnet_id),
                    tag if tag.starts_with("tag:") => eni
                        .tags
                        .iter()
                        .any(|(k, v)| k == &tag[4..] && values.contains(v)),
                    "network-interface-id" => values.contains(&eni.id),
                    "addresses.private-ip-address" => {
                        eni.ipv4.iter().any(|ip| values.contains(&ip.to_string()))
                    }
                    "ipv6-addresses.ipv6-address" => eni.ipv6.iter().any(|ip| {
                        values
                            .iter()
                            .any(|v| v.parse::<Ipv6Addr>().is_ok_and(|x| x == *ip))
                    }),
                    other => {
                        return Err(fail(
                            "InvalidParameterValue",
                            format!("The filter '{other}' is invalid"),
                        ));
                    }
                };
                keep &= matches;
            }
            if keep {
                items.push_str(&eni_xml(eni));
            }
        }
        Ok(format!(
            "<networkInterfaceSet>{items}</networkInterfaceSet>"
        ))
    }

    fn describe_subnets(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("SubnetId");
        let mut items = String::new();
        for id in &ids {
            if self.subnet(id).is_none() {
                return Err(fail(
                    "InvalidSubnetID.NotFound",
                    format!("The subnet ID '{id}' does not exist"),
                ));
            }
        }
        for s in self
            .world
            .subnets
            .iter()
            .filter(|s| ids.is_empty() || ids.contains(&s.id))
        {
            let v6: String = s
                .ipv6
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "<item><ipv6CidrBlock>{n}</ipv6CidrBlock><associationId>subnet-cidr-assoc-{i}</associationId><ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item>"
                    )
                })
                .collect();
            items.push_str(&format!(
                "<item><subnetId>{}</subnetId><state>available</state><vpcId>vpc-0fake</vpcId><cidrBlock>{}</cidrBlock><ipv6CidrBlockAssociationSet>{v6}</ipv6CidrBlockAssociationSet><availableIpAddressCount>250</availableIpAddressCount><availabilityZone>us-west-2a</availabilityZone></item>",
                s.id, s.ipv4
            ));
        }
        Ok(format!("<subnetSet>{items}</subnetSet>"))
    }

    fn describe_instances(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("InstanceId");
        let filters = q.filters();
        let mut items = String::new();
        for i in &self.world.instances {
            if !ids.is_empty() && !ids.contains(&i.id) {
                continue;
            }
            let mut keep = true;
            for (name, values) in &filters {
                keep &= match name.as_str() {
                    "private-dns-name" => values.contains(&i.private_dns_name),
                    "instance-id" => values.contains(&i.id),
                    other => {
                        return Err(fail(
                            "InvalidParameterValue",
                            format!("The filter '{other}' is invalid"),
                        ));
                    }
                };
            }
            if keep {
                items.push_str(&format!(
                    "<item><reservationId>r-{0}</reservationId><ownerId>111122223333</ownerId><instancesSet><item><instanceId>{1}</instanceId><instanceType>{2}</instanceType><privateDnsName>{3}</privateDnsName><instanceState><code>16</code><name>running</name></instanceState></item></instancesSet></item>",
                    &i.id[2..], i.id, i.instance_type, i.private_dns_name
                ));
            }
        }
        Ok(format!("<reservationSet>{items}</reservationSet>"))
    }

    fn parse_v4(values: &[String]) -> Result<Vec<Ipv4Addr>, Fail> {
        values
            .iter()
            .map(|v| {
                v.parse().map_err(|_| {
                    fail(
                        "InvalidParameterValue",
                        format!("Invalid value '{v}' for PrivateIpAddresses"),
                    )
                })
            })
            .collect()
    }

    fn parse_v6(values: &[String]) -> Result<Vec<Ipv6Addr>, Fail> {
        values
            .iter()
            .map(|v| {
                v.parse().map_err(|_| {
                    fail(
                        "InvalidParameterValue",
                        format!("Invalid value '{v}' for Ipv6Addresses"),
                    )
                })
            })
            .collect()
    }

    fn assign_private(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips = Self::parse_v4(&q.list("PrivateIpAddress"))?;
        if ips.is_empty() {
            return Err(fail(
                "MissingParameter",
                "Either PrivateIpAddresses or SecondaryPrivateIpAddressCount must be given",
            ));
        }
        let allow = q.get("AllowReassignment") == Some("true");
        let eni = self.world.enis[idx].clone();
        let subnet = self.subnet(&eni.subnet_id).cloned();
        let mut new = Vec::new();
        for ip in &ips {
            if !subnet.as_ref().is_some_and(|s| s.ipv4.contains(ip)) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("Address {ip} does not fall within the subnet's address range"),
                ));
            }
            if eni.ipv4.contains(ip) || self.remaps.iter().any(|r| r.ip == *ip && r.to == eni.id) {
                continue;
            }
            if let Some(other) = self
                .world
                .enis
                .iter()
                .find(|e| e.id != eni.id && e.ipv4.contains(ip))
            {
                if other.ipv4.first() == Some(ip) {
                    return Err(fail(
                        "InvalidIPAddress.InUse",
                        format!(
                            "Address {ip} is in use as the primary address of {}",
                            other.id
                        ),
                    ));
                }
                if !allow {
                    return Err(fail(
                        "InvalidIPAddress.InUse",
                        format!("Address {ip} is in use."),
                    ));
                }
            }
            new.push(*ip);
        }
        if eni.ipv4.len() + new.len() > self.limit_of(&eni) {
            return Err(fail(
                "PrivateIpAddressLimitExceeded",
                "Number of private addresses will exceed limit.",
            ));
        }
        let delay = Duration::from_millis(self.faults.remap_delay_ms);
        for ip in &new {
            let moving = self
                .world
                .enis
                .iter()
                .any(|e| e.id != eni.id && e.ipv4.contains(ip));
            if moving && !delay.is_zero() {
                self.remaps.push(Remap {
                    ip: *ip,
                    to: eni.id.clone(),
                    visible_at: Instant::now() + delay,
                });
            } else {
                for other in &mut self.world.enis {
                    other.ipv4.retain(|x| x != ip);
                }
                self.world.enis[idx].ipv4.push(*ip);
            }
        }
        let assigned: String = ips
            .iter()
            .map(|ip| format!("<item><privateIpAddress>{ip}</privateIpAddress></item>"))
            .collect();
        Ok(format!(
            "<networkInterfaceId>{}</networkInterfaceId><assignedPrivateIpAddressesSet>{assigned}</assignedPrivateIpAddressesSet><return>true</return>",
            eni.id
        ))
    }

    fn unassign_private(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips = Self::parse_v4(&q.list("PrivateIpAddress"))?;
        let eni = &mut self.world.enis[idx];
        for ip in &ips {
            if eni.ipv4.first() == Some(ip) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("The primary address {ip} cannot be unassigned"),
                ));
            }
            if !eni.ipv4.contains(ip) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!(
                        "Some of the specified addresses are not assigned to interface {}",
                        eni.id
                    ),
                ));
            }
        }
        eni.ipv4.retain(|ip| !ips.contains(ip));
        Ok("<return>true</return>".into())
    }

    fn assign_ipv6(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips = Self::parse_v6(&q.list("Ipv6Addresses"))?;
        let eni = self.world.enis[idx].clone();
        let subnet = self.subnet(&eni.subnet_id).cloned();
        let mut new = Vec::new();
        for ip in &ips {
            if !subnet
                .as_ref()
                .is_some_and(|s| s.ipv6.iter().any(|n| n.contains(ip)))
            {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("Address {ip} does not fall within the subnet's IPv6 ranges"),
                ));
            }
            if eni.ipv6.contains(ip) {
                continue;
            }
            if self
                .world
                .enis
                .iter()
                .any(|e| e.id != eni.id && e.ipv6.contains(ip))
            {
                return Err(fail(
                    "InvalidIPAddress.InUse",
                    format!("Address {ip} is in use."),
                ));
            }
            new.push(*ip);
        }
        if eni.ipv6.len() + new.len() > self.limit_of(&eni) {
            return Err(fail(
                "Ipv6AddressLimitExceeded",
                "Number of IPv6 addresses will exceed limit.",
            ));
        }
        self.world.enis[idx].ipv6.extend(new);
        let assigned: String = ips.iter().map(|ip| format!("<item>{ip}</item>")).collect();
        Ok(format!(
            "<assignedIpv6Addresses>{assigned}</assignedIpv6Addresses><networkInterfaceId>{}</networkInterfaceId>",
            eni.id
        ))
    }

    fn unassign_ipv6(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips = Self::parse_v6(&q.list("Ipv6Addresses"))?;
        let eni = &mut self.world.enis[idx];
        if let Some(ip) = ips.iter().find(|ip| !eni.ipv6.contains(ip)) {
            return Err(fail(
                "InvalidParameterValue",
                format!("Address {ip} is not assigned to interface {}", eni.id),
            ));
        }
        eni.ipv6.retain(|ip| !ips.contains(ip));
        let items: String = ips.iter().map(|ip| format!("<item>{ip}</item>")).collect();
        Ok(format!(
            "<networkInterfaceId>{}</networkInterfaceId><unassignedIpv6Addresses>{items}</unassignedIpv6Addresses>",
            eni.id
        ))
    }
}

fn eni_xml(eni: &Eni) -> String {
    let primary = eni
        .ipv4
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let v4: String = eni
        .ipv4
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "<item><privateIpAddress>{ip}</privateIpAddress><primary>{}</primary></item>",
                i == 0
            )
        })
        .collect();
    let v6: String = eni
        .ipv6
        .iter()
        .map(|ip| {
            format!(
                "<item><ipv6Address>{ip}</ipv6Address><isPrimaryIpv6>false</isPrimaryIpv6></item>"
            )
        })
        .collect();
    let tags: String = eni
        .tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                xml(k),
                xml(v)
            )
        })
        .collect();
    let attachment = match &eni.instance_id {
        Some(i) => format!(
            "<attachment><attachmentId>eni-attach-{}</attachmentId><instanceId>{i}</instanceId><instanceOwnerId>111122223333</instanceOwnerId><deviceIndex>{}</deviceIndex><status>attached</status><deleteOnTermination>false</deleteOnTermination></attachment>",
            &eni.id[4..],
            eni.device_index
        ),
        None => String::new(),
    };
    format!(
        "<item><networkInterfaceId>{id}</networkInterfaceId><subnetId>{subnet_id}</subnetId><vpcId>vpc-0fake</vpcId><availabilityZone>us-west-2a</availabilityZone><ownerId>111122223333</ownerId><requesterManaged>false</requesterManaged><status>{status}</status><macAddress>{mac}</macAddress><privateIpAddress>{primary}</privateIpAddress><sourceDestCheck>true</sourceDestCheck><interfaceType>interface</interfaceType>{attachment}<privateIpAddressesSet>{v4}</privateIpAddressesSet><ipv6AddressesSet>{v6}</ipv6AddressesSet><tagSet>{tags}</tagSet></item>",
        id = eni.id,
        subnet_id = eni.subnet_id,
        status = if eni.instance_id.is_some() {
            "in-use"
        } else {
            "available"
        },
        mac = eni.mac,
    )
}
