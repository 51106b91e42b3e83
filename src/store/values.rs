//! Large values kept in files beside the database: a payload, result or captured stderr of
//! [`MIN_BYTES`] or more is written to `DATA/values/<task id>.<kind>` instead of a redb table.
//!
//! Why: after an unclean shutdown redb verifies the checksum of every page reachable from its
//! roots, so the restart after a `kill -9` took time in proportion to the bytes the file holds
//! (4.2 s for 2,000 queued 1 MiB payloads). With large values outside it, the database holds
//! records and small values only, and that restart grows with the number of tasks instead.
//!
//! Durability is the table's: the writer thread writes a batch's files and syncs them (and the
//! directory) before the transaction that makes them reachable commits. A file is found by its
//! name; readers look in the table first and fall back to the file, so stores written before
//! values were spilled read as they did. A task's files stay as long as its record (a finished
//! task keeps its payload, which a replay reads) and go when it is purged; files left behind by a
//! crash between writing and committing are swept at the next start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

use super::Error;

/// The smallest value kept in a file rather than in the database.
pub const MIN_BYTES: usize = 64 << 10;

/// The directory of value files, inside the data directory.
pub const DIR: &str = "values";

/// Which of a task's values a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// What the task reads on stdin; kept until the task is purged (a replay reads it).
    Payload,
    /// Its stdout, once finished.
    Result,
    /// Its captured stderr, once finished.
    Logs,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Payload => "payload",
            Kind::Result => "result",
            Kind::Logs => "logs",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Kind> {
        match suffix {
            "payload" => Some(Kind::Payload),
            "result" => Some(Kind::Result),
            "logs" => Some(Kind::Logs),
            _ => None,
        }
    }
}

/// Whether a value of `len` bytes is kept in a file.
pub fn spills(len: usize) -> bool {
    len >= MIN_BYTES
}

/// The directory of value files.
#[derive(Debug, Clone)]
pub struct Values {
    dir: PathBuf,
}

/// One value to write: the task, which value, its bytes.
pub type Item<'a> = (u128, Kind, &'a [u8]);

impl Values {
    /// The value files of the data directory `data_dir`, creating their directory.
    pub fn open(data_dir: &Path) -> Result<Values, Error> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Values { dir })
    }

    /// The file of a task's value.
    pub fn path(&self, id: u128, kind: Kind) -> PathBuf {
        self.dir.join(format!("{id:032x}.{}", kind.suffix()))
    }

    /// Writes every item to its file (replacing what was there) and makes them durable: each
    /// file's data, then the directory's entries, with one sync of the directory for all. On
    /// failure (a full disk, say) the items' files are removed again, as nothing refers to them.
    pub fn write_durably(&self, items: &[Item<'_>]) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let written = self.write_all(items);
        if written.is_err() {
            for (id, kind, _) in items {
                self.remove(*id, *kind);
            }
        }
        written
    }

    fn write_all(&self, items: &[Item<'_>]) -> Result<(), Error> {
        let mut files = Vec::with_capacity(items.len());
        for (id, kind, bytes) in items {
            let path = self.path(*id, *kind);
            let io = |op| {
                let path = path.clone();
                move |source| Error::Value { op, path, source }
            };
            let mut file = File::create(&path).map_err(io("create"))?;
            file.write_all(bytes).map_err(io("write"))?;
            files.push((file, path));
        }
        for (file, path) in &files {
            file.sync_data().map_err(|source| Error::Value {
                op: "sync",
                path: path.clone(),
                source,
            })?;
        }
        sync_dir(&self.dir)
    }

    /// A task's value file and its length; `None` if it has no file.
    pub fn file(&self, id: u128, kind: Kind) -> Result<Option<(PathBuf, u64)>, Error> {
        let path = self.path(id, kind);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some((path, meta.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Value {
                op: "stat",
                path,
                source,
            }),
        }
    }

    /// A task's value from its file, cut to its last `max_bytes`; `None` if it has no file.
    pub fn read(&self, id: u128, kind: Kind, max_bytes: usize) -> Result<Option<Bytes>, Error> {
        let path = self.path(id, kind);
        let io = |op| {
            let path = path.clone();
            move |source| Error::Value { op, path, source }
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open")(e)),
        };
        let len = file.metadata().map_err(io("stat"))?.len();
        let skip = len.saturating_sub(max_bytes as u64);
        file.seek(SeekFrom::Start(skip)).map_err(io("seek"))?;
        let mut bytes = Vec::with_capacity((len - skip) as usize);
        file.read_to_end(&mut bytes).map_err(io("read"))?;
        Ok(Some(Bytes::from(bytes)))
    }

    /// Removes a task's value file, if it has one. A failure is logged: the file is swept at
    /// the next start.
    pub fn remove(&self, id: u128, kind: Kind) {
        let path = self.path(id, kind);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a value file")
            }
        }
    }

    /// Removes the files last modified before `before` that `keep` does not want (files a
    /// crash left between writing them and committing, or between committing and removing
    /// them). Files written since `before` are left alone: their transaction may not have
    /// committed yet. Returns how many were removed.
    pub fn sweep(
        &self,
        before: SystemTime,
        mut keep: impl FnMut(u128, Kind) -> Result<bool, Error>,
    ) -> Result<usize, Error> {
        let io = |op| {
            let path = self.dir.clone();
            move |source| Error::Value { op, path, source }
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io("list"))? {
            let entry = entry.map_err(io("list"))?;
            let modified = entry.metadata().and_then(|m| m.modified());
            if modified.is_ok_and(|m| m >= before) {
                continue;
            }
            let name = entry.file_name();
            let wanted = match parse_name(&name.to_string_lossy()) {
                Some((id, kind)) => keep(id, kind)?,
                None => true,
            };
            if !wanted && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `<32 hex digits>.<kind>` → the task id and kind.
fn parse_name(name: &str) -> Option<(u128, Kind)> {
    let (id, suffix) = name.split_once('.')?;
    if id.len() != 32 {
        return None;
    }
    Some((
        u128::from_str_radix(id, 16).ok()?,
        Kind::from_suffix(suffix)?,
    ))
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    let io = |op| {
        move |source| Error::Value {
            op,
            path: dir.to_owned(),
            source,
        }
    };
    File::open(dir)
        .map_err(io("open"))?
        .sync_all()
        .map_err(io("sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_read_a_tail() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let values = Values::open(dir.path()).expect("open");
        values
            .write_durably(&[(7, Kind::Result, b"hello world"), (7, Kind::Logs, b"err")])
            .expect("write");
        let all = values.read(7, Kind::Result, usize::MAX).expect("read");
        assert_eq!(all.as_deref(), Some(&b"hello world"[..]));
        let tail = values.read(7, Kind::Result, 5).expect("read tail");
        assert_eq!(tail.as_deref(), Some(&b"world"[..]));
        assert_eq!(values.read(7, Kind::Payload, 10).expect("read"), None);
        values.remove(7, Kind::Result);
        values.remove(7, Kind::Result);
        assert_eq!(values.read(7, Kind::Result, 10).expect("read"), None);
    }

    #[test]
    fn the_sweep_removes_only_old_unwanted_files() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let values = Values::open(dir.path()).expect("open");
        values
            .write_durably(&[(1, Kind::Payload, b"a"), (2, Kind::Result, b"b")])
            .expect("write");
        std::fs::write(dir.path().join(DIR).join("notes.txt"), b"x").expect("stray file");
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        let removed = values
            .sweep(later, |id, kind| Ok(id == 2 && kind == Kind::Result))
            .expect("sweep");
        assert_eq!(removed, 1);
        assert_eq!(values.read(1, Kind::Payload, 10).expect("read"), None);
        assert!(values.read(2, Kind::Result, 10).expect("read").is_some());
        assert!(dir.path().join(DIR).join("notes.txt").exists());
        let earlier = SystemTime::UNIX_EPOCH;
        assert_eq!(values.sweep(earlier, |_, _| Ok(false)).expect("sweep"), 0);
    }

    #[test]
    fn names_parse_back() {
        let values = Values {
            dir: PathBuf::from("v"),
        };
        let path = values.path(u128::MAX - 3, Kind::Logs);
        let name = path.file_name().expect("name").to_string_lossy();
        assert_eq!(parse_name(&name), Some((u128::MAX - 3, Kind::Logs)));
        assert_eq!(parse_name("12.payload"), None);
    }
}
