//! How the CLI tells a failed call: the answer of a task that ended FAILED becomes one message
//! that says why (the reason, the exit code or signal), shows the last lines of the task's
//! stderr, and names the command that shows all of it.

use super::exit;
use crate::client::Answer;

/// The most stderr lines a failure message shows.
const TAIL_LINES: usize = 10;

/// Passes a 2xx answer; turns the answer of a failed task into its [`message`] (exit 1), and
/// any other error answer into the client's error. With `json` a failed task's error also goes
/// to stdout as one JSON line, the server's error object with `"status": "FAILED"` (`task_id`,
/// `reason`, `message`, `error`, `code`, `exit_code`, `signal`, `stderr_tail`), so that scripts
/// reading stdout see it.
pub fn check(answer: Answer, json: bool) -> anyhow::Result<Answer> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    let body: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    if let Some(text) = body.as_ref().and_then(message) {
        if let (true, Some(serde_json::Value::Object(mut object))) = (json, body) {
            object.insert("status".into(), "FAILED".into());
            println!("{}", serde_json::Value::Object(object));
        }
        let code = exit::of_answer(answer.status, answer.error_code().as_ref());
        return Err(exit::coded(code, text));
    }
    Err(answer.into_error().into())
}

/// The message for the error body of a failed task, or `None` if `body` is not one:
///
/// ```text
/// task ID failed: the handler raised an exception (exit code 1)
///   ...the last stderr lines...
/// see all of it: faasd logs ID
/// ```
pub fn message(body: &serde_json::Value) -> Option<String> {
    let id = body.get("task_id")?.as_str()?;
    body.get("reason")?;
    let why = body["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or("no reason was recorded");
    let mut text = format!("task {id} failed: {why}{}", ending(body));
    let stderr = body["stderr_tail"].as_str().unwrap_or_default();
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        text.push_str("\n  ");
        text.push_str(line);
    }
    // Only when there is more to see: a task that never ran (lost, cancelled) has no logs.
    if !lines.is_empty() {
        text.push_str(&format!("\nsee all of it: faasd logs {id}"));
    }
    Some(text)
}

/// ` (exit code N)` or ` (signal NAME)` when the task's process ended that way and the reason
/// does not already say so, else nothing.
pub(super) fn ending(body: &serde_json::Value) -> String {
    if matches!(body["reason"].as_str(), Some("exit_status" | "signal")) {
        return String::new();
    }
    if let Some(signal) = body["signal"].as_i64() {
        let name = i32::try_from(signal)
            .ok()
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .map_or_else(|| signal.to_string(), |s| s.as_str().to_string());
        return format!(" (signal {name})");
    }
    match body["exit_code"].as_i64() {
        Some(code) if code != 0 => format!(" (exit code {code})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_failure_says_why_shows_the_stderr_tail_and_names_the_logs_command() {
        let stderr: String = (1..=12).map(|i| format!("line {i}\n")).collect();
        let body = json!({
            "error": "function f failed: exited with status 3 (task T)",
            "code": "function_failed",
            "task_id": "T",
            "reason": "exit_status",
            "message": "exited with status 3",
            "exit_code": 3,
            "signal": null,
            "stderr_tail": stderr,
        });
        let expected = "task T failed: exited with status 3\n".to_string()
            + &(3..=12)
                .map(|i| format!("  line {i}\n"))
                .collect::<String>()
            + "see all of it: faasd logs T";
        assert_eq!(message(&body).expect("a failure"), expected);
    }

    #[test]
    fn a_failure_with_no_logs_does_not_point_at_them() {
        let body = json!({
            "task_id": "T", "reason": "worker_lost",
            "message": "the worker running it was lost, on each of 3 attempts",
            "exit_code": null, "signal": null, "stderr_tail": "",
        });
        assert_eq!(
            message(&body).expect("a failure"),
            "task T failed: the worker running it was lost, on each of 3 attempts"
        );
    }

    #[test]
    fn the_exit_code_or_signal_follows_a_reason_that_does_not_say_it() {
        let body = json!({
            "task_id": "T", "reason": "exception", "message": "the handler raised an exception",
            "exit_code": 1, "signal": null, "stderr_tail": "",
        });
        assert_eq!(
            message(&body).expect("a failure"),
            "task T failed: the handler raised an exception (exit code 1)"
        );
        let body = json!({
            "task_id": "T", "reason": "out_of_memory", "message": "killed by the memory limit",
            "exit_code": null, "signal": 9, "stderr_tail": "",
        });
        assert_eq!(
            message(&body).expect("a failure"),
            "task T failed: killed by the memory limit (signal SIGKILL)"
        );
    }

    #[test]
    fn other_error_bodies_are_not_failures() {
        assert_eq!(message(&json!({"error": "no", "code": "queue_full"})), None);
    }
}
