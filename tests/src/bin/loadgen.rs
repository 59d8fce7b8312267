//! Load generator for the webhook: HTTPS keep-alive connections POSTing one
//! AdmissionReview over and over, either as fast as the server answers or at a fixed
//! total rate (open loop: latency counts from when a request was due, so a stalled
//! server cannot hide its queueing). Optionally samples a process's RSS meanwhile,
//! reports percentiles per window of reviews, and reconnects every so often to see
//! which certificate new connections are served (a soak across renewals).
//!
//!   loadgen certs --out DIR [--renewals N]
//!   loadgen run --ca DIR/ca.pem --body review.json [--rate 1000] [--watch-pid PID]
//!               [--window 100000] [--reconnect-seconds 5]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "HTTPS load generator for ipmgmt-webhook")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a CA (ca.pem) and a serving pair for localhost (tls.crt, tls.key) to DIR,
    /// and N more pairs from the same CA (DIR/renewal-1 … DIR/renewal-N).
    Certs {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        renewals: usize,
    },
    /// Send reviews and report throughput, latency percentiles and errors.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "127.0.0.1:8443")]
    addr: String,
    #[arg(long, default_value = "/mutate")]
    path: String,
    /// CA that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The request body: an AdmissionReview JSON file (scripts/bench-webhook writes
    /// one with the tests' envelope, `webhook_harness.review_of`).
    #[arg(long)]
    body: PathBuf,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Worker threads of the load generator (the server shares the machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Total requests per second across connections; unset: as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Sample this process's resident memory during the run.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Also report percentiles per this many reviews (by the time they were due;
    /// needs --rate).
    #[arg(long, requires = "rate")]
    window: Option<u64>,
    /// Open a new TLS connection this often, and report the serial of every server
    /// certificate a new connection was served.
    #[arg(long)]
    reconnect_seconds: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Cli::parse().command {
        Command::Certs { out, renewals } => certs(&out, renewals),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

/// ECDSA P-256 keys (rcgen's default), as cert-manager issues them for the chart.
fn certs(out: &std::path::Path, renewals: usize) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    std::fs::create_dir_all(out)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // rcgen's default subject is the same for every certificate: OpenSSL (curl) would
    // take a leaf whose issuer is its own subject for self-signed.
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ipmgmt loadgen CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    std::fs::write(out.join("ca.pem"), ca.pem())?;
    for n in 0..=renewals {
        let dir = match n {
            0 => out.to_owned(),
            n => out.join(format!("renewal-{n}")),
        };
        std::fs::create_dir_all(&dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join("tls.crt"), leaf.pem())?;
        std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    latencies_us: Vec<u32>,
    /// The window of each latency, when windows are asked for.
    windows: Vec<u32>,
    errors: u64,
    /// (seconds into the run, serial) of each new connection.
    served: Vec<(f64, String)>,
}

/// Timing of one connection's requests.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    measure_to: Instant,
    interval: Option<Duration>,
    reconnect: Option<Duration>,
    /// Reviews per window and the total rate, to put a due time in its window.
    window: Option<(u64, u64)>,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&args.ca).with_context(|| args.ca.display().to_string())?
    {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // No session resumption, as the apiserver's client keeps no session cache: every
    // new connection makes a full handshake and is served the current certificate
    // (a resumed one would report the certificate of the session it resumed).
    tls.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(tls));
    let body =
        Bytes::from(std::fs::read(&args.body).with_context(|| args.body.display().to_string())?);

    let warmup = Duration::from_secs(args.warmup);
    let measure = Duration::from_secs(args.seconds);
    let start = Instant::now() + Duration::from_millis(200);
    let (measure_from, measure_to) = (start + warmup, start + warmup + measure);
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1) as f64));

    let schedule = Schedule {
        start,
        measure_from,
        measure_to,
        interval: per_conn_interval,
        reconnect: args.reconnect_seconds.map(Duration::from_secs_f64),
        window: args.window.zip(args.rate),
    };

    let rss = args
        .watch_pid
        .map(|pid| tokio::spawn(sample_rss(pid, measure_from, measure_to)));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let connector = connector.clone();
        let (addr, path, body) = (args.addr.clone(), args.path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            connection(connector, addr, path, body, schedule).await
        }));
    }
    let mut all = Report::default();
    for t in tasks {
        let report = t.await??;
        all.latencies_us.extend(report.latencies_us);
        all.windows.extend(report.windows);
        all.errors += report.errors;
        all.served.extend(report.served);
    }
    let errors = all.errors;
    let rss = match rss {
        Some(task) => task.await?,
        None => Vec::new(),
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    if let Some((size, rate)) = schedule.window {
        let mut by_window = std::collections::BTreeMap::<u32, Vec<u32>>::new();
        for (w, l) in all.windows.iter().zip(&all.latencies_us) {
            by_window.entry(*w).or_default().push(*l);
        }
        for (w, mut l) in by_window {
            l.sort_unstable();
            let (p50, p99, max) = (pct(&l, 0.50), pct(&l, 0.99), l[l.len() - 1] as f64 / 1000.0);
            // The server's RSS when the window's last review was due.
            let end = measure_from
                + Duration::from_secs_f64((u64::from(w) + 1) as f64 * size as f64 / rate as f64);
            let rss_then = rss
                .iter()
                .take_while(|(at, _)| *at <= end)
                .last()
                .map_or(0.0, |s| mib(s.1));
            println!(
                "window={} reviews={}-{} count={} latency_ms p50={p50:.3} p99={p99:.3} max={max:.3} server_rss_mib={rss_then:.1}",
                w + 1,
                u64::from(w) * size + 1,
                u64::from(w + 1) * size,
                l.len()
            );
        }
    }
    if schedule.reconnect.is_some() {
        // Each serial once, from the first connection that was served it.
        all.served.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut seen: Vec<(f64, String, usize)> = Vec::new();
        for (at, serial) in all.served {
            match seen.iter_mut().find(|s| s.1 == serial) {
                Some(s) => s.2 += 1,
                None => seen.push((at, serial, 1)),
            }
        }
        for (at, serial, connections) in seen {
            println!(
                "certificate serial={serial} first_served_s={at:.1} connections={connections}"
            );
        }
    }
    let mut latencies = all.latencies_us;
    latencies.sort_unstable();
    let n = latencies.len();
    if n == 0 {
        bail!("no request completed ({errors} errors)");
    }
    let all_pct = |p: f64| pct(&latencies, p);
    println!(
        "requests={n} errors={errors} seconds={} rate={:.0}/s connections={} target_rate={}",
        args.seconds,
        n as f64 / measure.as_secs_f64(),
        args.connections,
        args.rate.map_or("max".into(), |r| format!("{r}/s")),
    );
    println!(
        "latency_ms p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}",
        all_pct(0.50),
        all_pct(0.90),
        all_pct(0.99),
        all_pct(0.999),
        latencies[n - 1] as f64 / 1000.0
    );
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        let max = rss.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "server_rss_mib start={:.1} max={:.1} end={:.1}",
            mib(first.1),
            mib(max),
            mib(last.1)
        );
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

/// The `p` quantile of sorted microseconds, in milliseconds.
fn pct(sorted_us: &[u32], p: f64) -> f64 {
    let n = sorted_us.len();
    sorted_us[((n as f64 * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A new keep-alive connection, and the serial of the certificate it was served.
async fn connect(connector: &TlsConnector, addr: &str) -> anyhow::Result<(Sender, String)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
        .map_or_else(|| "?".into(), |(_, cert)| cert.raw_serial_as_string());
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok((sender, serial))
}

async fn connection(
    connector: TlsConnector,
    addr: String,
    path: String,
    body: Bytes,
    schedule: Schedule,
) -> anyhow::Result<Report> {
    let Schedule {
        start,
        measure_from,
        measure_to,
        interval,
        reconnect,
        window,
    } = schedule;
    let (mut sender, serial) = connect(&connector, &addr).await?;
    let mut report = Report::default();
    report.served.push((0.0, serial));
    // Spread the connections' schedules so a fixed rate is not sent in bursts, and
    // their reconnections likewise.
    let mut due = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(rand_fraction()));
    let mut reconnect_at = reconnect.map(|r| start + r.mul_f64(rand_fraction()));
    tokio::time::sleep_until(start.into()).await;
    loop {
        // Latency counts from when the request was due, so queueing behind a slow
        // answer is measured. When the connection sat idle until then, it counts from
        // the wake-up instead: tokio's timer wheel ticks in milliseconds, and that
        // lateness is the client's, not the server's.
        let mut sent_from = Instant::now();
        if interval.is_some() {
            if sent_from < due {
                tokio::time::sleep_until(due.into()).await;
                sent_from = Instant::now();
            } else {
                sent_from = due;
            }
        } else {
            due = sent_from;
        }
        if due >= measure_to {
            break;
        }
        // A new connection, as the apiserver opens them: its handshake counts in
        // the latency of its first request.
        let mut failed_connect = false;
        if let (Some(at), Some(every)) = (reconnect_at, reconnect)
            && sent_from >= at
        {
            reconnect_at = Some(at + every);
            match connect(&connector, &addr).await {
                Ok((new, serial)) => {
                    sender = new;
                    report
                        .served
                        .push(((Instant::now() - start).as_secs_f64(), serial));
                }
                Err(_) => failed_connect = true,
            }
        }
        let req = http::Request::post(&path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        let ok = !failed_connect
            && match sender.ready().await {
                Err(_) => false,
                Ok(()) => match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let bytes = resp.into_body().collect().await?.to_bytes();
                        status == 200 && contains(&bytes, br#""allowed":true"#)
                    }
                    Err(_) => false,
                },
            };
        if due >= measure_from {
            if ok {
                report
                    .latencies_us
                    .push(sent_from.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if let Some((size, rate)) = window {
                    let nth = (due - measure_from).as_secs_f64() * rate as f64;
                    report.windows.push((nth as u64 / size.max(1)) as u32);
                }
            } else {
                report.errors += 1;
            }
        }
        if !ok {
            // The connection may be gone; the next request gets a new one.
            match connect(&connector, &addr).await {
                Ok((new, serial)) => {
                    sender = new;
                    report
                        .served
                        .push(((Instant::now() - start).as_secs_f64(), serial));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        if let Some(i) = interval {
            due += i;
        }
    }
    Ok(report)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) % 1000) as f64 / 1000.0
}

/// VmRSS in KiB every 100 ms from `from` until `until`, with when it was read.
async fn sample_rss(pid: u32, from: Instant, until: Instant) -> Vec<(Instant, u64)> {
    let mut samples = Vec::new();
    tokio::time::sleep_until(from.into()).await;
    while Instant::now() < until {
        if let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        {
            samples.push((Instant::now(), kib));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples
}
