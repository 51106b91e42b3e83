//! A request body that must keep arriving: after a grace period (`serve --body-timeout`) its
//! bytes must average at least [`MIN_BYTES_PER_SECOND`], or reading it fails with
//! [`BodyTooSlow`], which the routes answer with 408 `request_timeout`. This is the rule of
//! Apache's `mod_reqtimeout` (`body=30,MinRate=1000`): a client trickling a byte every few
//! seconds cannot hold a connection (and its place under `--max-connections`) for long, while a
//! large upload over a slow link gets more time with each kilobyte it sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The least average rate of a body past its grace period, in bytes a second.
pub const MIN_BYTES_PER_SECOND: u64 = 1000;

/// Reading a request body failed: it arrived slower than [`MIN_BYTES_PER_SECOND`] after the
/// grace period.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body arrived too slowly: under {MIN_BYTES_PER_SECOND} bytes a second after the first {}s (serve --body-timeout)",
    .grace.as_secs_f64()
)]
pub struct BodyTooSlow {
    /// The grace period.
    pub grace: Duration,
}

/// The [`BodyTooSlow`] in `err`'s chain of sources (reading a body wraps it), if any.
pub fn too_slow<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooSlow> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(slow) = err.downcast_ref::<BodyTooSlow>() {
            return Some(slow);
        }
        source = err.source();
    }
    None
}

/// A request body with a deadline that each received byte pushes back by a thousandth of a
/// second. When it passes, the body fails with [`BodyTooSlow`] and `timed_out` is set, so that
/// the connection can close at once rather than drain the rest.
pub struct SlowBodyGuard<B> {
    inner: B,
    grace: Duration,
    start: Instant,
    received: u64,
    /// Armed only once the body has had to wait: most bodies arrive with their headers, and
    /// never touch the timer wheel.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl<B> SlowBodyGuard<B> {
    /// Guards `inner`, starting its grace period now.
    pub fn new(inner: B, grace: Duration, timed_out: Arc<AtomicBool>) -> Self {
        SlowBodyGuard {
            inner,
            grace,
            start: Instant::now(),
            received: 0,
            sleep: None,
            timed_out,
        }
    }

    /// The deadline after `received` bytes (far off rather than past the clock's range, for
    /// a huge `--body-timeout`).
    fn deadline(&self) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / MIN_BYTES_PER_SECOND as f64);
        deadline_after(self.start, self.grace.saturating_add(earned))
    }
}

/// `start + wait`, or a century from `start` when that is past what an `Instant` can hold.
fn deadline_after(start: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    start
        .checked_add(wait.min(CENTURY))
        .unwrap_or_else(|| start + Duration::from_secs(3600))
}

impl<B> Body for SlowBodyGuard<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    let deadline = self.deadline();
                    if let Some(sleep) = self.sleep.as_mut() {
                        sleep.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = self.deadline();
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timed_out.store(true, Ordering::Relaxed);
                        let grace = self.grace;
                        Poll::Ready(Some(Err(Box::new(BodyTooSlow { grace }))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    type Sender = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// A body fed by the returned sender, frame by frame.
    fn channel_body() -> (
        Sender,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    ) {
        let (tx, mut rx) = mpsc::channel(4);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, StreamBody::new(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_after_the_grace_period_and_a_steady_body_does_not() {
        let (tx, rx) = channel_body();
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = SlowBodyGuard::new(rx, Duration::from_secs(10), flag.clone());
        let sender = tokio::spawn(async move {
            // A byte every 2 s: 5 bytes earn 5 ms, far short of the time taken.
            for _ in 0..100 {
                let frame = Frame::data(Bytes::from_static(b"x"));
                if tx.send(Ok(frame)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let started = Instant::now();
        let mut failed = None;
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                failed = Some(e);
                break;
            }
        }
        let error = failed.expect("the trickle fails");
        assert!(error.is::<BodyTooSlow>(), "{error}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(11),
            "{took:?}"
        );
        assert!(flag.load(Ordering::Relaxed));
        sender.abort();

        // 2,000 bytes a second for 30 s: past the grace period, and never behind the rate.
        let (tx, rx) = channel_body();
        let flag = Arc::new(AtomicBool::new(false));
        let body = SlowBodyGuard::new(rx, Duration::from_secs(10), flag.clone());
        tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let frame = Frame::data(Bytes::from(vec![b'y'; 2000]));
                if tx.send(Ok(frame)).await.is_err() {
                    break;
                }
            }
        });
        let collected = body.collect().await.expect("a steady body arrives whole");
        assert_eq!(collected.to_bytes().len(), 60_000);
        assert!(!flag.load(Ordering::Relaxed));
    }
}
