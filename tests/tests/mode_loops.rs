//! Init and sidecar mode in-process, without root: the real loops of `ipmgr::run`
//! with the production SDK client against the fake EC2, and the pod's addresses from
//! a fake behind `discover::Addresses` that sends the events netlink would send. The
//! namespace tests (`pod_netns.rs`) run the same loops as a process over real netlink.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{Credentials, Region};
use clap::Parser;
use ipmgmt_tests::fake_ec2::{Broken, FakeEc2, Faults, Rate, Rates};
use ipmgmt_tests::scenario::{self, MAC_N3};
use ipmgr::aws::{self, Attempts};
use ipmgr::config::{Args, Cli};
use ipmgr::discover::{Addresses, Changes, DiscoverError, Snapshot};
use ipmgr::ec2::{Ec2, SdkEc2};
use ipmgr::eni::Local;
use ipmgr::run::{self, Stop};
use tokio::sync::mpsc;

const NODE: &str = "ip-10-0-0-10.us-west-2.compute.internal";

/// The pod's side: what its interfaces hold, changed as a CNI plugin or HA software
/// would change them.
#[derive(Clone)]
struct Pod {
    now: Arc<Mutex<Vec<Local>>>,
    events: mpsc::UnboundedSender<BTreeSet<IpAddr>>,
}

impl Pod {
    fn new(addresses: &[&str]) -> (Pod, FakeAddresses) {
        let now = Arc::new(Mutex::new(addresses.iter().map(|a| net1(a)).collect()));
        let (events, rx) = mpsc::unbounded_channel();
        (
            Pod {
                now: now.clone(),
                events,
            },
            FakeAddresses { now, events: rx },
        )
    }

    fn del(&self, ip: &str) {
        let ip: IpAddr = ip.parse().unwrap();
        self.now.lock().unwrap().retain(|l| l.ip != ip);
        self.events.send(BTreeSet::new()).unwrap();
    }

    fn add(&self, ip: &str) {
        self.now.lock().unwrap().push(net1(ip));
        self.events.send([ip.parse().unwrap()].into()).unwrap();
    }

    /// An address event that changes nothing ipmgr manages (a link-local address,
    /// DAD finishing).
    fn noise(&self) {
        self.events.send(BTreeSet::new()).unwrap();
    }
}

fn net1(ip: &str) -> Local {
    Local {
        ip: ip.parse().unwrap(),
        iface: "net1".into(),
        mac: MAC_N3.into(),
    }
}

struct FakeAddresses {
    now: Arc<Mutex<Vec<Local>>>,
    events: mpsc::UnboundedReceiver<BTreeSet<IpAddr>>,
}

impl Addresses for FakeAddresses {
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, DiscoverError>> + Send {
        let mut addresses = self.now.lock().unwrap().clone();
        addresses.sort();
        let snapshot = Snapshot {
            addresses,
            interfaces: vec!["eth0".into(), "net1".into()],
        };
        async move { Ok(snapshot) }
    }

    async fn changed(&mut self, quiet: Duration) -> Option<Changes> {
        let mut changes = Changes::default();
        let mut take = |added: BTreeSet<IpAddr>| {
            changes.events += 1;
            changes.added.extend(added);
        };
        take(self.events.recv().await?);
        loop {
            match tokio::time::timeout(quiet, self.events.recv()).await {
                Ok(Some(added)) => take(added),
                Ok(None) => return None,
                Err(_) => return Some(changes),
            }
        }
    }
}

/// The fake EC2 with the shared scenario, and the client as production builds it.
async fn ec2() -> (FakeEc2, SdkEc2, Attempts) {
    let fake = FakeEc2::new(scenario::world());
    let addr = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let sdk = aws::loader(aws::Retries {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
    })
    .region(Region::new("us-west-2"))
    .endpoint_url(format!("http://{addr}"))
    .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
    .load()
    .await;
    let attempts = Attempts::default();
    let client = SdkEc2::new(aws::ec2_client(&sdk, &attempts));
    (fake, client, attempts)
}

/// The settings as ipmgr parses them, with the pod's files in `dir`, and `extra`.
fn args(mode: &str, dir: &Path, extra: &[&str]) -> Args {
    let ready = dir.join("ready");
    let log = dir.join("termination-log");
    let mut argv = vec![
        "ipmgr",
        mode,
        "--node-name",
        NODE,
        "--ready-file",
        ready.to_str().unwrap(),
        "--termination-log",
        log.to_str().unwrap(),
    ];
    argv.extend(extra);
    Cli::try_parse_from(argv).expect("flags parse").settings
}

/// `GET /metrics` from the sidecar, as a scraper sees it.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn holder(fake: &FakeEc2, ip: &str) -> Option<String> {
    fake.holder(ip.parse().unwrap())
}

/// Waits (polling the fake) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The log's length once no request has arrived for 200 ms.
async fn quiet_log(fake: &FakeEc2) -> usize {
    let mut len = fake.log().len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = fake.log().len();
        if now == len {
            return len;
        }
        len = now;
    }
}

#[tokio::test]
async fn init_assigns_the_pods_addresses_and_returns() {
    let dir = tempfile_dir("init");
    let (fake, ec2, attempts) = ec2().await;
    let (_pod, addresses) = Pod::new(&["10.0.1.50"]);
    run::init(ec2, addresses, &args("init", &dir, &[]), &attempts)
        .await
        .expect("init succeeds");
    assert_eq!(holder(&fake, "10.0.1.50").as_deref(), Some("eni-1n3"));
}

#[tokio::test]
async fn sidecar_follows_a_floating_ip_ignores_noise_and_releases_what_it_holds() {
    let dir = tempfile_dir("sidecar");
    let (fake, ec2, attempts) = ec2().await;
    let (pod, addresses) = Pod::new(&["10.0.1.50"]);
    let (stop_tx, stop) = Stop::new();
    let metrics_at = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let settings = args("sidecar", &dir, &["--metrics-listen", &metrics_at]);
    let ready = settings.ready_file.clone();
    let task = tokio::spawn(async move {
        let result = run::sidecar(
            ec2,
            addresses,
            &settings,
            &attempts,
            stop,
            Default::default(),
        )
        .await;
        result.map_err(|e| e.to_string())
    });

    eventually("the pod's address on its ENI, and ready", || {
        holder(&fake, "10.0.1.50").as_deref() == Some("eni-1n3") && ready.exists()
    })
    .await;
    // The floating IP node 2 held appears in this pod: it moves here, for three calls:
    // who holds it (a Multus ENI of this cluster, so it may be taken), the assignment
    // and its confirmation (the ENIs are those the last pass left).
    assert_eq!(holder(&fake, "10.0.1.99").as_deref(), Some("eni-2n3"));
    let settled = quiet_log(&fake).await;
    pod.add("10.0.1.99");
    eventually("the floating IP on this node's ENI", || {
        holder(&fake, "10.0.1.99").as_deref() == Some("eni-1n3")
    })
    .await;
    let end = quiet_log(&fake).await;
    let followed: Vec<String> = fake.log()[settled..end]
        .iter()
        .map(|e| e.action.clone())
        .collect();
    assert_eq!(
        followed,
        [
            "DescribeNetworkInterfaces",
            "AssignPrivateIpAddresses",
            "DescribeNetworkInterfaces"
        ],
        "EC2 calls for one followed change"
    );

    // Node 2 takes the VIP back behind this pod's back; when the pod takes it again,
    // it is assigned here again, although the ENIs the last pass left show it here.
    fake.move_address("10.0.1.99".parse().unwrap(), "eni-2n3");
    pod.del("10.0.1.99");
    pod.add("10.0.1.99");
    eventually("the floating IP back on this node's ENI", || {
        holder(&fake, "10.0.1.99").as_deref() == Some("eni-1n3")
    })
    .await;

    // Events that change no managed address cost no EC2 call, once the pass that
    // moved the address (its confirming describe included) is over.
    let before = quiet_log(&fake).await;
    pod.noise();
    pod.noise();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.log().len(), before, "{:?}", &fake.log()[before..]);

    // What was done shows in the metrics: three assignments (the pod's address at
    // start, the VIP, the VIP again), every pass complete, two addresses assigned.
    // Each also under its name from before 0.2 (`ipmgr_*`), with the same value.
    let metrics = scrape(&metrics_at).await;
    for line in [
        "ec2_attempts_total{action=\"AssignPrivateIpAddresses\",result=\"ok\"} 3",
        "passes_total{trigger=\"start\",result=\"complete\"} 1",
        "passes_total{trigger=\"events\",result=\"complete\"} ",
        "addresses{state=\"assigned\"} 2",
        "addresses{state=\"unassigned\"} 0",
    ] {
        for name in ["ipmgmt_manager_", "ipmgr_"] {
            let line = format!("\n{name}{line}");
            assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
        }
    }
    assert!(
        metrics.contains("# HELP ipmgr_passes Deprecated: the same as ipmgmt_manager_passes_total"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"incomplete\""), "{metrics}");
    // The README's metric table names exactly the families served.
    let served: BTreeSet<String> = (metrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !name.starts_with("ipmgr_"))
        .map(str::to_owned)
        .collect();
    let documented: BTreeSet<String> = (include_str!("../../README.md").lines())
        .filter_map(|l| l.trim_start().strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("ipmgmt_manager_"))
        // Served once a pod has floating addresses (tests/tests/floating_pair.rs).
        .filter(|name| {
            *name == "ipmgmt_manager_floating_holding"
                || !name.starts_with("ipmgmt_manager_floating_")
        })
        .map(|name| name.trim_end_matches("_total").to_owned())
        .collect();
    assert_eq!(
        documented, served,
        "README's ipmgr metric table against /metrics"
    );

    let released = stop_sidecar(&fake, stop_tx, task).await;
    assert_eq!(holder(&fake, "10.0.1.50"), None, "released on stop");
    assert_eq!(holder(&fake, "10.0.1.99"), None, "released on stop");
    assert_eq!(
        released,
        ["UnassignPrivateIpAddresses 200"],
        "one unassign for the ENI, from the ENIs the last pass left"
    );
    assert!(!ready.exists(), "not ready once stopping");
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ipmgmt-loops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// init against answers that break on the way: it converges within its deadline, or
/// fails with one line and an error, and never hangs or exits 0 with an address
/// unassigned.
async fn init_through(
    broken: Broken,
    count: u32,
    extra: &[&str],
) -> (Result<(), String>, FakeEc2, Duration) {
    let dir = tempfile_dir(&format!("broken-{broken:?}-{count}"));
    let (fake, ec2, attempts) = ec2().await;
    fake.set_faults(Faults {
        broken: Some(broken),
        broken_count: count,
        ..Faults::default()
    });
    let (_pod, addresses) = Pod::new(&["10.0.1.50"]);
    let started = std::time::Instant::now();
    let settings = args("init", &dir, extra);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        run::init(ec2, addresses, &settings, &attempts),
    )
    .await
    .expect("init ends within its deadline")
    .map_err(|e| e.to_string());
    (result, fake, started.elapsed())
}

#[tokio::test]
async fn init_converges_through_connections_reset_mid_answer() {
    let (result, fake, _) = init_through(Broken::Reset, 2, &[]).await;
    assert_eq!(result, Ok(()));
    assert_eq!(holder(&fake, "10.0.1.50").as_deref(), Some("eni-1n3"));
    // The first call (the ENIs by the interface's MAC, which name the instance) was
    // cut off twice and retried by the SDK.
    let first: Vec<String> = fake
        .log()
        .iter()
        .take(3)
        .map(|e| e.action.clone())
        .collect();
    assert_eq!(first, ["DescribeNetworkInterfaces"; 3], "{:?}", fake.log());
}

#[tokio::test]
async fn init_converges_through_html_error_pages() {
    let (result, fake, _) = init_through(Broken::HtmlError, 2, &[]).await;
    assert_eq!(result, Ok(()));
    assert_eq!(holder(&fake, "10.0.1.50").as_deref(), Some("eni-1n3"));
    assert!(fake.log().iter().filter(|e| e.status == 500).count() == 2);
}

#[tokio::test]
async fn init_retries_an_answer_slower_than_the_attempt_timeout() {
    // The SDK gives an attempt 5 s (aws::loader); this answer takes 6.
    let (result, fake, took) = init_through(Broken::Slow(6_000), 1, &[]).await;
    assert_eq!(result, Ok(()));
    assert_eq!(holder(&fake, "10.0.1.50").as_deref(), Some("eni-1n3"));
    assert!(took >= Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn init_gives_up_at_its_deadline_with_one_line_when_ec2_never_answers_in_time() {
    let (result, fake, took) =
        init_through(Broken::Slow(60_000), 1_000, &["--deadline-seconds", "3"]).await;
    let line = result.expect_err("init fails");
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("not assigned within 3s") && line.contains("had no answer from EC2 after"),
        "{line}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the deadline holds: {took:?}"
    );
    assert_eq!(holder(&fake, "10.0.1.50"), None);
}

#[tokio::test]
async fn init_tries_a_throttled_assign_again_without_describing_again() {
    let dir = tempfile_dir("throttled-assign");
    let (fake, ec2, attempts) = ec2().await;
    // One Assign token, refilled at 2 a second: the token goes to another caller in the
    // account, so the pod's first pass is throttled past the SDK's 3 attempts.
    fake.set_faults(Faults {
        rate_limits: true,
        rates: Some(Rates {
            mutating: Rate {
                burst: 1.0,
                per_second: 2.0,
            },
            ..Rates::default()
        }),
        ..Faults::default()
    });
    ec2.assign_ipv4("eni-1n3", &["10.0.1.77".parse().unwrap()], true)
        .await
        .expect("the other caller's assign takes the token");
    let before = fake.log().len();

    let (_pod, addresses) = Pod::new(&["10.0.1.50"]);
    run::init(ec2, addresses, &args("init", &dir, &[]), &attempts)
        .await
        .expect("init succeeds once a token comes");
    assert_eq!(holder(&fake, "10.0.1.50").as_deref(), Some("eni-1n3"));

    let log = fake.log();
    let calls: Vec<(&str, u16)> = log[before..]
        .iter()
        .map(|e| (e.action.as_str(), e.status))
        .collect();
    let assigns: Vec<usize> = (calls.iter().enumerate())
        .filter(|(_, c)| c.0 == "AssignPrivateIpAddresses")
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (assigns[0], assigns[assigns.len() - 1]);
    assert!(
        calls[..first]
            .iter()
            .all(|c| c.0 == "DescribeNetworkInterfaces"),
        "{calls:?}"
    );
    assert!(
        (calls[first..last].iter()).filter(|c| c.1 == 503).count() >= 3,
        "the first pass was throttled past the SDK's attempts: {calls:?}"
    );
    assert!(
        calls[first..=last]
            .iter()
            .all(|c| c.0 == "AssignPrivateIpAddresses"),
        "a throttled pass is tried again from the ENIs it saw, with no describe between: {calls:?}"
    );
    assert_eq!(
        calls[last + 1..],
        [("DescribeNetworkInterfaces", 200)],
        "one confirmation: {calls:?}"
    );
}

#[tokio::test]
async fn sidecar_releases_what_ec2_still_shows_when_a_floating_ip_moved_behind_its_back() {
    let dir = tempfile_dir("stale-release");
    let (fake, ec2, attempts) = ec2().await;
    let (pod, addresses) = Pod::new(&["10.0.1.50"]);
    let (stop_tx, stop) = Stop::new();
    let settings = args("sidecar", &dir, &[]);
    let task = tokio::spawn(async move {
        let result = run::sidecar(
            ec2,
            addresses,
            &settings,
            &attempts,
            stop,
            Default::default(),
        )
        .await;
        result.map_err(|e| e.to_string())
    });
    pod.add("10.0.1.99");
    eventually("both addresses on this node's ENI", || {
        holder(&fake, "10.0.1.50").as_deref() == Some("eni-1n3")
            && holder(&fake, "10.0.1.99").as_deref() == Some("eni-1n3")
    })
    .await;
    quiet_log(&fake).await;

    // Node 2 takes the VIP in EC2 while this pod still has it (a split brain): the
    // ENIs this sidecar remembers are stale, and its unassign of both is refused.
    fake.move_address("10.0.1.99".parse().unwrap(), "eni-2n3");
    let released = stop_sidecar(&fake, stop_tx, task).await;
    assert_eq!(holder(&fake, "10.0.1.50"), None, "released on stop");
    assert_eq!(
        holder(&fake, "10.0.1.99").as_deref(),
        Some("eni-2n3"),
        "node 2 keeps the VIP"
    );
    assert_eq!(
        released,
        [
            "UnassignPrivateIpAddresses 400",
            "DescribeNetworkInterfaces 200",
            "UnassignPrivateIpAddresses 200",
        ]
    );
}

/// Stops the sidecar as SIGTERM would, checks it exits 0, and returns the calls its
/// release made, as `Action status`.
async fn stop_sidecar(
    fake: &FakeEc2,
    stop_tx: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
) -> Vec<String> {
    let stopping = fake.log().len();
    stop_tx.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the sidecar stops")
        .unwrap();
    assert_eq!(result, Ok(()));
    (fake.log()[stopping..].iter())
        .map(|e| format!("{} {}", e.action, e.status))
        .collect()
}
