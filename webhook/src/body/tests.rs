//! Tests of `body`.

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
