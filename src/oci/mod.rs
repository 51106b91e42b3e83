//! Container images as functions: reading an image archive and unpacking its root filesystem.
//!
//! An image comes as one tar: a `docker save` archive (`manifest.json`) or an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`), as `skopeo copy … oci-archive:` writes.
//! `archive.rs` finds the manifest, the config and the layers inside it and checks every blob
//! against the digest that names it; `config.rs` reads what the image asks to run; `unpack.rs`
//! applies the layers in order, whiteouts included, refusing any entry that would reach outside
//! the root it builds; `cache.rs` keeps one unpacked root per config digest, built in a
//! temporary directory and renamed into place only when complete.
//!
//! A pure library: it knows nothing of the broker, the worker protocol or the sandbox.

mod archive;
mod cache;
mod config;
mod guard;
mod unpack;

use std::path::PathBuf;

pub use archive::Image;
pub use cache::{Rootfs, check, ensure_rootfs, remove_unfinished};
pub use config::ImageConfig;

/// How much one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The total of the entries' declared sizes (a sparse file counts at its full size).
    pub max_bytes: u64,
    /// The number of entries over every layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_entries: 200_000,
        }
    }
}

/// Why an image could not be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The archive file could not be opened or read.
    #[error("cannot read the image archive {path}: {source}")]
    ReadArchive {
        /// The archive.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The archive is neither a `docker save` archive nor an OCI image layout.
    #[error("not an image archive: {reason}")]
    NotAnImage {
        /// What is missing or wrong.
        reason: String,
    },
    /// A JSON document of the image (manifest, index, config) is malformed.
    #[error("cannot parse {what} of the image: {reason}")]
    ParseJson {
        /// Which document.
        what: String,
        /// What the parser said.
        reason: String,
    },
    /// A blob the image refers to is not in the archive.
    #[error("the image refers to {name}, which is not in the archive")]
    MissingBlob {
        /// The blob's path in the archive.
        name: String,
    },
    /// A blob's content does not hash to the digest that names it.
    #[error(
        "blob {name} does not match its digest sha256:{expected} (it hashes to sha256:{actual})"
    )]
    DigestMismatch {
        /// The blob's path in the archive.
        name: String,
        /// The digest the image names.
        expected: String,
        /// The digest of what the archive holds.
        actual: String,
    },
    /// A layer is compressed or typed in a way faasd does not read.
    #[error("layer {name}: unsupported layer format {media_type} (plain or gzip tar layers only)")]
    UnsupportedLayer {
        /// The layer's path in the archive.
        name: String,
        /// Its media type, or what its first bytes say it is.
        media_type: String,
    },
    /// An index lists several images and none is the one to pick.
    #[error("the image index lists {count} manifests and no single linux/amd64 one")]
    AmbiguousIndex {
        /// How many it lists.
        count: usize,
    },
    /// A layer entry is refused: it would escape the root or is not allowed in one.
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// The layer's path in the archive.
        layer: String,
        /// The entry's path in the layer.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A layer's tar stream is malformed.
    #[error("layer {layer}: cannot read its tar stream: {source}")]
    ReadLayer {
        /// The layer's path in the archive.
        layer: String,
        /// Why.
        source: std::io::Error,
    },
    /// The image unpacks to more than [`Limits::max_bytes`].
    #[error("layer {layer}: entry {entry:?} takes the image past its size limit of {limit} bytes")]
    TooLarge {
        /// The layer's path in the archive.
        layer: String,
        /// The entry that went over.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The image has more entries than [`Limits::max_entries`].
    #[error("layer {layer}: the image has more than {limit} entries")]
    TooManyEntries {
        /// The layer's path in the archive.
        layer: String,
        /// The limit.
        limit: u64,
    },
    /// The unpacked tree could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
#[path = "../../tests/common/image.rs"]
mod test_image;

#[cfg(test)]
mod tests;
