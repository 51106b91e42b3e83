//! `GET /v1/events[?function=NAME]`: the broker's live events as Server-Sent Events.
//!
//! Each event is `event: TYPE` and one line of JSON (`task`, `worker`, `function`), with a
//! `: keepalive` comment every 15 s. The JSON is made here, per consumer, from the plain event
//! the broker published, so the broker never serializes. A caller sees the task events of tasks
//! it may read (as `GET /v1/tasks/{id}` decides) and the worker events only if it may list the
//! workers; `?function=` keeps the task and function events of that function (and no worker
//! events). A consumer that reads too slowly to keep up with the broker's event buffer gets a
//! `dropped` event and its stream ends: it should reconnect. The streams end when the server
//! stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};
use crate::auth::{Caller, policy};
use crate::broker::Event;

/// How often an idle stream sends a `: keepalive` comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// `?function=`; an empty value is the same as none.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    function: Option<String>,
}

/// Which events one consumer gets.
struct Filter {
    caller: Caller,
    /// Only the events of this function, when given.
    function: Option<String>,
    /// Whether it may see the workers.
    workers: bool,
}

impl Filter {
    /// Whether this consumer gets `event`.
    fn admits(&self, event: &Event) -> bool {
        let of_function = |name: &str| self.function.as_deref().is_none_or(|f| f == name);
        match event {
            Event::Task(t) => {
                of_function(&t.function)
                    && policy::may_read_task(&self.caller, t.caller, Some(t.owner))
            }
            Event::Worker(_) => self.workers && self.function.is_none(),
            Event::Function(f) => of_function(&f.name),
        }
    }
}

/// `GET /v1/events`.
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let filter = Filter {
        workers: policy::may_list_workers(&caller),
        caller,
        function: query.function.filter(|f| !f.is_empty()),
    };
    let receiver = state.broker.subscribe();
    let closed = state.broker.events_closed();
    let stream =
        futures_util::stream::unfold(Some((receiver, filter, closed)), |consumer| async move {
            let (mut receiver, filter, closed) = consumer?;
            let event = next_event(&mut receiver, &filter, &closed).await?;
            let more = !matches!(event, Next::Dropped(_));
            let sse = event.into_sse();
            Some((Ok(sse), more.then_some((receiver, filter, closed))))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive")))
}

/// What a stream sends next.
enum Next {
    /// An event for this consumer.
    Event(Event),
    /// It fell this many events behind: the last thing it gets.
    Dropped(u64),
}

impl Next {
    /// The SSE event, its data one line of JSON.
    fn into_sse(self) -> SseEvent {
        let (kind, data) = match self {
            Next::Event(event) => (event.kind(), event_json(&event)),
            Next::Dropped(missed) => {
                let message = format!(
                    "this stream fell {missed} events behind and was closed; reconnect to go on"
                );
                (
                    "dropped",
                    serde_json::json!({ "message": message }).to_string(),
                )
            }
        };
        SseEvent::default().event(kind).data(data)
    }
}

/// The next event `filter` admits, `Dropped` once the consumer lagged, or `None` when the
/// server stops.
async fn next_event(
    receiver: &mut Receiver<Event>,
    filter: &Filter,
    closed: &CancellationToken,
) -> Option<Next> {
    loop {
        let received = tokio::select! {
            received = receiver.recv() => received,
            () = closed.cancelled() => return None,
        };
        match received {
            Ok(event) if filter.admits(&event) => return Some(Next::Event(event)),
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "an event consumer fell behind; closing its stream");
                return Some(Next::Dropped(missed));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// The event's JSON (its fields are plain values: serialization cannot fail).
fn event_json(event: &Event) -> String {
    let json = match event {
        Event::Task(t) => serde_json::to_string(t),
        Event::Worker(w) => serde_json::to_string(w),
        Event::Function(f) => serde_json::to_string(f),
    };
    json.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::broker::events::{FunctionChange, FunctionEvent, TaskEvent};
    use crate::store::TaskRecord;

    fn task(function: &str, caller: u32, owner: u32) -> Event {
        let mut record = TaskRecord::queued(1, 1, function.into(), 1);
        record.caller = caller;
        Event::Task(TaskEvent::of(&record, owner))
    }

    fn filter(user: u32, role: Role, function: Option<&str>) -> Filter {
        let caller = Caller {
            user,
            name: format!("u{user}"),
            role,
        };
        Filter {
            workers: policy::may_list_workers(&caller),
            caller,
            function: function.map(str::to_owned),
        }
    }

    #[test]
    fn a_caller_sees_the_tasks_it_may_read_of_the_function_it_asked_for() {
        let invoker = filter(5, Role::Invoker, None);
        assert!(invoker.admits(&task("f", 5, 9)));
        assert!(!invoker.admits(&task("f", 6, 9)));
        let owner = filter(9, Role::Developer, None);
        assert!(owner.admits(&task("f", 6, 9)));
        let only_g = filter(1, Role::Admin, Some("g"));
        assert!(!only_g.admits(&task("f", 1, 1)));
        assert!(only_g.admits(&task("g", 1, 1)));
        let registered = |name: &str| {
            Event::Function(FunctionEvent {
                kind: FunctionChange::Registered,
                name: name.into(),
                version: 1,
            })
        };
        assert!(only_g.admits(&registered("g")));
        assert!(!only_g.admits(&registered("f")));
    }

    #[test]
    fn a_task_event_is_one_line_of_json() {
        let json = event_json(&task("f", 1, 1));
        assert!(!json.contains('\n'), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["status"], "QUEUED");
    }
}
