//! The zygote's wire format: the [`Request`] and [`Reply`] frames and their framing over the
//! Unix stream socket between worker and zygote. A frame is a little-endian `u32` length and a
//! postcard body; fds travel with its first byte as `SCM_RIGHTS`. A frame that cannot be used
//! (too large, undecodable, its fds cut off) fails alone, with the stream still in step.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::sandbox::sys::{self, Error};

/// The largest request or reply accepted (a command line and an environment).
pub(super) const MAX_FRAME: usize = 16 << 20;

/// What the worker asks of the zygote.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Request {
    /// Fork a shim for this command line (the shim's own, `faasd __sandbox CONFIG -- ...`);
    /// stdin, stdout and stderr come as fds.
    Spawn {
        /// The command line.
        argv: Vec<Vec<u8>>,
        /// The environment, `KEY=value` each.
        env: Vec<Vec<u8>>,
        /// The working directory.
        cwd: Vec<u8>,
    },
    /// Collect the wait status of a child that has ended (refused, not waited for, if it has
    /// not).
    Reap {
        /// The child.
        pid: i32,
    },
    /// Kill a child and reap it (one the worker could not follow).
    Kill {
        /// The child.
        pid: i32,
    },
}

/// What the zygote answers.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Reply {
    /// The zygote is ready; `fast_attach` says whether cgroup moves are fast, `note` why not.
    Ready {
        /// Whether cgroup moves are fast.
        fast_attach: bool,
        /// Why not, when not.
        note: String,
    },
    /// The child's pid; its pidfd comes as an fd.
    Spawned {
        /// The child.
        pid: i32,
        /// Whether its init is the init of the call's PID namespace, which ends every process
        /// of the call before it reports: once the report is in, nothing of the call runs.
        contained: bool,
    },
    /// The child's raw wait status, and whether its memory limit killed any of its processes
    /// (`None`: its cgroups are not the zygote's, the worker reads and removes them).
    Reaped {
        /// The raw wait status.
        status: i32,
        /// Whether the memory limit killed a process of the call.
        oom: Option<bool>,
        /// CPU time of the child and the descendants it waited for, in microseconds.
        cpu_us: u64,
        /// The largest peak resident set among them, in bytes.
        peak_memory_bytes: u64,
    },
    /// The request failed.
    Failed {
        /// What failed, as the zygote's error says.
        message: String,
        /// Its errno.
        errno: i32,
    },
}

impl Reply {
    /// The reply for a request that failed with `error`.
    pub(super) fn failed(error: &Error) -> Reply {
        Reply::Failed {
            message: error.to_string(),
            errno: error.errno() as i32,
        }
    }

    /// The error of a [`Reply::Failed`], as the worker sees it.
    pub(super) fn into_error(message: String, errno: i32) -> Error {
        Error::InZygote {
            message,
            errno: Errno::from_raw(errno),
        }
    }
}

/// Writes one frame carrying `fds`.
pub(super) fn write_frame(
    sock: BorrowedFd<'_>,
    message: &impl Serialize,
    fds: &[RawFd],
) -> Result<(), Error> {
    let body = postcard::to_allocvec(message).map_err(|source| Error::FrameEncode { source })?;
    if body.len() > MAX_FRAME {
        return Err(Error::FrameTooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let len = (body.len() as u32).to_le_bytes();
    let total = len.len() + body.len();
    let sent = send_with_fds(sock, &[IoSlice::new(&len), IoSlice::new(&body)], fds)?;
    if sent < total {
        // The fds went with the first byte; the rest is plain data.
        let mut rest = Vec::with_capacity(total - sent);
        rest.extend_from_slice(&len);
        rest.extend_from_slice(&body);
        borrowed_stream(sock)
            .write_all(&rest[sent..])
            .map_err(|e| stream_error("write(zygote)", &e))?;
    }
    Ok(())
}

/// One `sendmsg` of (the start of) `iov` with `fds`: how many bytes went.
fn send_with_fds(sock: BorrowedFd<'_>, iov: &[IoSlice<'_>], fds: &[RawFd]) -> Result<usize, Error> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match nix::sys::socket::sendmsg::<()>(
            sock.as_raw_fd(),
            iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(Error::Call {
                    call: "sendmsg(zygote)",
                    errno,
                });
            }
        }
    }
}

/// A `UnixStream` view of a borrowed socket that does not close it.
fn borrowed_stream(sock: BorrowedFd<'_>) -> std::mem::ManuallyDrop<UnixStream> {
    // SAFETY: the fd stays open for the view's life (it is borrowed), and ManuallyDrop keeps
    // the view from closing it.
    std::mem::ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(sock.as_raw_fd()) })
}

/// The error of a read or write on the stream (an early end is a truncated frame).
fn stream_error(call: &'static str, error: &std::io::Error) -> Error {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        return Error::FrameTruncated;
    }
    Error::Call {
        call,
        errno: sys::errno_of(error),
    }
}

/// One frame as read: the message, or why this frame (alone) was unusable; and its fds.
pub(super) type Frame<T> = (Result<T, Error>, Vec<OwnedFd>);

/// The start of a frame: how many bytes of the length came, the fds, and whether they were
/// cut off.
struct Head {
    got: usize,
    fds: Vec<OwnedFd>,
    cut_off: Option<Error>,
}

/// Reads one frame and the fds that came with it; `Ok(None)` at end of stream. The outer error
/// means the stream itself broke; the inner one, that this frame could not be used (too large,
/// undecodable, or its fds were cut off), with the stream still in step.
pub(super) fn read_frame<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<Frame<T>>, Error> {
    let mut len = [0u8; 4];
    let head = receive_head(sock, &mut len)?;
    if head.got == 0 {
        return Ok(None);
    }
    let mut stream = borrowed_stream(sock);
    let io = |e: std::io::Error| stream_error("read(zygote)", &e);
    stream.read_exact(&mut len[head.got..]).map_err(io)?;
    let size = u32::from_le_bytes(len) as usize;
    if size > MAX_FRAME {
        // Skipped, so the next frame is read from its start.
        std::io::copy(
            &mut Read::by_ref(&mut *stream).take(size as u64),
            &mut std::io::sink(),
        )
        .map_err(io)?;
        let error = Error::FrameTooLarge {
            len: size,
            max: MAX_FRAME,
        };
        return Ok(Some((Err(error), head.fds)));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(io)?;
    let message = match head.cut_off {
        Some(error) => Err(error),
        None => postcard::from_bytes(&body).map_err(|source| Error::FrameDecode { source }),
    };
    Ok(Some((message, head.fds)))
}

/// Receives the first bytes of a frame's length into `len`, with the fds that came with them.
fn receive_head(sock: BorrowedFd<'_>, len: &mut [u8; 4]) -> Result<Head, Error> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(len)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(Error::Call {
                    call: "recvmsg(zygote)",
                    errno,
                });
            }
        };
        let mut head = Head {
            got: msg.bytes,
            fds: Vec::new(),
            cut_off: None,
        };
        match msg.cmsgs() {
            Ok(cmsgs) => {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these fds in this process.
                        let owned = received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                        head.fds.extend(owned);
                    }
                }
            }
            // Cut off (no room for the fds, or no fds left to take them).
            Err(errno) => {
                head.cut_off = Some(Error::Call {
                    call: "recvmsg(zygote, fds cut off)",
                    errno,
                });
            }
        }
        return Ok(head);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (OwnedFd::from(a), OwnedFd::from(b))
    }

    #[test]
    fn a_request_and_its_fds_arrive_whole() {
        let (worker, zygote) = pair();
        let request = Request::Spawn {
            argv: vec![b"faasd".to_vec(), b"__sandbox".to_vec()],
            env: vec![b"A=1".to_vec()],
            cwd: b"/tmp".to_vec(),
        };
        let (r, _w) = sys::pipe().expect("pipe");
        write_frame(worker.as_fd(), &request, &[r.as_raw_fd()]).expect("write");
        let (got, fds) = read_frame::<Request>(zygote.as_fd())
            .expect("stream")
            .expect("a frame");
        assert_eq!(got.expect("decoded"), request);
        assert_eq!(fds.len(), 1, "the fd came along");
    }

    #[test]
    fn replies_round_trip_and_the_end_of_stream_is_none() {
        let (worker, zygote) = pair();
        let replies = [
            Reply::Ready {
                fast_attach: false,
                note: "no favordynmods".into(),
            },
            Reply::Spawned {
                pid: 42,
                contained: true,
            },
            Reply::Reaped {
                status: 0x0300,
                oom: Some(true),
                cpu_us: 1500,
                peak_memory_bytes: 4096,
            },
            Reply::failed(&Error::NotEnded { pid: 9 }),
        ];
        for reply in &replies {
            write_frame(zygote.as_fd(), reply, &[]).expect("write");
        }
        drop(zygote);
        for reply in &replies {
            let (got, fds) = read_frame::<Reply>(worker.as_fd())
                .expect("stream")
                .expect("a frame");
            assert_eq!(&got.expect("decoded"), reply);
            assert!(fds.is_empty());
        }
        assert!(
            read_frame::<Reply>(worker.as_fd())
                .expect("stream")
                .is_none()
        );
    }

    #[test]
    fn a_frame_too_large_is_refused_and_the_stream_stays_in_step() {
        let (worker, zygote) = pair();
        let huge = Request::Spawn {
            argv: vec![vec![0u8; MAX_FRAME + 1]],
            env: Vec::new(),
            cwd: Vec::new(),
        };
        let refused = write_frame(worker.as_fd(), &huge, &[]);
        assert!(matches!(refused, Err(Error::FrameTooLarge { .. })));
        // One that arrives anyway is skipped whole, and the next frame reads fine.
        let size = MAX_FRAME + 1;
        let writer = std::thread::spawn(move || {
            let mut stream = UnixStream::from(worker);
            stream.write_all(&(size as u32).to_le_bytes())?;
            stream.write_all(&vec![7u8; size])?;
            write_frame(stream.as_fd(), &Request::Reap { pid: 5 }, &[])
                .map_err(std::io::Error::other)
        });
        let (first, _) = read_frame::<Request>(zygote.as_fd())
            .expect("stream")
            .expect("a frame");
        assert!(matches!(first, Err(Error::FrameTooLarge { len, .. }) if len == size));
        let (second, _) = read_frame::<Request>(zygote.as_fd())
            .expect("stream")
            .expect("a frame");
        assert_eq!(second.expect("decoded"), Request::Reap { pid: 5 });
        writer.join().expect("writer thread").expect("writes");
    }

    #[test]
    fn a_truncated_frame_breaks_the_stream() {
        let (worker, zygote) = pair();
        let mut stream = UnixStream::from(worker);
        stream.write_all(&100u32.to_le_bytes()).expect("length");
        stream.write_all(&[1, 2, 3]).expect("part of the body");
        drop(stream);
        let broken = read_frame::<Request>(zygote.as_fd());
        assert!(matches!(broken, Err(Error::FrameTruncated)), "{broken:?}");
    }

    #[test]
    fn an_undecodable_frame_fails_alone() {
        let (worker, zygote) = pair();
        let mut stream = UnixStream::from(worker);
        stream.write_all(&2u32.to_le_bytes()).expect("length");
        stream.write_all(&[0xff, 0xff]).expect("garbage");
        write_frame(stream.as_fd(), &Request::Kill { pid: 3 }, &[]).expect("write");
        let (garbage, _) = read_frame::<Request>(zygote.as_fd())
            .expect("stream")
            .expect("a frame");
        assert!(matches!(garbage, Err(Error::FrameDecode { .. })));
        let (next, _) = read_frame::<Request>(zygote.as_fd())
            .expect("stream")
            .expect("a frame");
        assert_eq!(next.expect("decoded"), Request::Kill { pid: 3 });
    }
}
