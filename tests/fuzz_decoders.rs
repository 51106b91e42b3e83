//! Property tests of the decoders that read bytes a peer or the disk controls: the worker frame
//! decoder (`proto::decode`, and the length-delimited `proto::Reader` over a byte stream) and
//! the store's record encoding (postcard, as `store::records` uses it). None may panic on any
//! input, and every valid value comes back intact.
//!
//! A short run is part of `cargo test`; a long run is
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_decoders` (see `docs/fuzzing.md`).

use bytes::Bytes;
use faasd::proto::{
    self, Assignment, DispatchMode, FailureReason, Frame, Isolation, Runtime, WarmSpec,
};
use faasd::store::{FunctionRecord, TaskRecord, TaskStatus};
use proptest::prelude::*;

fn runtime() -> impl Strategy<Value = Runtime> {
    prop::sample::select(vec![
        Runtime::Shell,
        Runtime::Exec,
        Runtime::Python,
        Runtime::Pickle,
    ])
}

fn warm() -> impl Strategy<Value = Option<WarmSpec>> {
    prop::option::of(
        (any::<u32>(), any::<u64>()).prop_map(|(min_warm, idle_timeout_ms)| WarmSpec {
            min_warm,
            idle_timeout_ms,
        }),
    )
}

fn isolation() -> impl Strategy<Value = Isolation> {
    (prop::option::of(any::<u64>()), any::<bool>()).prop_map(|(memory_bytes, allow_net)| {
        Isolation {
            memory_bytes,
            allow_net,
        }
    })
}

fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((any::<String>(), any::<String>()), 0..3)
}

fn assignment() -> impl Strategy<Value = Frame> {
    (
        (any::<u128>(), any::<u64>(), any::<String>(), any::<u32>()),
        (runtime(), any::<[u8; 32]>(), any::<u64>(), env()),
        (any::<Vec<u8>>(), warm(), any::<bool>(), isolation()),
    )
        .prop_map(
            |(
                (task_id, lease, function, version),
                (runtime, code_hash, timeout_ms, env),
                (payload, warm, json, isolation),
            )| {
                Frame::Assign(Assignment {
                    task_id,
                    lease,
                    function,
                    version,
                    runtime,
                    code_hash,
                    timeout_ms,
                    env,
                    payload: Bytes::from(payload),
                    warm,
                    json,
                    isolation,
                })
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    let mode = prop::sample::select(vec![DispatchMode::Push, DispatchMode::Pull]);
    prop_oneof![
        (any::<u32>(), any::<String>(), any::<u32>(), mode).prop_map(
            |(protocol, name, slots, mode)| Frame::Hello {
                protocol,
                name,
                slots,
                mode,
                runtimes: vec![faasd::proto::Runtime::Shell],
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(protocol, worker_id, heartbeat_ms)| Frame::Welcome {
                protocol,
                worker_id,
                heartbeat_ms
            }
        ),
        any::<String>().prop_map(|reason| Frame::Refused { reason }),
        assignment(),
        any::<[u8; 32]>().prop_map(|hash| Frame::FetchCode { hash }),
        (any::<[u8; 32]>(), any::<bool>(), any::<Vec<u8>>()).prop_map(|(hash, found, bytes)| {
            Frame::Code {
                hash,
                found,
                bytes: Bytes::from(bytes),
            }
        }),
        any::<u32>().prop_map(|running| Frame::Heartbeat { running }),
        any::<u32>().prop_map(|slots| Frame::Pull { slots }),
        Just(Frame::Drain),
    ]
}

fn task_record() -> impl Strategy<Value = TaskRecord> {
    let status = prop::sample::select(vec![
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ]);
    let failure = prop::option::of(prop::sample::select(vec![
        FailureReason::ExitStatus,
        FailureReason::Signal,
        FailureReason::Timeout,
        FailureReason::SpawnFailed,
        FailureReason::OutputTooLarge,
        FailureReason::WorkerLost,
    ]));
    (
        (
            any::<u128>(),
            any::<u64>(),
            any::<String>(),
            any::<u32>(),
            status,
        ),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<u32>(),
        ),
        (
            any::<Option<i32>>(),
            any::<Option<i32>>(),
            failure,
            any::<Option<String>>(),
        ),
        (
            any::<[u64; 4]>(),
            any::<[bool; 2]>(),
            any::<(u64, u32, u64, u64)>(),
        ),
    )
        .prop_map(|(a, b, c, d)| {
            let mut r = TaskRecord::queued(a.0, a.1, a.2, a.3);
            r.status = a.4;
            (r.created_ms, r.started_ms, r.finished_ms, r.attempts) = b;
            (r.exit_code, r.signal, r.failure, r.message) = c;
            [r.payload_bytes, r.result_bytes, r.stderr_bytes, r.run_us] = d.0;
            [r.json, r.cold_start] = d.1;
            (r.init_us, r.caller, r.cpu_us, r.peak_memory_bytes) = d.2;
            r
        })
}

fn function_record() -> impl Strategy<Value = FunctionRecord> {
    (
        (any::<String>(), any::<u32>(), runtime(), any::<[u8; 32]>()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<u32>>(),
            any::<u32>(),
        ),
        (
            any::<u32>(),
            env(),
            any::<u64>(),
            warm(),
            isolation(),
            any::<u32>(),
            any::<Option<String>>(),
        ),
    )
        .prop_map(|(a, b, c)| FunctionRecord {
            name: a.0,
            version: a.1,
            runtime: a.2,
            code_hash: a.3,
            code_bytes: b.0,
            timeout_ms: b.1,
            concurrency: b.2,
            queue_limit: b.3,
            max_attempts: c.0,
            env: c.1,
            created_ms: c.2,
            warm: c.3,
            isolation: c.4,
            owner: c.5,
            display_name: c.6,
            http: None,
        })
}

/// An edit of valid bytes: flip a byte, cut the tail, or insert a byte.
fn mutate(mut bytes: Vec<u8>, at: usize, byte: u8, how: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![byte];
    }
    let at = at % bytes.len();
    match how % 3 {
        0 => bytes[at] ^= byte | 1,
        1 => bytes.truncate(at),
        _ => bytes.insert(at, byte),
    }
    bytes
}

/// Decodes `bytes` as every store record type; only the outcome's absence of a panic counts.
fn decode_records(bytes: &[u8]) {
    let _ = postcard::from_bytes::<TaskRecord>(bytes);
    let _ = postcard::from_bytes::<FunctionRecord>(bytes);
    let _ = postcard::from_bytes::<TaskStatus>(bytes);
}

/// Reads frames from `stream` until its end or the first error.
fn read_stream(stream: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut reader = proto::Reader::new(stream);
        while let Ok(Some(_)) = reader.next().await {}
    });
}

proptest! {
    #[test]
    fn fuzz_frame_decode_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = proto::decode(&bytes);
    }

    #[test]
    fn fuzz_frame_round_trips_and_survives_edits(
        frame in frame(), at in any::<usize>(), byte in any::<u8>(), how in any::<u8>()
    ) {
        let bytes = proto::encode(&frame).expect("encode");
        prop_assert_eq!(proto::decode(&bytes).expect("decode"), frame);
        let _ = proto::decode(&mutate(bytes.to_vec(), at, byte, how));
    }

    #[test]
    fn fuzz_frame_stream(bytes in prop::collection::vec(any::<u8>(), 0..512), frame in frame()) {
        read_stream(&bytes);
        let body = proto::encode(&frame).expect("encode");
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        framed.extend_from_slice(&bytes);
        read_stream(&framed);
    }

    #[test]
    fn fuzz_record_decode_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_records(&bytes);
    }

    #[test]
    fn fuzz_records_round_trip_and_survive_edits(
        task in task_record(), function in function_record(),
        at in any::<usize>(), byte in any::<u8>(), how in any::<u8>()
    ) {
        let bytes = postcard::to_stdvec(&task).expect("encode");
        prop_assert_eq!(&postcard::from_bytes::<TaskRecord>(&bytes).expect("decode"), &task);
        decode_records(&mutate(bytes, at, byte, how));
        let bytes = postcard::to_stdvec(&function).expect("encode");
        prop_assert_eq!(&postcard::from_bytes::<FunctionRecord>(&bytes).expect("decode"), &function);
        decode_records(&mutate(bytes, at, byte, how));
    }
}
