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

impl RefusalReason {
    const ALL: [RefusalReason; 4] = [
        RefusalReason::TooLarge,
        RefusalReason::Timeout,
        RefusalReason::Busy,
        RefusalReason::Aborted,
    ];
}

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
mod tests {
    use ipmgmt_common::metrics::LabelValue;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::{Frame, SizeHint};

    use super::*;

    /// A client's body: chunks, then a stall or an error or the end.
    struct Client {
        chunks: VecDeque<Bytes>,
        then: Then,
        announced: Option<u64>,
    }

    enum Then {
        End,
        Stall,
        Reset,
    }

    impl Body for Client {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match self.then {
                Then::End => Poll::Ready(None),
                Then::Stall => Poll::Pending,
                Then::Reset => Poll::Ready(Some(Err(std::io::ErrorKind::ConnectionReset.into()))),
            }
        }

        fn size_hint(&self) -> SizeHint {
            self.announced
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    /// Chunks of these sizes, then `then`; no Content-Length.
    fn client(sizes: &[usize], then: Then) -> Client {
        Client {
            chunks: sizes.iter().map(|&n| Bytes::from(vec![b' '; n])).collect(),
            then,
            announced: None,
        }
    }

    fn announcing(announced: usize, sizes: &[usize], then: Then) -> Client {
        Client {
            announced: Some(announced as u64),
            ..client(sizes, then)
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A reader of `budget` blocks, for bodies of at most two.
    fn reader(budget: usize) -> (Reader, Registry) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let reader = Reader::with_limit(budget * BLOCK, TIMEOUT, 2 * BLOCK, metrics);
        (reader, registry)
    }

    /// Blocks free in the budget.
    fn free(reader: &Reader) -> f64 {
        reader.room.available_permits() as f64 / BLOCK as f64
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn chunks_are_joined_and_their_room_held_until_dropped() {
        let (reader, registry) = reader(4);
        let held = reader
            .read(client(&[3, 0, BLOCK], Then::End))
            .await
            .unwrap();
        assert_eq!(held.len(), BLOCK + 3);
        let line = format!("request_body_buffered_bytes {}", 2 * BLOCK);
        assert!(text(&registry).contains(&line), "{line}");
        assert_eq!(free(&reader), 2.0);
        drop(held);
        assert_eq!(free(&reader), 4.0);
        assert!(text(&registry).contains("request_body_buffered_bytes 0"));
    }

    #[tokio::test]
    async fn the_room_taken_is_what_is_allocated_never_what_is_announced() {
        let (reader, _registry) = reader(4);
        // In chunks, a body is copied into whole blocks.
        let held = reader
            .read(announcing(BLOCK + 1, &[BLOCK, 1], Then::End))
            .await
            .unwrap();
        assert_eq!((held.len(), free(&reader)), (BLOCK + 1, 2.0));
        drop(held);
        // A slow client that announced two blocks and sent a byte holds one block.
        let slow = reader.read(announcing(2 * BLOCK, &[1], Then::Stall));
        tokio::pin!(slow);
        assert!(pending_after_one_poll(slow.as_mut()).await);
        assert_eq!(free(&reader), 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whole_in_one_chunk_waits_for_no_room() {
        let (full_reader, _registry) = reader(2);
        let full = full_reader.read(client(&[BLOCK, BLOCK - 1], Then::Stall));
        tokio::pin!(full);
        assert!(pending_after_one_poll(full.as_mut()).await);
        assert_eq!(free(&full_reader), 0.0);
        // With no room left, a body that came whole is answered as it came...
        let held = full_reader
            .read(announcing(100, &[100], Then::End))
            .await
            .unwrap();
        assert_eq!(held.len(), 100);
        drop(held);
        // ...and one in chunks waits for room.
        let refused = full_reader.read(client(&[1], Then::End)).await.unwrap_err();
        assert!(matches!(refused, Refused::Busy(_)), "{refused}");
        // Whole, and its client slow to end the stream: answered without the end.
        let (reader, _registry) = reader(2);
        let held = reader.read(announcing(6, &[6], Then::Stall)).await.unwrap();
        assert_eq!((held.len(), free(&reader)), (6, 2.0));
    }

    /// Polls once: true while pending.
    async fn pending_after_one_poll<F: std::future::Future>(f: Pin<&mut F>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(|cx| Poll::Ready(f.take().unwrap().poll(cx).is_pending())).await
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_and_its_room_given_back() {
        let (reader, registry) = reader(4);
        let over = client(&[BLOCK, BLOCK, 1], Then::Stall);
        let refused = reader.read(over).await.unwrap_err();
        assert!(matches!(refused, Refused::TooLarge { .. }), "{refused}");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(free(&reader), 4.0);
        assert!(text(&registry).contains("requests_refused_total{reason=\"too_large\"} 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_refused_at_the_deadline_and_its_room_given_back() {
        let (reader, registry) = reader(4);
        let started = Instant::now();
        let refused = reader.read(client(&[3], Then::Stall)).await.unwrap_err();
        assert!(matches!(refused, Refused::Timeout(_)), "{refused}");
        assert_eq!(refused.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(free(&reader), 4.0);
        let text = text(&registry);
        assert!(
            text.contains("requests_refused_total{reason=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("request_body_buffered_bytes 0"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_holds_only_what_it_sent() {
        let (reader, _registry) = reader(2);
        let slow = reader.read(announcing(2 * BLOCK, &[1], Then::Stall));
        tokio::pin!(slow);
        // The slow client holds one block of two: a whole body still gets through.
        tokio::select! {
            biased;
            _ = &mut slow => panic!("a stalled body finished"),
            held = reader.read(announcing(BLOCK, &[BLOCK], Then::End)) => {
                assert_eq!(held.unwrap().len(), BLOCK);
            }
        }
        assert_eq!(free(&reader), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_then_is_refused_as_busy() {
        let (reader, registry) = reader(2);
        let first = reader
            .read(client(&[BLOCK, BLOCK], Then::End))
            .await
            .unwrap();
        // Room comes back in time: the second body waits, then is read.
        let freed = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(reader.read(client(&[1], Then::End)), freed);
        let second = second.unwrap();
        // It does not: refused at the deadline as busy, not as the client's timeout.
        let started = Instant::now();
        let refused = reader
            .read(client(&[BLOCK, 1], Then::End))
            .await
            .unwrap_err();
        assert!(matches!(refused, Refused::Busy(_)), "{refused}");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), TIMEOUT);
        drop(second);
        assert_eq!(free(&reader), 2.0);
        assert!(text(&registry).contains("requests_refused_total{reason=\"busy\"} 1"));
    }

    #[tokio::test]
    async fn a_broken_body_is_aborted() {
        let (reader, registry) = reader(4);
        let refused = reader.read(client(&[2], Then::Reset)).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(
            refused
                .to_string()
                .contains("failed to read the request body"),
            "{refused}"
        );
        assert_eq!(free(&reader), 4.0);
        assert!(text(&registry).contains("requests_refused_total{reason=\"aborted\"} 1"));
    }

    #[test]
    #[should_panic(expected = "cannot hold one body")]
    fn a_budget_smaller_than_one_body_is_a_bug() {
        let _ = reader(1);
    }

    #[test]
    fn every_reason_is_listed_and_named_as_its_label() {
        let mut registry = Registry::default();
        let _ = Metrics::register(&mut registry);
        let text = text(&registry);
        for reason in RefusalReason::ALL {
            let line = format!("requests_refused_total{{reason=\"{}\"}} 0", reason.label());
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
