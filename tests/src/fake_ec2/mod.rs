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
//! - One VPC, `vpc-0fake`, holding every subnet: DescribeVpcs answers its associated
//!   CIDR blocks (`World::vpc_cidrs`, or each subnet's own when none are given).
//! - GetSubnetCidrReservations: one subnet's reservations (`World::reservations`),
//!   IPv4 and IPv6 in their own sets, filtered by `reservationType`.
//! - CreateSubnetCidrReservation: `prefix` or `explicit`, a CIDR written as its network
//!   address, inside one of the subnet's CIDRs and overlapping none of its
//!   reservations; else `InvalidParameterValue` (AWS documents the rules, not the
//!   codes).
//! - CreateNetworkInterface: an `available` ENI with the tags asked for
//!   (`TagSpecification`, which IAM checks as `ec2:CreateTags` with
//!   `ec2:CreateAction`) and a primary address outside the subnet's explicit
//!   reservations; a `ClientToken` seen before answers the ENI it made. AttachNetworkInterface: an `available` ENI only
//!   (`InvalidNetworkInterface.InUse`), a free device index, at most the instance
//!   type's interfaces (`AttachmentLimitExceeded`). ModifyNetworkInterfaceAttribute:
//!   the attachment's DeleteOnTermination. DeleteNetworkInterface: only an
//!   unattached ENI (`InvalidNetworkInterface.InUse`).
//! - Elastic IPs (DescribeAddresses, AssociateAddress, DisassociateAddress): one
//!   association per EIP, with an ENI's private address (its primary when none is
//!   named, else one it holds: `InvalidParameterValue`); an associated EIP moves only
//!   with `AllowReassociation` (`Resource.AlreadyAssociated`). A secondary address
//!   reassigned to another ENI takes its EIP along; unassigned, it loses it.
//! - Route tables (DescribeRouteTables, CreateRoute, ReplaceRoute, DeleteRoute):
//!   routes to an ENI or a gateway, one per destination (`RouteAlreadyExists`,
//!   `InvalidRoute.NotFound`); a route to an ENI that is gone or detached reads
//!   `blackhole`; IAM authorizes a route by its table only. An ENI's
//!   source/destination check (on by default) is shown and set by
//!   ModifyNetworkInterfaceAttribute.
//! - DescribeNetworkInterfaces shows each ENI's tags (the VPC CNI's `no_manage` tag
//!   among them) and its attachment's device index (0 is the instance's primary ENI).
//! - Throttling by token buckets at EC2's published rates, per category.
//! - Injected faults: denied actions (`UnauthorizedOperation`), random throttling and
//!   5xx, added latency. Every request is logged for tests to count.
//!
//! - With an IAM policy set (`set_policy`), requests it does not allow are answered
//!   `UnauthorizedOperation`, as EC2 answers them; one per access key
//!   (`policies_by_key`) stands for several roles.
//! - `DryRun=true`: once the caller is authorized, `DryRunOperation` (HTTP 412), and
//!   nothing is read or changed, as EC2 answers a dry run.
//! - STS's AssumeRoleWithWebIdentity answers on the same endpoint, for IRSA
//!   (`AWS_ENDPOINT_URL_STS`); a token reading `expired` is refused.
//!
//! Parts: `query` (the request's parameters), `actions` (the semantics), `throttle`
//! (EC2's token buckets), `iam` (the caller's policy), `xml` (answers and errors).

mod actions;
pub mod iam;
mod query;
mod sts;
mod throttle;
mod xml;

pub use throttle::{Rate, Rates};

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

use query::Query;
use throttle::Buckets;

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
    /// The ENI's primary IPv6 address (one of `ipv6`), set where the subnet has
    /// `EnablePrimaryIpv6`: EC2 refuses to unassign it while the ENI is attached.
    #[serde(default)]
    pub primary_ipv6: Option<Ipv6Addr>,
    /// Key, value.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    /// Whether terminating the instance deletes the ENI (its attachment's
    /// DeleteOnTermination).
    #[serde(default)]
    pub delete_on_termination: bool,
    /// EC2 drops traffic for addresses the ENI does not hold while this is on (the
    /// default); a route-table VIP needs it off.
    #[serde(default = "on")]
    pub source_dest_check: bool,
}

fn on() -> bool {
    true
}

/// An Elastic IP of the account, and the private address it is associated with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ElasticIp {
    pub allocation_id: String,
    pub public_ip: Ipv4Addr,
    #[serde(default)]
    pub association: Option<EipAssociation>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipAssociation {
    pub association_id: String,
    pub eni: String,
    pub private_ip: Ipv4Addr,
}

/// A route table of the VPC and its routes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: String,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

/// A route to an ENI, or to a gateway (`local`, `igw-…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: ipnet::IpNet,
    #[serde(default)]
    pub eni: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

/// The tag that keeps the VPC CNI away from an ENI.
pub const NO_MANAGE: (&str, &str) = ("node.k8s.amazonaws.com/no_manage", "true");

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub ipv4: Ipv4Net,
    #[serde(default)]
    pub ipv6: Vec<Ipv6Net>,
    /// Key, value.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

/// The account's resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct World {
    pub instances: Vec<Instance>,
    pub enis: Vec<Eni>,
    pub subnets: Vec<Subnet>,
    /// The VPC's CIDR blocks, primary and secondary; empty: the subnets' own.
    #[serde(default)]
    pub vpc_cidrs: Vec<ipnet::IpNet>,
    /// Subnet CIDR reservations, which keep EC2's own choice of addresses (the VPC
    /// CNI's, for one) out of a subnet's range.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// Elastic IPs allocated in the account.
    #[serde(default)]
    pub addresses: Vec<ElasticIp>,
    #[serde(default)]
    pub route_tables: Vec<RouteTable>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reservation {
    pub subnet: String,
    pub cidr: ipnet::IpNet,
    /// `explicit`, or `prefix` (kept for prefix delegation).
    pub kind: String,
    #[serde(default)]
    pub description: String,
}

/// The fake's one VPC.
pub const VPC_ID: &str = "vpc-0fake";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Apply EC2's token-bucket request rates.
    #[serde(default)]
    pub rate_limits: bool,
    /// The buckets' rates when `rate_limits` is on; EC2's published ones when unset.
    /// Setting faults starts the buckets full.
    #[serde(default)]
    pub rates: Option<Rates>,
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
    /// The next this many answers are broken this way (counted from when the faults are
    /// set).
    #[serde(default)]
    pub broken: Option<Broken>,
    #[serde(default)]
    pub broken_count: u32,
}

/// Answers that go wrong on the way, as networks and proxies break them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Broken {
    /// The action is carried out, then the connection drops halfway through the
    /// answer.
    Reset,
    /// The action is carried out, and the answer comes this many milliseconds late
    /// (past the SDK's attempt timeout, when long enough).
    Slow(u64),
    /// HTTP 500 with an HTML page, as a proxy or a broken endpoint answers; the action
    /// is not carried out.
    HtmlError,
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
    buckets: Buckets,
    policy: Option<iam::Policy>,
    /// Policies by the caller's access key id, over `policy` (one role each).
    policies_by_key: std::collections::HashMap<String, iam::Policy>,
    /// Answers still to break.
    broken_left: u32,
    remaps: Vec<Remap>,
    rng: u64,
    /// ENIs created so far, for their ids.
    created: u64,
    /// CreateNetworkInterface's client tokens, and the ENI each made.
    tokens: std::collections::BTreeMap<String, String>,
}

/// What the fake does with a request that has just arrived, as a test's hook decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Carry it out as EC2 would.
    Proceed,
    /// Answer RequestLimitExceeded without acting.
    Throttle,
}

/// Called with each request's action and ENI (if it names one) as the request
/// arrives, before the fake acts on it: a test changes the cluster at exactly that
/// moment, or throttles that one call.
pub type Hook = Arc<dyn Fn(&str, Option<&str>) -> Arrival + Send + Sync>;

/// The fake; clone it to share between the server and the test.
#[derive(Clone)]
pub struct FakeEc2 {
    inner: Arc<Mutex<Inner>>,
    hook: Arc<Mutex<Option<Hook>>>,
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
                buckets: Buckets::new(Rates::default()),
                policy: None,
                policies_by_key: std::collections::HashMap::new(),
                broken_left: 0,
                remaps: Vec::new(),
                rng: 0x9e37_79b9_7f4a_7c15,
                created: 0,
                tokens: Default::default(),
            })),
            hook: Arc::default(),
        }
    }

    /// Sets (or with `None` clears) the hook every request meets as it arrives.
    pub fn on_arrival(&self, hook: Option<Hook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evaluates every request against this identity-based policy from now on.
    pub fn set_policy(&self, policy: Option<iam::Policy>) {
        self.lock().policy = policy;
    }

    /// Evaluates the requests signed with `access_key` against `policy` instead: one
    /// role's credentials, one role's policy.
    pub fn set_policy_for(&self, access_key: &str, policy: iam::Policy) {
        self.lock()
            .policies_by_key
            .insert(access_key.to_owned(), policy);
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.broken_left = faults.broken_count;
        inner.buckets = Buckets::new(faults.rates.unwrap_or_default());
        inner.faults = faults;
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

    /// Logs one request as it was answered.
    fn record(
        &self,
        action: String,
        status: StatusCode,
        code: Option<String>,
        q: &Query,
        at_us: u64,
    ) {
        self.lock().log.push(LogEntry {
            action,
            status: status.as_u16(),
            code,
            eni: q.get("NetworkInterfaceId").map(str::to_owned),
            at_us,
        });
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

/// The access key id a SigV4 request was signed with (`Credential=AKID/…`).
fn access_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_owned())
}

async fn handle(
    State(fake): State<FakeEc2>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = fake.now_us();
    let caller = access_key(&headers);
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let q = Query(params);
    let action = q.get("Action").unwrap_or_default().to_owned();
    if action == "AssumeRoleWithWebIdentity" {
        let id = request_id();
        let (status, code, body) = match sts::assume_role_with_web_identity(&q, &id) {
            Ok(body) => (StatusCode::OK, None, body),
            Err(f) => (
                f.status,
                Some(f.code.to_owned()),
                sts::error(f.code, &f.message, &id),
            ),
        };
        fake.record(action, status, code, &q, arrived);
        return (status, [("content-type", "text/xml")], body).into_response();
    }
    let hook = fake.hook.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(hook) = hook
        && hook(&action, q.get("NetworkInterfaceId")) == Arrival::Throttle
    {
        let f = throttled();
        fake.record(action, f.status, Some(f.code.to_owned()), &q, arrived);
        let body = xml::error(f.code, &f.message, &request_id());
        return (f.status, [("content-type", "text/xml;charset=UTF-8")], body).into_response();
    }
    let broken = {
        let mut inner = fake.lock();
        let broken = inner.faults.broken.filter(|_| inner.broken_left > 0);
        inner.broken_left = inner
            .broken_left
            .saturating_sub(u32::from(broken.is_some()));
        broken
    };
    if broken == Some(Broken::HtmlError) {
        fake.record(action, StatusCode::INTERNAL_SERVER_ERROR, None, &q, arrived);
        let page = "<html><head><title>500 Internal Server Error</title></head>\
                    <body><h1>Internal Server Error</h1></body></html>";
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/html")],
            page,
        )
            .into_response();
    }
    let (delay, result) = {
        let mut inner = fake.lock();
        inner.apply_remaps();
        let delay = Duration::from_millis(inner.faults.delay_ms);
        (delay, inner.dispatch(&action, &q, caller.as_deref()))
    };
    let delay = match broken {
        Some(Broken::Slow(ms)) => delay + Duration::from_millis(ms),
        _ => delay,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, code, body) = match result {
        Ok(body) => (StatusCode::OK, None, body),
        Err(f) => {
            let body = xml::error(f.code, &f.message, &request_id());
            (f.status, Some(f.code.to_owned()), body)
        }
    };
    fake.record(action, status, code, &q, arrived);
    if broken == Some(Broken::Reset) {
        // Half the answer, then the connection fails under it.
        let half = Bytes::from(body[..body.len() / 2].to_owned());
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by the fake",
            )),
        ];
        let cut = axum::body::Body::from_stream(futures::stream::iter(chunks));
        return (status, [("content-type", "text/xml;charset=UTF-8")], cut).into_response();
    }
    (status, [("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

fn throttled() -> Fail {
    Fail {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "RequestLimitExceeded",
        message: "Request limit exceeded.".into(),
    }
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
