//! A fake IMDSv2: session tokens with their TTL header (which moto's stub lacks, and
//! the Rust IMDS client needs), the instance identity, and the `macs/` tree. And a
//! black hole that accepts connections and never answers, as IMDS looks from a pod
//! when the hop limit is 1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

#[derive(Clone, Debug)]
pub struct Interface {
    pub mac: String,
    pub eni_id: String,
    pub subnet_id: String,
    pub device_number: i32,
    pub subnet_cidr: String,
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    pub interfaces: Vec<Interface>,
}

/// How often a fake IMDS was asked: requests it answered, or connections a black
/// hole took.
pub type Asked = Arc<AtomicUsize>;

#[derive(Clone)]
pub struct FakeImds {
    identity: Arc<Identity>,
    tokens: Arc<Mutex<Vec<String>>>,
    asked: Asked,
}

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

impl FakeImds {
    pub fn new(identity: Identity) -> Self {
        FakeImds {
            identity: Arc::new(identity),
            tokens: Arc::default(),
            asked: Asked::default(),
        }
    }

    pub fn asked(&self) -> Asked {
        self.asked.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/{*path}", get(metadata))
            .with_state(self.clone())
    }

    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::serve(self.router(), addr).await
    }

    /// Accepts connections and never answers.
    pub async fn black_hole(addr: SocketAddr) -> std::io::Result<(SocketAddr, Asked)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let asked = Asked::default();
        let counted = asked.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                held.push(conn);
            }
        });
        Ok((bound, asked))
    }
}

async fn token(State(imds): State<FakeImds>, headers: HeaderMap) -> Response {
    imds.asked.fetch_add(1, Ordering::Relaxed);
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut tokens = imds.tokens.lock().unwrap_or_else(|p| p.into_inner());
    let token = format!("AQAEAfake-token-{}", tokens.len() + 1);
    tokens.push(token.clone());
    ([(TTL_HEADER, ttl.to_string())], token).into_response()
}

async fn metadata(
    State(imds): State<FakeImds>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    imds.asked.fetch_add(1, Ordering::Relaxed);
    let presented = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let valid = presented.is_some_and(|t| {
        imds.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|x| x == t)
    });
    if !valid {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let id = &imds.identity;
    let body = match path.trim_end_matches('/') {
        "meta-data/instance-id" => id.instance_id.clone(),
        "meta-data/instance-type" => id.instance_type.clone(),
        "meta-data/placement/region" => id.region.clone(),
        "meta-data/placement/availability-zone" => id.availability_zone.clone(),
        "meta-data/mac" => id
            .interfaces
            .iter()
            .find(|i| i.device_number == 0)
            .map(|i| i.mac.clone())
            .unwrap_or_default(),
        "meta-data/network/interfaces/macs" => id
            .interfaces
            .iter()
            .map(|i| format!("{}/", i.mac))
            .collect::<Vec<_>>()
            .join("\n"),
        "dynamic/instance-identity/document" => serde_json::json!({
            "accountId": "111122223333",
            "architecture": "x86_64",
            "availabilityZone": id.availability_zone,
            "instanceId": id.instance_id,
            "instanceType": id.instance_type,
            "region": id.region,
        })
        .to_string(),
        other => {
            let Some(rest) = other.strip_prefix("meta-data/network/interfaces/macs/") else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let Some((mac, field)) = rest.split_once('/') else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let Some(iface) = id.interfaces.iter().find(|i| i.mac == mac) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            match field {
                "interface-id" => iface.eni_id.clone(),
                "subnet-id" => iface.subnet_id.clone(),
                "device-number" => iface.device_number.to_string(),
                "subnet-ipv4-cidr-block" => iface.subnet_cidr.clone(),
                _ => return StatusCode::NOT_FOUND.into_response(),
            }
        }
    };
    body.into_response()
}
