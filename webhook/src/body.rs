//! Reading a review's body within bounds, so that no client can make a replica hold
//! more than its memory limit: a size per request (`BODY_LIMIT`, 413), a deadline
//! (`--body-read-timeout-seconds` from the headers, 408), and one budget of bytes held
//! across all requests (`--body-buffer-mib`); a request that finds no room waits for it
//! within the same deadline, then gets 503.
//!
//! The budget counts bytes held, not reviews in flight. A count small enough to bound
//! memory (count × 3 MiB) is filled by a handful of clients that announce a large body
//! and then send it a byte at a time, and every review waits behind them until their
//! deadline; a count large enough for the apiserver's bursts bounds nothing. Room is
//! taken as the body arrives, never for the announced Content-Length, so a slow client
//! is charged what it sent (in blocks of 16 KiB, `Whole`): holding the budget takes
//! sending it, once per deadline. Only the chunk in hand while waiting for room is
//! outside the budget (at most a read buffer or an HTTP/2 flow-control window, see
//! `server`).
//!
//! Why wait for room rather than refuse at once: the apiserver retries no webhook call,
//! its failurePolicy decides (Fail: the pod is rejected). A typical review is a few KiB,
//! so room comes back within milliseconds of a burst, while a refusal fails a pod.
//! Waiting costs no memory: the rest of the body stays unread in the client's socket or
//! flow-control window. Past the deadline the apiserver has given up anyway.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Body;
use ipmgmt_common::label_values;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

/// The apiserver sends at most 3 MiB; the review wrapped around a pod adds a little.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024 + 64 * 1024;

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the request body is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?} of its headers")]
    Timeout(Duration),
    #[error(
        "no room to buffer the request body within {0:?}: this replica holds --body-buffer-mib of bodies already"
    )]
    Busy(Duration),
    #[error("failed to read the request body: {0}")]
    Aborted(Box<dyn Error + Send + Sync>),
}

impl Refused {
    /// The answer's status. hyper closes an HTTP/1 connection after it, the body being
    /// unread, and resets an HTTP/2 stream.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refused::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Aborted(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(&self) -> RefusalReason {
        match self {
            Refused::TooLarge { .. } => RefusalReason::TooLarge,
            Refused::Timeout(_) => RefusalReason::Timeout,
            Refused::Busy(_) => RefusalReason::Busy,
            Refused::Aborted(_) => RefusalReason::Aborted,
        }
    }
}

/// The `reason` label of `requests_refused_total`, as written.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    TooLarge,
    Timeout,
    Busy,
    Aborted,
}

label_values!(RefusalReason {
    TooLarge => "too_large",
    Timeout => "timeout",
    Busy => "busy",
    Aborted => "aborted",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
}

/// The body metric families.
#[derive(Clone, Debug)]
pub struct Metrics {
    refused: Family<RefusalLabels, Counter>,
    buffered: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            refused: Family::default(),
            buffered: Gauge::default(),
        };
        registry.register(
            "requests_refused",
            "Requests answered without their body being read whole, by reason",
            metrics.refused.clone(),
        );
        for reason in RefusalReason::ALL {
            let _ = metrics.refused.get_or_create(&RefusalLabels { reason });
        }
        registry.register(
            "request_body_buffered_bytes",
            "Bytes of request bodies held now, out of --body-buffer-mib",
            metrics.buffered.clone(),
        );
        metrics
    }

    fn refused(&self, reason: RefusalReason) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}

/// Reads bodies within the bounds; one per server, shared by every request.
#[derive(Debug)]
pub struct Reader {
    room: Arc<Semaphore>,
    timeout: Duration,
    limit: usize,
    metrics: Metrics,
}

impl Reader {
    /// `budget` bytes held at once across requests, each body within `timeout` of the
    /// call. `budget` must hold one body of `BODY_LIMIT`, or that body could never be
    /// read; the flag's minimum sees to it.
    pub fn new(budget: usize, timeout: Duration, metrics: Metrics) -> Self {
        Self::with_limit(budget, timeout, BODY_LIMIT, metrics)
    }

    fn with_limit(budget: usize, timeout: Duration, limit: usize, metrics: Metrics) -> Self {
        assert!(
            budget >= limit,
            "a body budget of {budget} bytes cannot hold one body of {limit}"
        );
        Reader {
            room: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            timeout,
            limit,
            metrics,
        }
    }

    /// The whole body, holding its share of the budget until dropped; a refusal is
    /// counted by reason.
    pub async fn read<B>(&self, body: B) -> Result<Held, Refused>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        let read = self.read_by(body, Instant::now() + self.timeout).await;
        if let Err(refused) = &read {
            self.metrics.refused(refused.reason());
        }
        read
    }

    async fn read_by<B>(&self, body: B, deadline: Instant) -> Result<Held, Refused>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        // Content-Length, which HTTP/1 and HTTP/2 both check the body against.
        let announced = body.size_hint().exact();
        let mut body = std::pin::pin!(body);
        let mut room = Room {
            permit: None,
            gauge: self.metrics.buffered.clone(),
        };
        let mut whole = Whole::Empty;
        loop {
            // All that Content-Length announced is here: the end of the stream, or
            // trailers, would add nothing, and a client slow to send them (an HTTP/2
            // stream may end with a frame of its own) would make a whole body wait.
            if announced == Some(whole.len() as u64) {
                break;
            }
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(Refused::Timeout(self.timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Refused::Aborted(e.into())),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry nothing a review needs.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            // Not refused by its Content-Length before it is read: an HTTP/1 client
            // still sending when the connection closes sees a reset, not the 413.
            if whole.len() + data.len() > self.limit {
                return Err(Refused::TooLarge { limit: self.limit });
            }
            if !whole.keeps(&data, announced) {
                let blocks = (whole.len() + data.len()).div_ceil(BLOCK) * BLOCK;
                self.charge(&mut room, blocks, deadline).await?;
            }
            whole.push(data, announced);
        }
        let bytes = whole.into_bytes();
        Ok(Held { bytes, _room: room })
    }

    /// Takes room until `room` holds `allocated` bytes, waiting within `deadline`.
    async fn charge(
        &self,
        room: &mut Room,
        allocated: usize,
        deadline: Instant,
    ) -> Result<(), Refused> {
        let held = room.permit.as_ref().map_or(0, |p| p.num_permits());
        let Some(more) = allocated.checked_sub(held).filter(|&more| more > 0) else {
            return Ok(());
        };
        let more = u32::try_from(more).expect("within the body limit");
        match timeout_at(deadline, self.room.clone().acquire_many_owned(more)).await {
            Ok(Ok(permit)) => room.take(permit),
            // Never closed; and a deadline passed waiting here is the budget's.
            Ok(Err(_)) | Err(_) => return Err(Refused::Busy(self.timeout)),
        }
        Ok(())
    }
}

/// A body as it arrives. A chunk from hyper is a slice of the connection's read buffer
/// and keeps all of that buffer allocated (HTTP/1 reads up to 64 KiB, into which a TLS
/// record of 16 KiB may land), so holding chunks while the rest of a slow body comes
/// would cost a multiple of what they hold. A body is copied into blocks of its own
/// instead, and each chunk freed at once; except a body that came whole in one chunk
/// (most reviews; over HTTP/2, those up to 16 KiB), which is answered at once and waits
/// for no room: it costs no more than the read buffer it is in, and only while the
/// review runs. The blocks are joined once the body is whole.
///
/// The budget is charged the blocks allocated, not the bytes in them: memory the
/// allocator hands out again may be resident already. Blocks of one size, never
/// allocated ahead of the data (not for an announced length that may never come), are
/// what the allocator reuses best: growing one buffer by doubling, through a size
/// class per step, left twice the budget allocated under the slow-client test.
#[derive(Debug)]
enum Whole {
    Empty,
    Kept(Bytes),
    Blocks { blocks: Vec<Vec<u8>>, len: usize },
}

/// The copy's unit: a TLS record's plaintext, and an HTTP/2 DATA frame's.
const BLOCK: usize = 16 * 1024;

impl Whole {
    fn len(&self) -> usize {
        match self {
            Whole::Empty => 0,
            Whole::Kept(bytes) => bytes.len(),
            Whole::Blocks { len, .. } => *len,
        }
    }

    /// Whether `data` is a whole body, kept as it came.
    fn keeps(&self, data: &Bytes, announced: Option<u64>) -> bool {
        matches!(self, Whole::Empty) && announced == Some(data.len() as u64)
    }

    fn push(&mut self, data: Bytes, announced: Option<u64>) {
        if self.keeps(&data, announced) {
            *self = Whole::Kept(data);
            return;
        }
        let (mut blocks, len) = match std::mem::replace(self, Whole::Empty) {
            Whole::Empty => (Vec::new(), 0),
            Whole::Kept(kept) => (copied(Vec::new(), &kept), kept.len()),
            Whole::Blocks { blocks, len } => (blocks, len),
        };
        blocks = copied(blocks, &data);
        *self = Whole::Blocks {
            blocks,
            len: len + data.len(),
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Whole::Empty => Bytes::new(),
            Whole::Kept(bytes) => bytes,
            Whole::Blocks { mut blocks, .. } if blocks.len() == 1 => blocks.remove(0).into(),
            // Joined while the review runs, then freed: at most a copy per worker thread.
            Whole::Blocks { blocks, len } => {
                let mut whole = Vec::with_capacity(len);
                for block in blocks {
                    whole.extend_from_slice(&block);
                }
                whole.into()
            }
        }
    }
}

/// `blocks` with `data` copied after what they hold, in new blocks where full.
fn copied(mut blocks: Vec<Vec<u8>>, mut data: &[u8]) -> Vec<Vec<u8>> {
    while !data.is_empty() {
        if blocks.last().is_none_or(|block| block.len() == BLOCK) {
            blocks.push(Vec::with_capacity(BLOCK));
        }
        let block = blocks.last_mut().expect("pushed above");
        let n = data.len().min(BLOCK - block.len());
        block.extend_from_slice(&data[..n]);
        data = &data[n..];
    }
    blocks
}

/// A body read whole, and the room it takes until dropped.
#[derive(Debug)]
pub struct Held {
    bytes: Bytes,
    _room: Room,
}

impl std::ops::Deref for Held {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// One request's share of the budget, shown in the gauge while held.
#[derive(Debug)]
struct Room {
    permit: Option<OwnedSemaphorePermit>,
    gauge: Gauge,
}

impl Room {
    fn take(&mut self, more: OwnedSemaphorePermit) {
        self.gauge.inc_by(more.num_permits() as i64);
        match &mut self.permit {
            Some(held) => held.merge(more),
            None => self.permit = Some(more),
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(held) = &self.permit {
            self.gauge.dec_by(held.num_permits() as i64);
        }
    }
}

#[cfg(test)]
mod tests;
