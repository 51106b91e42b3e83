//! The unpacked roots, one per image archive: `<cache>/<key>/rootfs` beside the image's
//! `config.json`, where the key is the archive's own hash (the function's code hash). Never the
//! config digest alone: nothing ties a config to the layers an archive pairs it with, so two
//! archives with one config (one of them hostile) must not share a root. A root is built in a temporary directory of the cache and renamed into
//! place when complete, so a crashed unpack leaves nothing that looks done and two unpacks of one
//! image at once each build their own and the second rename simply loses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::archive::Image;
use super::unpack::{make_mount_points, unpack_image};
use super::{Error, ImageConfig, Limits};

/// The directories the sandbox mounts over in an image's root (its `/tmp`, `/proc`, `/dev`,
/// and where `pivot_root` puts the old root).
const MOUNT_POINTS: &[&str] = &["tmp", "proc", "dev", ".old-root"];

/// The prefix of a root being built.
const BUILDING: &str = ".unpack-";

/// An image unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The image's config digest (hex sha256).
    pub digest: String,
    /// The root filesystem.
    pub path: PathBuf,
    /// What the image asks to run.
    pub config: ImageConfig,
    /// Whether this call unpacked it (false: it was in the cache already).
    pub unpacked: bool,
}

/// The unpacked root of the image archive at `archive`, whose own hash (hex) is `key`, unpacked
/// into `cache` unless it already is (then the archive is not read at all). Blocking: call it
/// off the async threads.
pub fn ensure_rootfs(
    archive: &Path,
    key: &str,
    cache: &Path,
    limits: Limits,
) -> Result<Rootfs, Error> {
    let dir = cache.join(key);
    if let Some(rootfs) = unpacked(&dir) {
        return Ok(rootfs);
    }
    let image = Image::open(archive)?;
    let mut rootfs = Rootfs {
        digest: image.digest.clone(),
        path: dir.join("rootfs"),
        config: image.config.clone(),
        unpacked: false,
    };
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Write { path, source }
    };
    fs::create_dir_all(cache).map_err(write_err(cache))?;
    let building = tempfile::Builder::new()
        .prefix(BUILDING)
        .tempdir_in(cache)
        .map_err(write_err(cache))?;
    build(&image, building.path(), limits)?;
    rootfs.unpacked = true;
    match fs::rename(building.path(), &dir) {
        Ok(()) => {
            // The directory now lives under its final name; nothing is left to clean up.
            let _ = building.keep();
            Ok(rootfs)
        }
        // Another unpack of the same archive finished first: use its root, drop ours.
        Err(_) if dir.join("rootfs").is_dir() => Ok(rootfs),
        Err(e) => Err(Error::Write {
            path: dir,
            source: e,
        }),
    }
}

/// The root already unpacked in `dir`, with the config written beside it.
fn unpacked(dir: &Path) -> Option<Rootfs> {
    let root = dir.join("rootfs");
    if !root.is_dir() {
        return None;
    }
    let config: ImageConfig =
        serde_json::from_slice(&fs::read(dir.join("config.json")).ok()?).ok()?;
    Some(Rootfs {
        digest: fs::read_to_string(dir.join("digest")).unwrap_or_default(),
        path: root,
        config,
        unpacked: false,
    })
}

/// Removes the roots of `cache` left half-built (by a process killed mid-unpack) more than
/// `older_than` ago; a younger one may still be being built. Returns how many it removed.
pub fn remove_unfinished(cache: &Path, older_than: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(cache) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let building = entry.file_name().to_string_lossy().starts_with(BUILDING);
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if building && old && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Checks that the archive is an image that unpacks within `limits`, by unpacking it into a
/// temporary directory under `scratch` that is removed afterwards. Blocking.
pub fn check(archive: &Path, scratch: &Path, limits: Limits) -> Result<Image, Error> {
    let image = Image::open(archive)?;
    let building = tempfile::Builder::new()
        .prefix(BUILDING)
        .tempdir_in(scratch)
        .map_err(|source| Error::Write {
            path: scratch.to_owned(),
            source,
        })?;
    build(&image, building.path(), limits)?;
    Ok(image)
}

/// Unpacks the image into `dir/rootfs` and writes `dir/config.json`.
fn build(image: &Image, dir: &Path, limits: Limits) -> Result<(), Error> {
    let root = dir.join("rootfs");
    fs::create_dir(&root).map_err(|source| Error::Write {
        path: root.clone(),
        source,
    })?;
    unpack_image(image, &root, limits)?;
    make_mount_points(&root, MOUNT_POINTS)?;
    let config = serde_json::to_vec(&image.config).map_err(|e| Error::Write {
        path: dir.join("config.json"),
        source: io::Error::other(e),
    })?;
    fs::write(dir.join("config.json"), config).map_err(|source| Error::Write {
        path: dir.join("config.json"),
        source,
    })?;
    fs::write(dir.join("digest"), &image.digest).map_err(|source| Error::Write {
        path: dir.join("digest"),
        source,
    })
}
