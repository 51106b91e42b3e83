//! Builds tiny container images for tests, with no registry and no Docker: layers from a list
//! of entries (hostile ones included, written byte by byte so no tar library refuses them), a
//! config, and either a `docker save` archive or an OCI image layout in a tar.

#![allow(dead_code)]

use std::io::Write;

use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file with its mode.
    File(String, Vec<u8>, u32),
    /// A directory.
    Dir(String),
    /// A symbolic link and its target.
    Symlink(String, String),
    /// A hard link and the archive path it links to.
    HardLink(String, String),
    /// A character device node.
    CharDevice(String),
    /// A GNU sparse file of this apparent size holding no data.
    Sparse(String, u64),
}

/// One layer: its entries, and whether it is gzip-compressed.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    /// The entries in order.
    pub entries: Vec<Entry>,
    /// Compress it with gzip.
    pub gzip: bool,
    /// Bytes to use as the blob instead of the entries (a corrupt or foreign layer).
    pub raw: Option<Vec<u8>>,
}

impl Layer {
    /// A plain tar layer of these entries.
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            gzip: false,
            raw: None,
        }
    }

    /// The same layer, gzip-compressed.
    pub fn gzip(mut self) -> Layer {
        self.gzip = true;
        self
    }

    /// The layer's blob bytes.
    pub fn bytes(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut tar = Vec::new();
        for entry in &self.entries {
            append_entry(&mut tar, entry);
        }
        tar.extend_from_slice(&[0; 1024]);
        if !self.gzip {
            return tar;
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).expect("gzip in memory");
        encoder.finish().expect("gzip in memory")
    }
}

/// A whole image: layers and the config's run settings.
#[derive(Debug, Clone)]
pub struct Image {
    /// The layers, lowest first.
    pub layers: Vec<Layer>,
    /// The `config` object of the config blob (`Entrypoint`, `Cmd`, `Env`, ...).
    pub config: serde_json::Value,
}

impl Image {
    /// The config blob.
    pub fn config_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .expect("json")
    }

    /// The config digest (hex), the image's identity.
    pub fn digest(&self) -> String {
        sha256(&self.config_bytes())
    }

    /// A `docker save` archive: `manifest.json`, `<digest>.json`, `<n>/layer.tar`.
    pub fn docker_save(&self) -> Vec<u8> {
        let config = self.config_bytes();
        let config_name = format!("{}.json", sha256(&config));
        let mut out = Vec::new();
        let mut layer_names = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let name = format!("layer{i}/layer.tar");
            append_entry(&mut out, &Entry::File(name.clone(), layer.bytes(), 0o644));
            layer_names.push(name);
        }
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": ["test:latest"],
            "Layers": layer_names,
        }]);
        append_entry(&mut out, &Entry::File(config_name, config, 0o644));
        let manifest = serde_json::to_vec(&manifest).expect("json");
        append_entry(
            &mut out,
            &Entry::File("manifest.json".into(), manifest, 0o644),
        );
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// An OCI image layout in a tar: `oci-layout`, `index.json`, `blobs/sha256/…`.
    pub fn oci_layout(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let blob = |out: &mut Vec<u8>, bytes: Vec<u8>| -> serde_json::Value {
            let digest = sha256(&bytes);
            let size = bytes.len();
            append_entry(
                out,
                &Entry::File(format!("blobs/sha256/{digest}"), bytes, 0o644),
            );
            serde_json::json!({"digest": format!("sha256:{digest}"), "size": size})
        };
        let mut layers = Vec::new();
        for layer in &self.layers {
            let mut descriptor = blob(&mut out, layer.bytes());
            descriptor["mediaType"] = if layer.gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip".into()
            } else {
                "application/vnd.oci.image.layer.v1.tar".into()
            };
            layers.push(descriptor);
        }
        let mut config = blob(&mut out, self.config_bytes());
        config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        let mut manifest = blob(&mut out, serde_json::to_vec(&manifest).expect("json"));
        manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        manifest["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
        let index = serde_json::to_vec(&index).expect("json");
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
        append_entry(&mut out, &Entry::File("oci-layout".into(), layout, 0o644));
        append_entry(&mut out, &Entry::File("index.json".into(), index, 0o644));
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

/// Hex sha256.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Appends one entry (a GNU header written field by field, then its data padded to 512).
fn append_entry(out: &mut Vec<u8>, entry: &Entry) {
    let (path, kind, data, link, mode, sparse): (&str, u8, &[u8], &str, u32, Option<u64>) =
        match entry {
            Entry::File(p, d, m) => (p, b'0', d, "", *m, None),
            Entry::Dir(p) => (p, b'5', &[], "", 0o755, None),
            Entry::Symlink(p, t) => (p, b'2', &[], t, 0o777, None),
            Entry::HardLink(p, t) => (p, b'1', &[], t, 0o644, None),
            Entry::CharDevice(p) => (p, b'3', &[], "", 0o666, None),
            Entry::Sparse(p, size) => (p, b'S', &[], "", 0o644, Some(*size)),
        };
    let mut header = [0u8; 512];
    assert!(path.len() < 100 && link.len() < 100, "short names only");
    header[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..265].copy_from_slice(b"ustar  \0");
    if let Some(size) = sparse {
        // One empty chunk at the end: the file is `size` bytes of holes.
        octal(&mut header[386..398], size);
        octal(&mut header[398..410], 0);
        octal(&mut header[483..495], size);
    }
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    octal(&mut header[148..155], sum);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Writes `value` as NUL-terminated zero-padded octal filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    assert!(text.len() < field.len(), "{value} does not fit");
    field[..text.len()].copy_from_slice(text.as_bytes());
    field[text.len()] = 0;
}
