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
/// The function or task does not exist.
pub const NOT_FOUND: u8 = 4;
/// The task has not finished yet (`faasd result`, `faasd logs`).
pub const NOT_FINISHED: u8 = 5;

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
        | client::Error::UrlNotHttp { .. }
        | client::Error::BuildRequest { .. } => USAGE,
        client::Error::Unreachable { .. }
        | client::Error::ReadAnswer { .. }
        | client::Error::UnexpectedBody { .. } => SERVER,
        client::Error::Answered { status, code, .. } => of_answer(*status, code.as_ref()),
    }
}

/// The exit code of an error answer: a failed task is [`FAILURE`], an unfinished one
/// [`NOT_FINISHED`]; otherwise 404 is [`NOT_FOUND`], another 4xx but 429 is [`USAGE`], and
/// the rest is [`SERVER`].
pub fn of_answer(status: StatusCode, code: Option<&ErrorCode>) -> u8 {
    match (status, code) {
        (
            _,
            Some(
                ErrorCode::FunctionFailed
                | ErrorCode::FunctionTimeout
                | ErrorCode::WorkerLost
                | ErrorCode::OutputTooLarge
                | ErrorCode::ExecutorFailed,
            ),
        ) => FAILURE,
        (_, Some(ErrorCode::TaskNotFinished)) => NOT_FINISHED,
        (StatusCode::NOT_FOUND, _) => NOT_FOUND,
        (s, _) if s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS => USAGE,
        _ => SERVER,
    }
}
