//! A worker's outbox: the frames the broker sends one worker, in the order it sends them.
//!
//! A queued task's payload waits in the store unless it is small, so an assignment may leave
//! the broker's lock without its payload ([`Outbound::Unloaded`]). The outbox's task reads such
//! payloads from the store (off the async threads, several in one read transaction) and fills
//! them in before passing the frames on to the worker's session, in order; the broker's lock is
//! never held across a read. A payload that cannot be read hands its task back to the broker.

use tokio::sync::mpsc;

use super::Broker;
use crate::proto::{Assignment, Frame};

/// How many queued items the outbox takes at once (and so reads payloads for in one go).
const BATCH: usize = 64;

/// One item for a worker.
pub(super) enum Outbound {
    /// A frame ready to send.
    Frame(Frame),
    /// An assignment whose payload is still to be read from the store.
    Unloaded(Assignment),
}

/// The sending side of a worker's outbox.
pub(super) type Outbox = mpsc::UnboundedSender<Outbound>;

/// Starts the task that passes worker `worker`'s outbox on to `frames`, the frames its session
/// writes. It ends when the outbox is dropped (the worker left) or the session stops reading.
pub(super) fn start(broker: Broker, worker: u64, frames: mpsc::UnboundedSender<Frame>) -> Outbox {
    let (outbox, items) = mpsc::unbounded_channel();
    tokio::spawn(forward(broker, worker, items, frames));
    outbox
}

async fn forward(
    broker: Broker,
    worker: u64,
    mut items: mpsc::UnboundedReceiver<Outbound>,
    frames: mpsc::UnboundedSender<Frame>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while items.recv_many(&mut batch, BATCH).await > 0 {
        let mut payloads = load_payloads(&broker, &batch).await.into_iter();
        for item in batch.drain(..) {
            let frame = match item {
                Outbound::Frame(frame) => frame,
                Outbound::Unloaded(mut assignment) => match payloads.next().flatten() {
                    Some(payload) => {
                        assignment.payload = payload;
                        Frame::Assign(assignment)
                    }
                    None => {
                        broker.undeliverable(worker, assignment.task_id, assignment.lease);
                        continue;
                    }
                },
            };
            if frames.send(frame).is_err() {
                return;
            }
        }
    }
}

/// The payloads of the unloaded assignments in `batch`, in order (`None` for each when the read
/// fails, or for a payload the store no longer holds).
async fn load_payloads(broker: &Broker, batch: &[Outbound]) -> Vec<Option<bytes::Bytes>> {
    let ids: Vec<u128> = batch
        .iter()
        .filter_map(|item| match item {
            Outbound::Unloaded(a) => Some(a.task_id),
            Outbound::Frame(_) => None,
        })
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let count = ids.len();
    match broker.store().payloads(ids).await {
        Ok(payloads) => payloads,
        Err(e) => {
            tracing::error!(error = %e, tasks = count, "cannot read task payloads from the store");
            vec![None; count]
        }
    }
}
