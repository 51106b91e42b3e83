//! `faasd invoke NAME [DATA | @file | -]`: call a function and print its result bytes; with
//! `--batch FILE|-`, once per line of the input (see [`super::batch`]).

use std::io::{Read, Write};

use anyhow::Context;
use bytes::Bytes;

use super::{ClientArgs, exit, failed};
use crate::client::segment;

/// Invoke a function.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// The function's name; `NAME@N` runs its kept version N instead of the live one.
    pub name: String,
    /// The payload: literal text, `@file` for a file's bytes, or `-` for standard input
    /// (default: empty).
    pub data: Option<String>,
    /// Queue the call and print its task id instead of waiting for the result.
    #[arg(long = "async")]
    pub is_async: bool,
    /// Print JSON: `{"task_id", "status"}` with --async, else `{"task_id", "result"}` (or
    /// `"result_base64"` when the result is not UTF-8); a failed task prints its error object
    /// with `"status": "FAILED"`, `"reason"` and `"stderr_tail"` (and still exits 1). With --batch, one object per line of
    /// input: `{"index", "task_id", "status", "result"}` (or `"result_base64"`), a failed task
    /// with `"error"` and `"reason"` instead, and with --output `"file"` instead of the result;
    /// `index` is the line number, from 1.
    #[arg(long)]
    pub json: bool,
    /// Send this `Idempotency-Key` (1 to 255 printable ASCII characters): running the same
    /// command again within the server's `--idempotency-ttl` answers the first call's task
    /// (and result) instead of running it again.
    #[arg(long, value_name = "KEY", value_parser = idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Run one task per line of FILE (`-`: standard input): a line's bytes without its newline
    /// are its payload (an empty line is an empty payload). The whole input is checked before
    /// anything is submitted; then it goes in chunks, and each result is printed as one line
    /// (a trailing newline of the result dropped), in input order; a failed task prints an
    /// empty line and its error on stderr. A progress bar shows on stderr when it is a
    /// terminal. Exits 1 if any task failed, 130 on Ctrl-C (which stops submitting and says
    /// how to find the tasks already submitted).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "is_async"])]
    pub batch: Option<String>,
    /// With --batch: each line is the standard base64 of its payload, for payloads that hold
    /// newlines (a line that is not UTF-8 is sent as bytes without it).
    #[arg(long, requires = "batch")]
    pub base64: bool,
    /// With --batch: write each result to DIR/NNNNNN.out, or a failed task's error and the end
    /// of its stderr to DIR/NNNNNN.err, instead of stdout (NNNNNN: the line number, from 1,
    /// zero-padded to six digits or more).
    #[arg(long, value_name = "DIR", requires = "batch")]
    pub output: Option<std::path::PathBuf>,
    /// The payload's content type: `application/json` has a `python` function's handler get
    /// the decoded JSON value (the server refuses a payload that is not JSON then).
    #[arg(
        long,
        value_name = "TYPE",
        default_value = "application/octet-stream",
        conflicts_with = "batch"
    )]
    pub content_type: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Checks an `--idempotency-key` as the server does: 1 to 255 printable ASCII characters.
fn idempotency_key(key: &str) -> Result<String, String> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err("an idempotency key is 1 to 255 printable ASCII characters".into());
    }
    Ok(key.to_owned())
}

/// Reads the payload argument.
pub fn payload(data: Option<&str>) -> anyhow::Result<Bytes> {
    let usage = |e: anyhow::Error| exit::coded(exit::USAGE, format!("{e:#}"));
    match data {
        None => Ok(Bytes::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the payload from standard input")
                .map_err(usage)?;
            Ok(buf.into())
        }
        Some(s) if s.starts_with('@') => std::fs::read(&s[1..])
            .with_context(|| format!("cannot read payload file {}", &s[1..]))
            .map(Bytes::from)
            .map_err(usage),
        Some(s) => Ok(Bytes::copy_from_slice(s.as_bytes())),
    }
}

/// Runs `faasd invoke`.
pub async fn run(args: InvokeArgs) -> anyhow::Result<u8> {
    if args.batch.is_none() && (args.base64 || args.output.is_some()) {
        let flag = if args.base64 { "--base64" } else { "--output" };
        return Err(exit::coded(
            exit::USAGE,
            format!("{flag} goes with --batch FILE: without it, invoke runs one call"),
        ));
    }
    if let Some(source) = args.batch {
        let (name, version) = super::versions::split_pin(&args.name)?;
        let batch = super::batch::Batch {
            name: name.to_owned(),
            version,
            idempotency_key: args.idempotency_key,
            source,
            base64: args.base64,
            json: args.json,
            output: args.output,
        };
        return super::batch::run(args.client.connect()?, batch).await;
    }
    let body = payload(args.data.as_deref())?;
    let client = args.client.connect()?;
    let (name, version) = super::versions::split_pin(&args.name)?;
    let mut query: Vec<String> = Vec::new();
    if args.is_async {
        query.push("async=true".into());
    }
    if let Some(version) = version {
        query.push(format!("version={version}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let path = format!("/v1/functions/{}/invoke{query}", segment(name));
    let key = args.idempotency_key.as_deref();
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    let answer = client
        .request_with(
            hyper::Method::POST,
            &path,
            Some(args.content_type.as_str()),
            &headers,
            body,
        )
        .await?;
    let answer = failed::check(answer, args.json)?;
    let mut out = std::io::stdout().lock();
    if args.is_async {
        let v: serde_json::Value = answer.json()?;
        if args.json {
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{}", v["task_id"].as_str().unwrap_or_default())?;
        }
    } else if args.json {
        let id = answer.headers.get("x-faasd-task-id");
        let id = id
            .and_then(|v| v.to_str().ok())
            .map(serde_json::Value::from);
        let (key, value) = super::tasks::bytes_field("result", &answer.body);
        let v = serde_json::json!({ "task_id": id, key: value });
        writeln!(out, "{v}")?;
    } else {
        out.write_all(&answer.body)?;
    }
    out.flush()?;
    Ok(exit::OK)
}
