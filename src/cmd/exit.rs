//! Exit codes, stable for scripts: the codes themselves, the error that carries one out of a
//! command, and the one mapping of client errors (and the server's error answers) to codes.

use hyper::StatusCode;

use crate::api::ErrorCode;
use crate::client;

/// Success.
pub const OK: u8 = 0;
/// The function (task) failed; also any other failure of a command.
pub const FAILURE: u8 = 1;
/// Usage error: bad arguments or input.
pub const USAGE: u8 = 2;
/// The server is unreachable or answered with a server error.
pub const SERVER: u8 = 3;
/// The function or task does not exist (for a task: also when it expired and was purged, 410
/// `task_expired`).
pub const NOT_FOUND: u8 = 4;
/// The task has not finished yet (`faasd result`, `faasd logs`).
pub const NOT_FINISHED: u8 = 5;
/// No token or an unknown one (401 `unauthenticated`), or a right the caller lacks (403
/// `forbidden`); the message says which.
pub const ACCESS: u8 = 6;
/// Nothing to cancel: the task had already ended (`faasd cancel`, 409 `task_finished`).
pub const ALREADY_ENDED: u8 = 7;
/// Interrupted by Ctrl-C (SIGINT) before it was done (`faasd invoke --batch`): 128 + 2, as
/// shells report a command that SIGINT ended.
pub const INTERRUPTED: u8 = 130;

/// An error that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    /// The exit code.
    pub code: u8,
    /// The one line printed on stderr.
    pub message: String,
}

/// Builds a coded error.
pub fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        message: message.into(),
    })
}

/// The exit code an error carries: that of the first [`Coded`] or [`client::Error`] in its
/// chain, or [`FAILURE`].
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| {
            let coded = e.downcast_ref::<Coded>().map(|c| c.code);
            coded.or_else(|| e.downcast_ref::<client::Error>().map(of_client))
        })
        .unwrap_or(FAILURE)
}

/// The exit code of a client error: a bad URL is a usage error, a server that cannot be
/// reached or answers nonsense is a server error, and an error answer goes by
/// [`of_answer`].
pub fn of_client(err: &client::Error) -> u8 {
    match err {
        client::Error::InvalidUrl { .. }
        | client::Error::InvalidToken
        | client::Error::UrlNotHttp { .. }
        | client::Error::Tls { .. }
        | client::Error::BuildRequest { .. } => USAGE,
        client::Error::Unreachable { .. }
        | client::Error::NotAnswering { .. }
        | client::Error::StreamSilent { .. }
        | client::Error::NotFaasd { .. }
        | client::Error::ReadAnswer { .. }
        | client::Error::UnexpectedBody { .. } => SERVER,
        client::Error::Answered { status, code, .. } => of_answer(*status, code.as_ref()),
    }
}

/// The exit code of an error answer: a failed (or cancelled) task is [`FAILURE`], an unfinished
/// one [`NOT_FINISHED`] (also a RUNNING task `cancel` cannot stop), one that ended before a
/// `cancel` [`ALREADY_ENDED`], an expired (purged) one [`NOT_FOUND`]; otherwise 401 and 403 are
/// [`ACCESS`], 404 is [`NOT_FOUND`], another 4xx
/// but 429 is [`USAGE`], and the rest is [`SERVER`].
pub fn of_answer(status: StatusCode, code: Option<&ErrorCode>) -> u8 {
    match (status, code) {
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => ACCESS,
        (
            _,
            Some(
                ErrorCode::FunctionFailed
                | ErrorCode::FunctionTimeout
                | ErrorCode::WorkerLost
                | ErrorCode::OutputTooLarge
                | ErrorCode::ExecutorFailed
                | ErrorCode::TaskCancelled,
            ),
        ) => FAILURE,
        (_, Some(ErrorCode::TaskNotFinished | ErrorCode::TaskRunning)) => NOT_FINISHED,
        (_, Some(ErrorCode::TaskFinished)) => ALREADY_ENDED,
        (_, Some(ErrorCode::TaskExpired)) => NOT_FOUND,
        (StatusCode::NOT_FOUND, _) => NOT_FOUND,
        (s, _) if s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS => USAGE,
        _ => SERVER,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    fn answered(status: StatusCode, code: Option<ErrorCode>) -> client::Error {
        client::Error::Answered {
            status,
            code,
            message: "message".into(),
        }
    }

    #[test]
    fn refused_access_exits_6() {
        let unknown = answered(StatusCode::UNAUTHORIZED, Some(ErrorCode::Unauthenticated));
        let lacking = answered(StatusCode::FORBIDDEN, Some(ErrorCode::Forbidden));
        assert_eq!((of_client(&unknown), of_client(&lacking)), (ACCESS, ACCESS));
        // A 403 from a proxy in front of the server, without our error body, too.
        assert_eq!(of_answer(StatusCode::FORBIDDEN, None), ACCESS);
    }

    #[test]
    fn failed_tasks_exit_1_whatever_the_status() {
        for code in [
            ErrorCode::FunctionFailed,
            ErrorCode::FunctionTimeout,
            ErrorCode::WorkerLost,
            ErrorCode::OutputTooLarge,
            ErrorCode::ExecutorFailed,
        ] {
            for status in [
                StatusCode::BAD_GATEWAY,
                StatusCode::GATEWAY_TIMEOUT,
                StatusCode::SERVICE_UNAVAILABLE,
            ] {
                assert_eq!(of_answer(status, Some(&code)), FAILURE, "{status} {code:?}");
            }
        }
    }

    #[test]
    fn an_unfinished_task_exits_5() {
        let code = Some(&ErrorCode::TaskNotFinished);
        assert_eq!(of_answer(StatusCode::CONFLICT, code), NOT_FINISHED);
        let running = Some(&ErrorCode::TaskRunning);
        assert_eq!(of_answer(StatusCode::CONFLICT, running), NOT_FINISHED);
    }

    #[test]
    fn cancelling_an_ended_task_exits_7_and_a_cancelled_task_exits_1() {
        let ended = Some(&ErrorCode::TaskFinished);
        assert_eq!(of_answer(StatusCode::CONFLICT, ended), ALREADY_ENDED);
        let cancelled = Some(&ErrorCode::TaskCancelled);
        assert_eq!(of_answer(StatusCode::CONFLICT, cancelled), FAILURE);
    }

    #[test]
    fn not_found_exits_4() {
        for code in [
            Some(ErrorCode::FunctionNotFound),
            Some(ErrorCode::TaskNotFound),
            Some(ErrorCode::RouteNotFound),
            None,
        ] {
            assert_eq!(of_answer(StatusCode::NOT_FOUND, code.as_ref()), NOT_FOUND);
        }
    }

    #[test]
    fn an_expired_task_exits_4_like_an_unknown_one() {
        let code = Some(&ErrorCode::TaskExpired);
        assert_eq!(of_answer(StatusCode::GONE, code), NOT_FOUND);
    }

    #[test]
    fn other_client_errors_exit_2_but_429_exits_3() {
        let cases = [
            (StatusCode::BAD_REQUEST, Some(ErrorCode::InvalidName)),
            (StatusCode::BAD_REQUEST, Some(ErrorCode::InvalidRequest)),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(ErrorCode::PayloadTooLarge),
            ),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Some(ErrorCode::MethodNotAllowed),
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(ErrorCode::MissingField),
            ),
            (
                StatusCode::CONFLICT,
                Some(ErrorCode::Other("new_code".into())),
            ),
        ];
        for (status, code) in cases {
            assert_eq!(of_answer(status, code.as_ref()), USAGE, "{status}");
        }
        let queue_full = Some(&ErrorCode::QueueFull);
        assert_eq!(of_answer(StatusCode::TOO_MANY_REQUESTS, queue_full), SERVER);
    }

    #[test]
    fn server_errors_exit_3() {
        let cases = [
            (StatusCode::INTERNAL_SERVER_ERROR, Some(ErrorCode::Internal)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(ErrorCode::ShuttingDown),
            ),
            (StatusCode::BAD_GATEWAY, None),
        ];
        for (status, code) in cases {
            assert_eq!(of_answer(status, code.as_ref()), SERVER, "{status}");
        }
    }

    #[test]
    fn client_errors_map_by_kind() {
        let not_http = client::Client::new("ftp://host").err().expect("not http");
        assert_eq!(of_client(&not_http), USAGE);
        let bad_url = client::Client::new("http://a b").err().expect("bad URL");
        assert_eq!(of_client(&bad_url), USAGE);
        let cause = serde_json::from_str::<u8>("x").expect_err("not JSON");
        assert_eq!(of_client(&client::Error::UnexpectedBody { cause }), SERVER);
        let not_found = answered(StatusCode::NOT_FOUND, None);
        assert_eq!(of_client(&not_found), NOT_FOUND);
    }

    #[test]
    fn the_code_survives_context_and_defaults_to_failure() {
        let err = Err::<(), _>(answered(StatusCode::NOT_FOUND, None))
            .context("cannot register the benchmark function")
            .expect_err("an error");
        assert_eq!(code_of(&err), NOT_FOUND);
        assert_eq!(
            format!("{err:#}"),
            "cannot register the benchmark function: message"
        );
        assert_eq!(code_of(&coded(USAGE, "bad flag")), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
