//! Applying an image's layers to a directory: every entry's path checked (no `..`, no absolute
//! path, never through a symbolic link), whiteouts applied, device nodes refused, the size and
//! entry count bounded, set-uid bits dropped and ownership left to the unpacking user.
//!
//! Symbolic links are created with their targets as written (an absolute target resolves inside
//! the sandbox's root when the function runs), but unpacking never follows one: each parent of
//! an entry is looked at with `lstat` and a link there refuses the entry.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::archive::{Image, Layer, check_digest, hex};
use super::guard::{Guard, Guarded};
use super::{Error, Limits};

/// The name of an opaque whiteout: the directory's lower contents are hidden.
const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of a whiteout: the named sibling is deleted.
const WHITEOUT: &str = ".wh.";

/// What the unpack has used of its limits so far.
struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

/// Unpacks every layer of `image`, in order, into `root` (an existing, empty directory).
pub(super) fn unpack_image(image: &Image, root: &Path, limits: Limits) -> Result<(), Error> {
    let mut budget = Budget {
        limits,
        bytes: 0,
        entries: 0,
    };
    for layer in &image.layers {
        let reader = image.layer_reader(layer)?;
        unpack_blob(layer, reader, root, &mut budget)?;
    }
    Ok(())
}

/// Makes each of `names` a directory at the top of `root`, replacing whatever the image put
/// there (the sandbox mounts its own `/tmp`, `/proc` and `/dev` over them).
pub(super) fn make_mount_points(root: &Path, names: &[&str]) -> Result<(), Error> {
    for name in names {
        let path = root.join(name);
        let made = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => remove_any(&path)
                .and_then(|()| fs::create_dir(&path).map_err(|e| Failure::Io(path.clone(), e))),
        };
        made.map_err(|failure| match failure {
            Failure::Io(path, source) => Error::Write { path, source },
            Failure::Refused(reason) => Error::Write {
                path: path.clone(),
                source: io::Error::other(reason),
            },
            Failure::Read(source) => Error::Write {
                path: path.clone(),
                source,
            },
        })?;
    }
    Ok(())
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The error of a failed read of `layer`.
fn read_error(layer: &Layer) -> impl Fn(io::Error) -> Error + Copy + '_ {
    move |source| Error::ReadLayer {
        layer: layer.name.clone(),
        source,
    }
}

/// Unpacks one layer blob (plain or gzip tar), checking its digest when it has one.
fn unpack_blob(
    layer: &Layer,
    blob: impl Read,
    root: &Path,
    budget: &mut Budget,
) -> Result<(), Error> {
    let read_err = read_error(layer);
    let unsupported = |media_type: &str| Error::UnsupportedLayer {
        name: layer.name.clone(),
        media_type: media_type.to_owned(),
    };
    if let Some(media_type) = &layer.media_type
        && (media_type.contains("zstd") || !media_type.contains("tar"))
    {
        return Err(unsupported(media_type));
    }
    let mut reader = BufReader::new(Hashing {
        inner: blob,
        hasher: Sha256::new(),
    });
    let magic = reader.fill_buf().map_err(read_err)?;
    if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(unsupported("zstd (by its first bytes)"));
    }
    if magic.starts_with(&[0x1f, 0x8b]) {
        let decoder = flate2::read::MultiGzDecoder::new(&mut reader);
        unpack_tar(layer, decoder, root, budget)?;
    } else {
        unpack_tar(layer, &mut reader, root, budget)?;
    }
    io::copy(&mut reader, &mut io::sink()).map_err(read_err)?;
    if let Some(expected) = &layer.digest {
        let actual = hex(&reader.into_inner().hasher.finalize());
        check_digest(&layer.name, expected, &actual)?;
    }
    Ok(())
}

/// Applies one layer's tar stream to `root`.
fn unpack_tar(
    layer: &Layer,
    tar: impl Read,
    root: &Path,
    budget: &mut Budget,
) -> Result<(), Error> {
    let read_err = read_error(layer);
    let guard = Guard::default();
    let mut archive = tar::Archive::new(Guarded::new(tar, guard.clone()));
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    let mut entries = archive.entries().map_err(read_err)?;
    loop {
        guard.between_entries();
        let Some(entry) = entries.next() else {
            break;
        };
        guard.in_entry();
        let mut entry = entry.map_err(read_err)?;
        apply_tar_entry(layer, &mut entry, root, budget, &mut this_layer)?;
        // What the entry did not read of its body is read here, not counted as headers.
        io::copy(&mut entry, &mut io::sink()).map_err(read_err)?;
    }
    Ok(())
}

/// Applies one entry of a layer (within the budget), recording its path in `this_layer`.
fn apply_tar_entry<R: Read>(
    layer: &Layer,
    entry: &mut tar::Entry<R>,
    root: &Path,
    budget: &mut Budget,
    this_layer: &mut HashSet<PathBuf>,
) -> Result<(), Error> {
    let read_err = read_error(layer);
    let raw = entry.path().map_err(read_err)?.into_owned();
    let shown = raw.to_string_lossy().into_owned();
    let refuse = |reason: &str| Error::UnsafeEntry {
        layer: layer.name.clone(),
        entry: shown.clone(),
        reason: reason.to_owned(),
    };
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
    ) {
        return Ok(());
    }
    budget.entries += 1;
    if budget.entries > budget.limits.max_entries {
        return Err(Error::TooManyEntries {
            layer: layer.name.clone(),
            limit: budget.limits.max_entries,
        });
    }
    let size = declared_size(entry);
    budget.bytes = budget.bytes.saturating_add(size);
    if budget.bytes > budget.limits.max_bytes {
        return Err(Error::TooLarge {
            layer: layer.name.clone(),
            entry: shown,
            limit: budget.limits.max_bytes,
        });
    }
    let Some(rel) = inside_path(&raw).map_err(refuse)? else {
        return Ok(());
    };
    let target = Target { root, rel: &rel };
    apply_entry(&target, entry, this_layer).map_err(|failure| match failure {
        Failure::Refused(reason) => refuse(&reason),
        Failure::Io(path, source) => Error::Write { path, source },
        Failure::Read(source) => read_err(source),
    })?;
    // The directories the entry's path goes through are this layer's too (made implicitly
    // when the layer did not list them): an opaque whiteout later in the layer keeps them.
    for parent in rel.ancestors().skip(1) {
        if !parent.as_os_str().is_empty() {
            this_layer.insert(parent.to_owned());
        }
    }
    this_layer.insert(rel);
    Ok(())
}

/// The size an entry declares: for a sparse file, its full apparent size.
fn declared_size<R: Read>(entry: &tar::Entry<R>) -> u64 {
    let header = entry.header();
    let sparse = header
        .as_gnu()
        .filter(|_| header.entry_type() == tar::EntryType::GNUSparse)
        .and_then(|gnu| gnu.real_size().ok())
        .unwrap_or(0);
    entry.size().max(sparse)
}

/// An entry's path relative to the root: `None` for the root itself; refused if absolute or if
/// it has a `..` component.
fn inside_path(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut rel = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Why one entry could not be applied.
enum Failure {
    Refused(String),
    Io(PathBuf, io::Error),
    Read(io::Error),
}

/// Where an entry goes.
struct Target<'a> {
    root: &'a Path,
    rel: &'a Path,
}

impl Target<'_> {
    fn full(&self) -> PathBuf {
        self.root.join(self.rel)
    }

    fn io(&self, source: io::Error) -> Failure {
        Failure::Io(self.full(), source)
    }
}

/// Applies one entry (after its path was checked) to the tree.
fn apply_entry<R: Read>(
    target: &Target,
    entry: &mut tar::Entry<R>,
    this_layer: &mut HashSet<PathBuf>,
) -> Result<(), Failure> {
    let parent = target.rel.parent().unwrap_or(Path::new(""));
    make_parents(target.root, parent, true)?;
    let name = target
        .rel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == OPAQUE {
        return clear_lower(target.root, parent, this_layer);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(Failure::Refused(format!("whiteout of {hidden:?}")));
        }
        return remove_any(&target.root.join(parent).join(hidden));
    }
    let kind = entry.header().entry_type();
    let mode = entry.header().mode().unwrap_or(0o644);
    match kind {
        tar::EntryType::Directory => make_dir(target),
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            write_file(target, entry, mode)
        }
        tar::EntryType::Symlink => {
            let link = entry
                .link_name()
                .map_err(Failure::Read)?
                .filter(|l| !l.as_os_str().is_empty())
                .ok_or_else(|| Failure::Refused("a symbolic link without a target".into()))?;
            remove_any(&target.full())?;
            std::os::unix::fs::symlink(&link, target.full()).map_err(|e| target.io(e))
        }
        tar::EntryType::Link => hard_link(target, entry),
        tar::EntryType::Char | tar::EntryType::Block => {
            Err(Failure::Refused("device nodes are not allowed".into()))
        }
        tar::EntryType::Fifo => {
            remove_any(&target.full())?;
            nix::unistd::mkfifo(
                &target.full(),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| target.io(e.into()))
        }
        other => Err(Failure::Refused(format!(
            "unsupported entry type {other:?}"
        ))),
    }
}

/// Walks `rel`'s components under `root`, refusing a symbolic link or a non-directory on the
/// way; missing directories are created when `create` is set.
fn make_parents(root: &Path, rel: &Path, create: bool) -> Result<(), Failure> {
    let mut path = root.to_path_buf();
    for component in rel.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let at = path.strip_prefix(root).unwrap_or(&path).display();
                return Err(Failure::Refused(format!(
                    "its path passes through the symbolic link {at}"
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                let at = path.strip_prefix(root).unwrap_or(&path).display();
                return Err(Failure::Refused(format!(
                    "{at} on its path is not a directory"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&path).map_err(|e| Failure::Io(path.clone(), e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let at = path.strip_prefix(root).unwrap_or(&path).display();
                return Err(Failure::Refused(format!("{at} does not exist")));
            }
            Err(e) => return Err(Failure::Io(path.clone(), e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (a directory with its contents), never following a link.
fn remove_any(path: &Path) -> Result<(), Failure> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| Failure::Io(path.to_owned(), e))
}

/// An opaque whiteout: removes what lower layers put under `dir`, keeping this layer's entries
/// (and, in a directory this layer kept, still removing what lower layers put in it).
fn clear_lower(root: &Path, dir: &Path, this_layer: &HashSet<PathBuf>) -> Result<(), Failure> {
    let full = root.join(dir);
    let children = fs::read_dir(&full).map_err(|e| Failure::Io(full.clone(), e))?;
    for child in children {
        let child = child.map_err(|e| Failure::Io(full.clone(), e))?;
        let rel = dir.join(child.file_name());
        if !this_layer.contains(&rel) {
            remove_any(&child.path())?;
        } else if child.file_type().is_ok_and(|t| t.is_dir()) {
            clear_lower(root, &rel, this_layer)?;
        }
    }
    Ok(())
}

/// The permission bits kept: no set-uid, set-gid or sticky bit, no write for others, and
/// readable (and searchable, if anyone may execute it) by all.
fn kept_mode(mode: u32) -> u32 {
    let mode = mode & 0o755;
    let exec = if mode & 0o111 != 0 { 0o111 } else { 0 };
    mode | 0o444 | exec
}

/// A directory (its mode is always 0755: see [`kept_mode`] for files).
fn make_dir(target: &Target) -> Result<(), Failure> {
    let full = target.full();
    match fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => remove_any(&full)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(target.io(e)),
    }
    fs::create_dir(&full).map_err(|e| target.io(e))?;
    // Directories stay writable by the unpacking user so later layers can change them.
    fs::set_permissions(&full, fs::Permissions::from_mode(0o755)).map_err(|e| target.io(e))
}

fn write_file<R: Read>(
    target: &Target,
    entry: &mut tar::Entry<R>,
    mode: u32,
) -> Result<(), Failure> {
    let full = target.full();
    remove_any(&full)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&full)
        .map_err(|e| target.io(e))?;
    io::copy(entry, &mut file).map_err(Failure::Read)?;
    file.set_permissions(fs::Permissions::from_mode(kept_mode(mode)))
        .map_err(|e| target.io(e))
}

fn hard_link<R: Read>(target: &Target, entry: &mut tar::Entry<R>) -> Result<(), Failure> {
    let link = entry
        .link_name()
        .map_err(Failure::Read)?
        .ok_or_else(|| Failure::Refused("a hard link without a target".into()))?;
    let source = inside_path(&link)
        .map_err(|reason| Failure::Refused(format!("its hard link target {reason}")))?
        .ok_or_else(|| Failure::Refused("a hard link to the root".into()))?;
    make_parents(target.root, source.parent().unwrap_or(Path::new("")), false).map_err(
        |f| match f {
            Failure::Refused(reason) => Failure::Refused(format!("its hard link target: {reason}")),
            other => other,
        },
    )?;
    let from = target.root.join(&source);
    match fs::symlink_metadata(&from) {
        Ok(meta) if !meta.is_dir() => {}
        Ok(_) => return Err(Failure::Refused("a hard link to a directory".into())),
        Err(_) => {
            return Err(Failure::Refused(format!(
                "its hard link target {} does not exist",
                source.display()
            )));
        }
    }
    if source == target.rel {
        return Ok(());
    }
    remove_any(&target.full())?;
    fs::hard_link(&from, target.full()).map_err(|e| target.io(e))
}
