//! The image archive: the outer tar indexed by path, its manifest found (a `docker save`
//! `manifest.json`, or an OCI layout's `index.json`, through nested indexes if need be), its
//! config read, and its blobs checked against the digests that name them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Error, ImageConfig};

/// The most a JSON document of the image (manifest, index, config) may weigh.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// Where one file of the outer tar lies.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

/// One layer of an image, as found in the archive.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    /// Its path in the archive (named in errors).
    pub name: String,
    span: Span,
    /// The sha256 (hex) the format names it by, checked while it is read.
    pub digest: Option<String>,
    /// Its media type, when the format gives one.
    pub media_type: Option<String>,
}

/// An image archive, read and checked as far as its manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    path: PathBuf,
    /// The sha256 (hex) of the config blob: the image's identity and its cache key.
    pub digest: String,
    /// What the image asks to run.
    pub config: ImageConfig,
    pub(super) layers: Vec<Layer>,
}

/// A `docker save` manifest entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// An OCI content descriptor.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// An OCI index or manifest: an index lists `manifests`, a manifest has `config` and `layers`.
#[derive(Deserialize)]
struct OciDocument {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

impl Image {
    /// Opens an image archive: finds its manifest, reads and checks its config, and lists its
    /// layers (their contents are checked as they are read).
    pub fn open(path: &Path) -> Result<Image, Error> {
        let read_err = |source| Error::ReadArchive {
            path: path.to_owned(),
            source,
        };
        let files =
            index_tar(File::open(path).map_err(read_err)?).map_err(|e| Error::NotAnImage {
                reason: format!("it is not a readable tar archive ({e})"),
            })?;
        let reader = Blobs { path, files };
        let (config_name, config_digest, layers) = if reader.files.contains_key("manifest.json") {
            docker_manifest(&reader)?
        } else if reader.files.contains_key("index.json") {
            oci_manifest(&reader)?
        } else {
            return Err(Error::NotAnImage {
                reason: "it holds neither manifest.json (docker save) nor index.json (OCI layout)"
                    .into(),
            });
        };
        let bytes = reader.read_small(&config_name)?;
        let digest = sha256_hex(&bytes);
        if let Some(expected) = config_digest
            && expected != digest
        {
            return Err(Error::DigestMismatch {
                name: config_name,
                expected,
                actual: digest,
            });
        }
        Ok(Image {
            path: path.to_owned(),
            digest,
            config: ImageConfig::parse(&bytes)?,
            layers,
        })
    }

    /// A reader over one layer's blob as stored (compressed or not).
    pub(super) fn layer_reader(&self, layer: &Layer) -> Result<impl Read + use<>, Error> {
        let read_err = |source| Error::ReadArchive {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(read_err)?;
        file.seek(SeekFrom::Start(layer.span.offset))
            .map_err(read_err)?;
        Ok(file.take(layer.span.size))
    }
}

/// Refuses a blob whose hash is not the one expected.
pub(super) fn check_digest(name: &str, expected: &str, actual: &str) -> Result<(), Error> {
    if expected == actual {
        return Ok(());
    }
    Err(Error::DigestMismatch {
        name: name.to_owned(),
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    })
}

/// The archive's files by normalized path.
struct Blobs<'a> {
    path: &'a Path,
    files: HashMap<String, Span>,
}

impl Blobs<'_> {
    fn span(&self, name: &str) -> Result<Span, Error> {
        self.files
            .get(name)
            .copied()
            .ok_or_else(|| Error::MissingBlob { name: name.into() })
    }

    /// Reads a small file (a JSON document) whole.
    fn read_small(&self, name: &str) -> Result<Vec<u8>, Error> {
        let span = self.span(name)?;
        if span.size > MAX_JSON_BYTES {
            return Err(Error::NotAnImage {
                reason: format!("{name} is {} bytes, over {MAX_JSON_BYTES}", span.size),
            });
        }
        let read_err = |source| Error::ReadArchive {
            path: self.path.to_owned(),
            source,
        };
        let mut file = File::open(self.path).map_err(read_err)?;
        file.seek(SeekFrom::Start(span.offset)).map_err(read_err)?;
        let mut bytes = Vec::with_capacity(span.size as usize);
        file.take(span.size)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        Ok(bytes)
    }

    /// Reads a JSON document.
    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        serde_json::from_slice(&self.read_small(name)?).map_err(|e| Error::ParseJson {
            what: name.into(),
            reason: e.to_string(),
        })
    }

    /// Reads a blob named by descriptor, checking its digest.
    fn by_digest(&self, descriptor: &Descriptor) -> Result<(String, Vec<u8>), Error> {
        let (name, expected) = blob_name(&descriptor.digest)?;
        let bytes = self.read_small(&name)?;
        check_digest(&name, &expected, &sha256_hex(&bytes))?;
        Ok((name, bytes))
    }

    fn layer(
        &self,
        name: String,
        digest: Option<String>,
        media_type: Option<String>,
    ) -> Result<Layer, Error> {
        let span = self.span(&name)?;
        Ok(Layer {
            name,
            span,
            digest,
            media_type,
        })
    }
}

/// The config's name and expected digest, and the layers, of a `docker save` archive.
type Found = (String, Option<String>, Vec<Layer>);

fn docker_manifest(blobs: &Blobs) -> Result<Found, Error> {
    let mut manifests: Vec<DockerManifest> = blobs.json("manifest.json")?;
    if manifests.len() != 1 {
        return Err(Error::NotAnImage {
            reason: format!(
                "manifest.json lists {} images; save exactly one",
                manifests.len()
            ),
        });
    }
    let manifest = manifests.remove(0);
    let config = normalize(&manifest.config).ok_or_else(|| Error::MissingBlob {
        name: manifest.config.clone(),
    })?;
    let layers = manifest
        .layers
        .iter()
        .map(|name| {
            let name = normalize(name).ok_or_else(|| Error::MissingBlob { name: name.clone() })?;
            let digest = digest_of_path(&name);
            blobs.layer(name, digest, None)
        })
        .collect::<Result<_, _>>()?;
    let config_digest = digest_of_path(&config);
    Ok((config, config_digest, layers))
}

fn oci_manifest(blobs: &Blobs) -> Result<Found, Error> {
    if !blobs.files.contains_key("oci-layout") {
        return Err(Error::NotAnImage {
            reason: "index.json without an oci-layout file".into(),
        });
    }
    let mut document: OciDocument = blobs.json("index.json")?;
    for _ in 0..MAX_INDEX_DEPTH {
        let Some(manifests) = document.manifests.take() else {
            return manifest_layers(blobs, document);
        };
        let picked = pick_manifest(manifests)?;
        let (name, bytes) = blobs.by_digest(&picked)?;
        document = serde_json::from_slice(&bytes).map_err(|e| Error::ParseJson {
            what: name,
            reason: e.to_string(),
        })?;
    }
    Err(Error::NotAnImage {
        reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH}"),
    })
}

fn manifest_layers(blobs: &Blobs, manifest: OciDocument) -> Result<Found, Error> {
    let config = manifest.config.ok_or_else(|| Error::NotAnImage {
        reason: "the manifest has no config".into(),
    })?;
    let (config_name, config_digest) = blob_name(&config.digest)?;
    let layers = manifest
        .layers
        .into_iter()
        .map(|layer| {
            let (name, digest) = blob_name(&layer.digest)?;
            blobs.layer(name, Some(digest), layer.media_type)
        })
        .collect::<Result<_, _>>()?;
    Ok((config_name, Some(config_digest), layers))
}

/// The only manifest of an index, or its one linux/amd64 manifest.
fn pick_manifest(mut manifests: Vec<Descriptor>) -> Result<Descriptor, Error> {
    if manifests.len() == 1 {
        return Ok(manifests.remove(0));
    }
    let count = manifests.len();
    let mut amd64: Vec<Descriptor> = manifests
        .into_iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .collect();
    if amd64.len() == 1 {
        return Ok(amd64.remove(0));
    }
    Err(Error::AmbiguousIndex { count })
}

/// `sha256:HEX` → (`blobs/sha256/HEX`, `HEX`).
fn blob_name(digest: &str) -> Result<(String, String), Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::NotAnImage {
            reason: format!("unsupported digest {digest:?} (sha256 only)"),
        })?;
    let hex = hex.to_ascii_lowercase();
    Ok((format!("blobs/sha256/{hex}"), hex))
}

/// The digest a path names: `blobs/sha256/HEX` or `HEX.json`.
fn digest_of_path(name: &str) -> Option<String> {
    let candidate = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    (candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| candidate.to_ascii_lowercase())
}

/// A path inside the archive without `./`, or `None` if it climbs out of it.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Lists the outer tar's files; symbolic and hard links between them (older `docker save`
/// archives link repeated layers) resolve to their targets.
fn index_tar(file: File) -> std::io::Result<HashMap<String, Span>> {
    let mut files = HashMap::new();
    let mut links = Vec::new();
    let guard = super::guard::Guard::default();
    let mut archive = tar::Archive::new(super::guard::Guarded::new(file, guard.clone()));
    let mut entries = archive.entries_with_seek()?;
    loop {
        // Bodies are sought past, never read: every byte read here is a header.
        guard.between_entries();
        let Some(entry) = entries.next() else {
            break;
        };
        let entry = entry?;
        let Some(name) = entry.path()?.to_str().and_then(normalize) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let span = Span {
                offset: entry.raw_file_position(),
                size: entry.size(),
            };
            files.insert(name, span);
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name()? else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            let target = if kind.is_symlink() {
                let parent = Path::new(&name).parent().unwrap_or(Path::new(""));
                parent.join(target).to_string_lossy().into_owned()
            } else {
                target
            };
            links.push((name, target));
        }
    }
    for _ in 0..MAX_INDEX_DEPTH {
        for (name, target) in &links {
            if let Some(span) = normalize(target).and_then(|t| files.get(&t).copied()) {
                files.entry(name.clone()).or_insert(span);
            }
        }
    }
    Ok(files)
}

/// Lower-case hex of a digest.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
