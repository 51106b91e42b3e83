//! Where `faasd invoke --batch` puts each task's outcome, in input order: a line of stdout, a
//! JSON object per line (`--json`), or a file per task (`--output DIR`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cmd::exit;

/// How a finished task ended.
#[derive(Debug)]
pub struct Outcome {
    /// The task id.
    pub task_id: String,
    /// `COMPLETED` or `FAILED`.
    pub status: String,
    /// What the task gave: its result, or why it failed.
    pub end: End,
}

/// A task's result or its failure.
#[derive(Debug)]
pub enum End {
    /// The result bytes of a completed task.
    Result(Bytes),
    /// A failed task: its reason code (if recorded), a one-line message, and its logs' tail.
    Failed {
        /// The failure reason, such as `exit_status`.
        reason: Option<String>,
        /// Why it failed, in a sentence.
        error: String,
        /// The end of its captured stderr.
        logs_tail: String,
    },
}

impl Outcome {
    /// Whether the task failed.
    pub fn failed(&self) -> bool {
        matches!(self.end, End::Failed { .. })
    }
}

/// Writes outcomes to stdout or to files.
pub struct Output {
    json: bool,
    dir: Option<PathBuf>,
    /// Digits of the file names: at least 6, enough for the last line number.
    width: usize,
    stdout: std::io::BufWriter<std::io::Stdout>,
}

impl Output {
    /// An output for `total` tasks; creates `dir` if it is given and missing.
    pub fn new(json: bool, dir: Option<PathBuf>, total: usize) -> anyhow::Result<Output> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output directory {}", dir.display()))
                .map_err(|e| exit::coded(exit::USAGE, format!("{e:#}")))?;
        }
        Ok(Output {
            json,
            dir,
            width: total.to_string().len().max(6),
            stdout: std::io::BufWriter::new(std::io::stdout()),
        })
    }

    /// Writes the outcome of the task of line `line` (from 1). Without `--json` or `--output`,
    /// a failed task gets an empty stdout line, and its error goes to `stderr`.
    pub fn write(
        &mut self,
        line: usize,
        outcome: &Outcome,
        stderr: impl FnOnce(String),
    ) -> anyhow::Result<()> {
        let file = match &self.dir {
            Some(dir) => Some(self.write_file(dir.clone(), line, outcome)?),
            None => None,
        };
        if self.json {
            let mut v = json!({
                "index": line,
                "task_id": outcome.task_id,
                "status": outcome.status,
            });
            match (&file, &outcome.end) {
                (Some(path), _) => v["file"] = json!(path.display().to_string()),
                (None, End::Result(bytes)) => {
                    let (key, value) = crate::cmd::tasks::bytes_field("result", bytes);
                    v[key] = value;
                }
                (None, End::Failed { .. }) => {}
            }
            if let End::Failed { reason, error, .. } = &outcome.end {
                v["error"] = json!(error);
                v["reason"] = json!(reason);
            }
            writeln!(self.stdout, "{v}")?;
        } else if file.is_none() {
            match &outcome.end {
                End::Result(bytes) => {
                    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                    self.stdout.write_all(text)?;
                }
                End::Failed { error, .. } => stderr(format!(
                    "line {line}: task {} failed: {error}",
                    outcome.task_id
                )),
            }
            self.stdout.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes `DIR/NNNNNN.out` (the result) or `DIR/NNNNNN.err` (the error and the logs'
    /// tail); returns its path.
    fn write_file(&self, dir: PathBuf, line: usize, outcome: &Outcome) -> anyhow::Result<PathBuf> {
        let (extension, content) = match &outcome.end {
            End::Result(bytes) => ("out", bytes.clone()),
            End::Failed {
                error, logs_tail, ..
            } => (
                "err",
                Bytes::from(format!(
                    "task {} failed: {error}\n{logs_tail}",
                    outcome.task_id
                )),
            ),
        };
        let path = dir.join(format!("{line:0width$}.{extension}", width = self.width));
        std::fs::write(&path, &content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Flushes stdout.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout
            .flush()
            .context("cannot write to standard output")
    }
}

/// The outcome of one task of a `/v1/tasks/wait` answer; `result` is its result when the
/// answer left it out (fetched apart).
pub fn outcome(task: &Value, result: Option<Bytes>) -> anyhow::Result<Outcome> {
    use base64::Engine;
    let task_id = task["id"].as_str().unwrap_or_default().to_string();
    let status = task["status"].as_str().unwrap_or_default().to_string();
    let end = if status == "COMPLETED" {
        match (result, task["result_base64"].as_str()) {
            (Some(bytes), _) => End::Result(bytes),
            (None, Some(encoded)) => End::Result(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .context("the server sent a result that is not base64")?
                    .into(),
            ),
            (None, None) => End::Result(Bytes::new()),
        }
    } else {
        let why = task["message"]
            .as_str()
            .or_else(|| task["reason"].as_str())
            .unwrap_or("no reason was recorded");
        End::Failed {
            reason: task["reason"].as_str().map(str::to_owned),
            error: format!("{why}{}", crate::cmd::failed::ending(task)),
            logs_tail: task["logs_tail"].as_str().unwrap_or_default().to_string(),
        }
    };
    Ok(Outcome {
        task_id,
        status,
        end,
    })
}
