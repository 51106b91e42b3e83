//! The typed records kept in the store, encoded with postcard (fields are only appended).
//!
//! postcard does not frame a struct's fields, so a record written before a field was appended
//! simply ends early. Each appended field is read with [`appended`], which gives the field its
//! default when the record ends before it: stores written by earlier versions keep loading.

use serde::{Deserialize, Deserializer, Serialize};

use crate::proto::{CodeHash, FailureReason, HttpSpec, Isolation, Runtime, WarmSpec};

/// One registered version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// Its version, 1 for the first registration and bumped on every one after.
    pub version: u32,
    /// How its code runs.
    pub runtime: Runtime,
    /// The code bundle's content hash (the key into the blob table).
    pub code_hash: CodeHash,
    /// The code bundle's size.
    pub code_bytes: u64,
    /// How long one call may run.
    pub timeout_ms: u64,
    /// How many calls may run at once; `None` is unlimited.
    pub concurrency: Option<u32>,
    /// How many tasks may wait in its queue.
    pub queue_limit: u32,
    /// How many times a task is started before it fails for good with `worker_lost`.
    pub max_attempts: u32,
    /// Environment variables set for every call.
    pub env: Vec<(String, String)>,
    /// When this version was registered (Unix ms).
    pub created_ms: u64,
    /// Warm executor settings (always set for `python` and `pickle`).
    pub warm: Option<WarmSpec>,
    /// Sandbox settings of its calls.
    pub isolation: Isolation,
    /// The id of the user who registered it; 0 when no user did (protected mode).
    #[serde(deserialize_with = "appended")]
    pub owner: u32,
    /// The name its client gave it, when that is not its name: an MPCS function is named by
    /// its id, and keeps here the `name` its `/register_function` call sent.
    #[serde(deserialize_with = "appended")]
    pub display_name: Option<String>,
    /// Set when the function is an HTTP service (`--http-port`): its port, the requests one
    /// executor serves at once, and whether requests are stored as tasks.
    #[serde(deserialize_with = "appended")]
    pub http: Option<HttpSpec>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Acknowledged and waiting for a slot.
    Queued,
    /// Leased to a worker.
    Running,
    /// Finished with exit status 0.
    Completed,
    /// Finished any other way.
    Failed,
}

impl TaskStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "QUEUED",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
        }
    }

    /// Whether the task has reached an end state.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }
}

/// One task: a call of a pinned function version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id (a UUIDv7, so ids sort by creation time).
    pub id: u128,
    /// The arrival sequence number, the key of the pending table.
    pub seq: u64,
    /// The function's name.
    pub function: String,
    /// The function version the task runs.
    pub version: u32,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// When it was acknowledged (Unix ms).
    pub created_ms: u64,
    /// When its latest attempt started (Unix ms).
    pub started_ms: Option<u64>,
    /// When it finished (Unix ms).
    pub finished_ms: Option<u64>,
    /// How many times it has been started.
    pub attempts: u32,
    /// The exit status of the finished run.
    pub exit_code: Option<i32>,
    /// The signal that ended the finished run.
    pub signal: Option<i32>,
    /// Why it failed.
    pub failure: Option<FailureReason>,
    /// A human-readable detail of the failure.
    pub message: Option<String>,
    /// The size of the payload.
    pub payload_bytes: u64,
    /// The size of the result.
    pub result_bytes: u64,
    /// The size of the captured stderr.
    pub stderr_bytes: u64,
    /// The run's wall-clock time in microseconds.
    pub run_us: u64,
    /// The payload is JSON (the caller sent `Content-Type: application/json`).
    pub json: bool,
    /// Whether the finished run started a new executor.
    pub cold_start: bool,
    /// That executor's start-up and init time in microseconds.
    pub init_us: u64,
    /// The id of the user who made the call; 0 when no user did (protected mode, anonymous).
    #[serde(deserialize_with = "appended")]
    pub caller: u32,
    /// The CPU time (user + system) of the finished run, in microseconds: the executor's for a
    /// cold run, the executor's increase over the call for a warm one.
    #[serde(deserialize_with = "appended")]
    pub cpu_us: u64,
    /// The peak resident memory of the finished run's executor, in bytes. For a warm executor it
    /// is the executor's peak over its whole life, not only over this call.
    #[serde(deserialize_with = "appended")]
    pub peak_memory_bytes: u64,
    /// The name of the worker its latest attempt was leased to: set while it runs and kept in
    /// its end record; `None` while it waits.
    #[serde(deserialize_with = "appended")]
    pub worker: Option<String>,
}

impl TaskRecord {
    /// A task of `function` version `version` as it enters its queue: QUEUED, never started,
    /// with no time, payload or outcome yet (set those with struct update syntax).
    pub fn queued(id: u128, seq: u64, function: String, version: u32) -> TaskRecord {
        TaskRecord {
            id,
            seq,
            function,
            version,
            status: TaskStatus::Queued,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            exit_code: None,
            signal: None,
            failure: None,
            message: None,
            payload_bytes: 0,
            result_bytes: 0,
            stderr_bytes: 0,
            run_us: 0,
            json: false,
            cold_start: false,
            init_us: 0,
            caller: 0,
            cpu_us: 0,
            peak_memory_bytes: 0,
            worker: None,
        }
    }
}

/// Reads a field appended to a record after its first release: the field's default when the
/// record, written before it existed, ends here.
fn appended<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(deserializer).unwrap_or_default())
}

/// Encodes a record for the store.
pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(record)
}

/// Decodes a record read from the store.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proto::hex;

    #[test]
    fn function_record_has_a_pinned_encoding() {
        let record = FunctionRecord {
            name: "f".into(),
            version: 2,
            runtime: Runtime::Shell,
            code_hash: [7; 32],
            code_bytes: 10,
            timeout_ms: 30_000,
            concurrency: Some(4),
            queue_limit: 100,
            max_attempts: 3,
            env: vec![("A".into(), "b".into())],
            created_ms: 1,
            warm: Some(WarmSpec {
                min_warm: 1,
                idle_timeout_ms: 2,
            }),
            isolation: Isolation {
                memory_bytes: None,
                allow_net: true,
            },
            owner: 5,
            display_name: Some("f1".into()),
            http: Some(HttpSpec {
                port: 8080,
                concurrency: 2,
                record_requests: true,
            }),
        };
        let bytes = encode(&record).expect("encode");
        // name, version, runtime, hash (fixed 32 bytes), sizes as varints, Some(4), env, created,
        // warm, isolation, then the appended owner and display name (Some, length, "f1").
        let before_owner = format!("0166020{}{}", "0", "07".repeat(32))
            + "0ab0ea010104640301014101620101010200 01";
        let before_owner = before_owner.replace(' ', "");
        // The appended HTTP service: Some, port 8080 (varint 903f), concurrency 2, recorded.
        assert_eq!(
            hex(&bytes),
            format!("{before_owner}05") + "01026631" + "01903f0201"
        );
        assert_eq!(decode::<FunctionRecord>(&bytes).expect("decode"), record);
        // A record written before `http` was appended still loads, as no HTTP service.
        let bytes = &bytes[..bytes.len() - 5];
        let plain = decode::<FunctionRecord>(bytes).expect("decode");
        assert_eq!(plain.http, None);
        let record = FunctionRecord {
            http: None,
            ..record
        };
        // A record written before `display_name` was appended still loads, without one.
        let no_name = decode::<FunctionRecord>(&bytes[..bytes.len() - 4]).expect("decode");
        let unnamed = FunctionRecord {
            display_name: None,
            ..record.clone()
        };
        assert_eq!(no_name, unnamed);
        // One written before `owner` was appended still loads, owned by no user.
        let old = decode::<FunctionRecord>(&bytes[..bytes.len() - 5]).expect("decode old");
        assert_eq!(
            old,
            FunctionRecord {
                owner: 0,
                ..unnamed
            }
        );
    }

    #[test]
    fn task_record_has_a_pinned_encoding() {
        let record = TaskRecord {
            id: 1,
            seq: 2,
            function: "f".into(),
            version: 1,
            status: TaskStatus::Failed,
            created_ms: 3,
            started_ms: Some(4),
            finished_ms: None,
            attempts: 1,
            exit_code: Some(-1),
            signal: None,
            failure: Some(FailureReason::ExitStatus),
            message: None,
            payload_bytes: 5,
            result_bytes: 6,
            stderr_bytes: 7,
            run_us: 8,
            json: true,
            cold_start: true,
            init_us: 9,
            caller: 10,
            cpu_us: 11,
            peak_memory_bytes: 12,
            worker: Some("w1".into()),
        };
        let bytes = encode(&record).expect("encode");
        let before_usage = "010201660103030104000101010001000005060708010109";
        // The usage fields, then the appended worker (Some, length 2, "w1").
        assert_eq!(hex(&bytes), format!("{before_usage}0a0b0c01027731"));
        assert_eq!(decode::<TaskRecord>(&bytes).expect("decode"), record);
        // A record written before the worker was appended still loads, naming none.
        let unnamed = decode::<TaskRecord>(&bytes[..bytes.len() - 4]).expect("decode");
        let record = TaskRecord {
            worker: None,
            ..record
        };
        assert_eq!(unnamed, record);
        // One written before the caller and usage fields were appended still loads.
        let old = decode::<TaskRecord>(&bytes[..bytes.len() - 7]).expect("decode old");
        let zeroed = TaskRecord {
            caller: 0,
            cpu_us: 0,
            peak_memory_bytes: 0,
            ..record
        };
        assert_eq!(old, zeroed);
    }

    fn bare_task() -> TaskRecord {
        TaskRecord {
            id: u128::MAX,
            seq: 300,
            function: "fn".into(),
            version: 1,
            status: TaskStatus::Queued,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            exit_code: None,
            signal: None,
            failure: None,
            message: None,
            payload_bytes: 0,
            result_bytes: 0,
            stderr_bytes: 0,
            run_us: 0,
            json: false,
            cold_start: false,
            init_us: 0,
            caller: 0,
            cpu_us: 0,
            peak_memory_bytes: 0,
            worker: None,
        }
    }

    #[test]
    fn task_statuses_are_stored_as_their_variant_index() {
        for (status, byte) in [
            (TaskStatus::Queued, "00"),
            (TaskStatus::Running, "01"),
            (TaskStatus::Completed, "02"),
            (TaskStatus::Failed, "03"),
        ] {
            let bytes = encode(&status).expect("encode");
            assert_eq!(hex(&bytes), byte, "{status:?}");
            assert_eq!(decode::<TaskStatus>(&bytes).expect("decode"), status);
        }
    }

    #[test]
    fn a_task_record_with_every_option_empty_has_a_pinned_encoding() {
        let record = bare_task();
        let bytes = encode(&record).expect("encode");
        // id: u128::MAX as a 19-byte varint; seq 300 as ac02; then the name and zeros.
        let expected = format!("{}03ac0202666e01{}", "ff".repeat(18), "00".repeat(20));
        assert_eq!(hex(&bytes), expected);
        assert_eq!(decode::<TaskRecord>(&bytes).expect("decode"), record);
    }

    #[test]
    fn a_finished_task_record_round_trips() {
        let record = TaskRecord {
            status: TaskStatus::Completed,
            started_ms: Some(1_700_000_000_000),
            finished_ms: Some(1_700_000_000_500),
            attempts: 2,
            exit_code: Some(0),
            signal: Some(15),
            failure: Some(FailureReason::OutOfMemory),
            message: Some("ünïcode message".into()),
            payload_bytes: u64::MAX,
            json: true,
            ..bare_task()
        };
        let bytes = encode(&record).expect("encode");
        assert_eq!(decode::<TaskRecord>(&bytes).expect("decode"), record);
    }

    #[test]
    fn a_function_record_without_limits_or_warm_settings_round_trips() {
        let record = FunctionRecord {
            name: "plain".into(),
            version: 1,
            runtime: Runtime::Pickle,
            code_hash: [0; 32],
            code_bytes: 0,
            timeout_ms: 0,
            concurrency: None,
            queue_limit: 0,
            max_attempts: 1,
            env: Vec::new(),
            created_ms: 0,
            warm: None,
            isolation: Isolation {
                memory_bytes: Some(64 << 20),
                allow_net: false,
            },
            owner: 0,
            display_name: None,
            http: None,
        };
        let bytes = encode(&record).expect("encode");
        assert_eq!(decode::<FunctionRecord>(&bytes).expect("decode"), record);
    }

    #[test]
    fn a_record_cut_before_its_appended_fields_does_not_decode() {
        let bytes = encode(&bare_task()).expect("encode");
        // The last field of the first release is `init_us`, four bytes from the end.
        assert!(decode::<TaskRecord>(&bytes[..bytes.len() - 5]).is_err());
    }

    #[test]
    fn task_statuses_have_api_names_and_only_completed_and_failed_are_ends() {
        let all = [
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
        ];
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["QUEUED", "RUNNING", "COMPLETED", "FAILED"]);
        let ends: Vec<bool> = all.iter().map(|s| s.is_finished()).collect();
        assert_eq!(ends, [false, false, true, true]);
    }
}
