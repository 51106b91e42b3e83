//! The floor under faasd's async submit on this machine (see scripts/bench-floor.sh).
//!
//! - `faasd-floor serve none DIR`: answers every request 202 with a small JSON body, as faasd
//!   answers an async submit, and does nothing else.
//! - `faasd-floor serve fsync DIR`: first appends the request's body and a task record's worth
//!   of bytes to a pre-written log in DIR, and answers once a group commit (one `pwrite` and one
//!   `fdatasync` for every request queued meanwhile) has made it durable: the least an
//!   acknowledged durable submit can cost.
//! - `faasd-floor load PORT CONNECTIONS REQUESTS PATH [STATUS]`: POSTs `REQUESTS` one-byte
//!   bodies to `PATH` over `CONNECTIONS` connections, each sending one request after another,
//!   and prints the rate; every answer must have the status `STATUS` (default 202).
//!
//! Both print one line and stop on the first error: this is a measuring tool.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
type Ack = oneshot::Sender<()>;

/// The log's size: pre-written, so an append never changes the file's size (an `fdatasync`
/// then writes no inode), and wrapped around when full.
const LOG_BYTES: u64 = 256 << 20;
/// What a request adds to the log besides its body: about a task record.
const RECORD_BYTES: usize = 160;
const ANSWER: &[u8] = br#"{"task_id":"0192f7e0-0000-7000-8000-000000000000","status":"QUEUED"}"#;

/// Opens the log in `dir` and writes it whole once, so that no append changes its size.
fn prepare_log(dir: &Path) -> Result<std::fs::File> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("floor.log"))?;
    let megabyte = vec![0u8; 1 << 20];
    for at in (0..LOG_BYTES).step_by(megabyte.len()) {
        log.write_at(&megabyte, at)?;
    }
    log.sync_all()?;
    Ok(log)
}

/// The group commit: takes the first queued request and every other one queued meanwhile,
/// appends them in one `pwrite`, `fdatasync`s, and only then answers them.
fn writer(queue: mpsc::Receiver<(Bytes, Ack)>, log: std::fs::File) -> Result<()> {
    let (mut at, mut batch, mut acks) = (0u64, Vec::new(), Vec::new());
    while let Ok(first) = queue.recv() {
        batch.clear();
        let queued = std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok()));
        for (body, ack) in queued {
            batch.extend_from_slice(&(body.len() as u32).to_le_bytes());
            batch.extend_from_slice(&body);
            batch.extend_from_slice(&[0u8; RECORD_BYTES]);
            acks.push(ack);
        }
        if at + batch.len() as u64 > LOG_BYTES {
            at = 0;
        }
        log.write_at(&batch, at)?;
        at += batch.len() as u64;
        log.sync_data()?;
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
    Ok(())
}

async fn serve(durable: bool, dir: &Path) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let (queue, commits) = mpsc::channel::<(Bytes, Ack)>();
    if durable {
        // Before "listening on": the load must not start while the log is being written.
        let log = prepare_log(dir)?;
        std::thread::spawn(move || {
            if let Err(e) = writer(commits, log) {
                eprintln!("faasd-floor: the log failed: {e}");
                std::process::exit(1);
            }
        });
    }
    println!("listening on {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let queue = queue.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let queue = queue.clone();
                    async move { Ok::<_, Infallible>(answer(request, durable.then_some(queue)).await) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    queue: Option<mpsc::Sender<(Bytes, Ack)>>,
) -> Response<Full<Bytes>> {
    let status = match request.into_body().collect().await {
        Ok(body) => match queue {
            Some(queue) => {
                let (ack, committed) = oneshot::channel();
                match queue.send((body.to_bytes(), ack)) {
                    Ok(()) if committed.await.is_ok() => 202,
                    _ => 500,
                }
            }
            None => 202,
        },
        Err(_) => 400,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
}

async fn load(
    port: u16,
    connections: usize,
    requests: usize,
    path: String,
    expect: u16,
) -> Result<()> {
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..connections {
        let path = path.clone();
        callers.spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for _ in (c..requests).step_by(connections) {
                let request = Request::post(path.as_str())
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(Bytes::from_static(b"x")))?;
                send.ready().await?;
                let response = send.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status != expect {
                    return Err(format!("{path} answered {status}").into());
                }
            }
            Result::Ok(())
        });
    }
    while let Some(caller) = callers.join_next().await {
        caller??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{requests} requests over {connections} connections in {seconds:.3} s: {:.0} requests/s",
        requests as f64 / seconds
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faasd-floor: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `text` as a number, or an error naming the argument it was given for.
fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| format!("{name} must be a whole number, got {text:?}").into())
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: faasd-floor serve none|fsync DIR | faasd-floor load PORT CONNECTIONS REQUESTS PATH [STATUS]";
    let runtime = tokio::runtime::Runtime::new()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["serve", mode @ ("none" | "fsync"), dir] => {
            runtime.block_on(serve(mode == "fsync", Path::new(dir)))
        }
        ["load", port, connections, requests, path] => runtime.block_on(load(
            number("PORT", port)?,
            number("CONNECTIONS", connections)?,
            number("REQUESTS", requests)?,
            path.to_owned(),
            202,
        )),
        ["load", port, connections, requests, path, expect] => runtime.block_on(load(
            number("PORT", port)?,
            number("CONNECTIONS", connections)?,
            number("REQUESTS", requests)?,
            path.to_owned(),
            number("STATUS", expect)?,
        )),
        _ => Err(usage.into()),
    }
}
