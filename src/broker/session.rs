//! The server side of one worker connection: handshake, then frames in both directions until
//! the connection ends, when the worker's leased tasks are handed back to the broker.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Broker;
use crate::proto::{self, Frame, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};

/// How often workers are asked to heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How many heartbeat periods may pass without any frame before the worker is declared dead.
const MISSED_HEARTBEATS: u32 = 3;

/// Serves one worker connection until it ends or `cancel` fires.
pub async fn serve_worker<T>(broker: Broker, io: T, address: String, cancel: CancellationToken)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = proto::split(io);
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Err(_) => {
            tracing::warn!(%address, "worker sent no hello within {HANDSHAKE_TIMEOUT:?}; closing");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%address, error = %e, "bad handshake from worker; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(frame))) => frame,
    };
    let Frame::Hello {
        protocol,
        name,
        slots,
        mode,
    } = hello
    else {
        tracing::warn!(%address, "worker's first frame was not a hello; closing");
        let _ = writer
            .send(&Frame::Refused {
                reason: "the first frame must be a Hello".into(),
            })
            .await;
        return;
    };
    if protocol != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version mismatch: worker speaks {protocol}, server speaks {PROTOCOL_VERSION}"
        );
        tracing::warn!(%address, worker = %name, "{reason}; refusing");
        let _ = writer.send(&Frame::Refused { reason }).await;
        return;
    }

    let (frames, outbox) = mpsc::unbounded_channel();
    let id = broker.attach_worker(
        name.clone(),
        address.clone(),
        slots,
        mode,
        frames.clone(),
        HEARTBEAT,
    );
    tracing::info!(worker = id, %name, %address, slots, ?mode, "worker joined");
    let mut pump = tokio::spawn(async move { writer.pump(outbox).await });

    let silence_limit = HEARTBEAT * MISSED_HEARTBEATS;
    loop {
        // Any frame proves the worker alive; silence past the limit ends the connection and
        // hands its tasks to other workers.
        let frame = tokio::select! {
            frame = reader.next() => frame,
            () = tokio::time::sleep(silence_limit) => {
                tracing::warn!(worker = id, %name, "no heartbeat for {silence_limit:?}; declaring the worker dead");
                break;
            }
            () = cancel.cancelled() => break,
            ended = &mut pump => {
                // Nothing more can reach the worker: end the session so its tasks move on.
                tracing::warn!(worker = id, %name, outcome = ?ended, "writing to the worker failed; closing");
                break;
            }
        };
        match frame {
            Ok(Some(Frame::Report(report))) => broker.report(id, report),
            Ok(Some(Frame::FetchCode { hash })) => {
                let broker = broker.clone();
                let frames = frames.clone();
                tokio::spawn(async move {
                    let blob = broker.store().blob(hash).await;
                    let frame = match blob {
                        Ok(Some(bytes)) => {
                            broker.note_cached(id, hash);
                            Frame::Code {
                                hash,
                                found: true,
                                bytes,
                            }
                        }
                        Ok(None) => Frame::Code {
                            hash,
                            found: false,
                            bytes: Default::default(),
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read a code blob for a worker");
                            Frame::Code {
                                hash,
                                found: false,
                                bytes: Default::default(),
                            }
                        }
                    };
                    let _ = frames.send(frame);
                });
            }
            Ok(Some(Frame::Heartbeat { .. })) => broker.heartbeat(id),
            Ok(Some(Frame::Pull { slots })) => broker.pull(id, slots),
            Ok(Some(Frame::Drain)) => {
                tracing::info!(worker = id, "worker is draining");
                broker.drain_worker(id);
            }
            Ok(Some(other)) => {
                tracing::warn!(worker = id, frame = ?other, "unexpected frame from worker; closing");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "worker connection failed; closing");
                break;
            }
        }
    }
    broker.detach_worker(id);
    drop(frames);
    pump.abort();
    tracing::info!(worker = id, %name, "worker left");
}
