//! The fake EC2 as a process of its own, for the whole-path run (`scripts/demo`, the
//! podman tests): containers reach it over the pods' `eth0`, as they would reach a VPC
//! endpoint. Beside the Query API on `POST /` it answers a few control requests, which
//! play the rest of the account and read the outcome:
//!
//!   GET  /_fake/world    the account's resources, as a describe would show them now
//!   PUT  /_fake/world    replace them, as a change made outside the test's callers
//!                        (an ENI attached by an operator, say)
//!   GET  /_fake/log      every EC2 request so far (action, status, error code, ENI)
//!   PUT  /_fake/faults   the faults to inject from now on (JSON `Faults`)
//!
//!   fake-vpc --world world.json [--iam-policy deploy/iam-policy.json] [--listen 0.0.0.0:0]
//!
//! Prints one JSON line with the bound address once it listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use clap::Parser;
use ipmgmt_tests::fake_ec2::iam::Policy;
use ipmgmt_tests::fake_ec2::{FakeEc2, Faults, World};

#[derive(Parser)]
#[command(about = "The fake EC2 endpoint of the whole-path run, with a control API")]
struct Cli {
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// The account's instances, ENIs and subnets (JSON, as `GET /_fake/world` answers).
    #[arg(long)]
    world: PathBuf,
    /// The caller's IAM policy (JSON), enforced on every request, as
    /// `deploy/iam-policy.json` would be on the manager's role.
    #[arg(long)]
    iam_policy: Option<PathBuf>,
    /// KEY=PATH: requests signed with access key id KEY are evaluated against the
    /// policy at PATH instead (one role per set of credentials). Repeatable.
    #[arg(long, value_name = "KEY=PATH")]
    iam_policy_for: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.world)
        .with_context(|| format!("reading {}", cli.world.display()))?;
    let world: World = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a world (JSON)", cli.world.display()))?;
    let fake = FakeEc2::new(world);
    if let Some(path) = &cli.iam_policy {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let policy: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        fake.set_policy(Some(Policy::parse(&policy)));
    }
    for pair in &cli.iam_policy_for {
        let (key, path) = pair
            .split_once('=')
            .with_context(|| format!("--iam-policy-for {pair:?} is not KEY=PATH"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let policy: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
        fake.set_policy_for(key, Policy::parse(&policy));
    }
    let control = Router::new()
        .route("/_fake/world", get(world_now).put(set_world))
        .route("/_fake/log", get(log))
        .route("/_fake/faults", put(set_faults))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let bound = listener.local_addr()?;
    println!("{}", serde_json::json!({ "listening": bound.to_string() }));
    axum::serve(listener, fake.router().merge(control)).await?;
    Ok(())
}

async fn world_now(State(fake): State<FakeEc2>) -> Response {
    json(&fake.world())
}

async fn set_world(State(fake): State<FakeEc2>, body: Bytes) -> Response {
    match serde_json::from_slice::<World>(&body) {
        Ok(world) => {
            fake.set_world(world);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("not a world: {e}\n")).into_response(),
    }
}

async fn log(State(fake): State<FakeEc2>) -> Response {
    json(&fake.log())
}

async fn set_faults(State(fake): State<FakeEc2>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            fake.set_faults(faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("not a Faults document: {e}\n"),
        )
            .into_response(),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("the fake's state serializes");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
