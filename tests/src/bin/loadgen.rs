//! Load generator for the webhook: HTTPS keep-alive connections POSTing one
//! AdmissionReview over and over, either as fast as the server answers or at a fixed
//! total rate (open loop: latency counts from when a request was due, so a stalled
//! server cannot hide its queueing). Optionally samples a process's RSS meanwhile.
//!
//!   loadgen certs --out DIR
//!   loadgen run --ca DIR/ca.pem --body review.json [--rate 1000] [--watch-pid PID]

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
    /// Write a CA (ca.pem) and a serving pair for localhost (tls.crt, tls.key) to DIR.
    Certs {
        #[arg(long)]
        out: PathBuf,
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
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Cli::parse().command {
        Command::Certs { out } => certs(&out),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

fn certs(out: &std::path::Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    std::fs::create_dir_all(out)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&key, &issuer)?;
    std::fs::write(out.join("ca.pem"), ca.pem())?;
    std::fs::write(out.join("tls.crt"), leaf.pem())?;
    std::fs::write(out.join("tls.key"), key.serialize_pem())?;
    Ok(())
}

struct Report {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&args.ca).with_context(|| args.ca.display().to_string())?
    {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
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

    let rss = args
        .watch_pid
        .map(|pid| tokio::spawn(sample_rss(pid, measure_to)));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let connector = connector.clone();
        let (addr, path, body) = (args.addr.clone(), args.path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            connection(
                connector,
                addr,
                path,
                body,
                start,
                measure_from,
                measure_to,
                per_conn_interval,
            )
            .await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let report = t.await??;
        latencies.extend(report.latencies_us);
        errors += report.errors;
    }
    latencies.sort_unstable();
    let n = latencies.len();
    if n == 0 {
        bail!("no request completed ({errors} errors)");
    }
    let pct = |p: f64| latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
    println!(
        "requests={n} errors={errors} seconds={} rate={:.0}/s connections={} target_rate={}",
        args.seconds,
        n as f64 / measure.as_secs_f64(),
        args.connections,
        args.rate.map_or("max".into(), |r| format!("{r}/s")),
    );
    println!(
        "latency_ms p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        latencies[n - 1] as f64 / 1000.0
    );
    if let Some(rss) = rss {
        let (max_kib, last_kib) = rss.await?;
        println!(
            "server_rss_mib max={:.1} end={:.1}",
            max_kib as f64 / 1024.0,
            last_kib as f64 / 1024.0
        );
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    connector: TlsConnector,
    addr: String,
    path: String,
    body: Bytes,
    start: Instant,
    measure_from: Instant,
    measure_to: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<Report> {
    let tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut report = Report {
        latencies_us: Vec::new(),
        errors: 0,
    };
    // Spread the connections' schedules so a fixed rate is not sent in bursts.
    let mut due = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(rand_fraction()));
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
        let req = http::Request::post(&path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        sender.ready().await?;
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let bytes = resp.into_body().collect().await?.to_bytes();
                status == 200 && contains(&bytes, br#""allowed":true"#)
            }
            Err(_) => false,
        };
        if due >= measure_from {
            if ok {
                report
                    .latencies_us
                    .push(sent_from.elapsed().as_micros().min(u32::MAX as u128) as u32);
            } else {
                report.errors += 1;
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

/// (max, last) VmRSS in KiB until `until`.
async fn sample_rss(pid: u32, until: Instant) -> (u64, u64) {
    let (mut max, mut last) = (0, 0);
    while Instant::now() < until {
        if let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        {
            last = kib;
            max = max.max(kib);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (max, last)
}
