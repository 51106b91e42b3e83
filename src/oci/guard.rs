//! A bound on what the tar reader holds in memory: the `tar` crate reads a GNU long name or
//! link (`L`, `K`) and a PAX extension header (`x`, `g`) whole into memory before it yields the
//! entry they describe, however large they say they are. [`Guarded`] counts the bytes read
//! between one yielded entry and the next (headers and those extensions, never an entry's body)
//! and fails the read past [`MAX_HEADER_BYTES`], so a layer declaring a name of many GiB (a few
//! MB once compressed) is refused instead of filling the memory of the server or the worker.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// The most bytes of headers and header extensions one entry may have.
pub(super) const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What is counted now, shared by the reader and the loop over entries.
#[derive(Clone, Default)]
pub(super) struct Guard {
    state: Rc<GuardState>,
}

#[derive(Default)]
struct GuardState {
    /// Whether reads are between entries (headers), not an entry's body.
    counting: Cell<bool>,
    /// Bytes read since counting began.
    read: Cell<u64>,
}

impl Guard {
    /// Counts from zero: the reader is about to look for the next entry.
    pub(super) fn between_entries(&self) {
        self.state.read.set(0);
        self.state.counting.set(true);
    }

    /// Stops counting: the reader yielded an entry, whose body is read next.
    pub(super) fn in_entry(&self) {
        self.state.counting.set(false);
    }
}

/// A reader whose reads between entries are bounded by its [`Guard`].
pub(super) struct Guarded<R> {
    inner: R,
    guard: Guard,
}

impl<R> Guarded<R> {
    /// `inner`, counted by `guard`.
    pub(super) fn new(inner: R, guard: Guard) -> Guarded<R> {
        Guarded { inner, guard }
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let state = &self.guard.state;
        if state.counting.get() {
            let read = state.read.get().saturating_add(n as u64);
            state.read.set(read);
            if read > MAX_HEADER_BYTES {
                return Err(io::Error::other(format!(
                    "an entry's headers (a long name or link, or PAX records) pass {MAX_HEADER_BYTES} bytes"
                )));
            }
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for Guarded<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}
