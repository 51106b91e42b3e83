//! The image library against synthetic images: both archive formats, gzip layers, whiteouts,
//! and every refusal, each checked to change nothing outside the cache.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::test_image::{Entry, Image as Spec, Layer};
use super::{Error, Limits, check};

/// [`super::ensure_rootfs`] keyed, as a worker keys it, by the archive's own hash.
fn ensure(
    archive: &std::path::Path,
    cache: &std::path::Path,
    limits: Limits,
) -> Result<super::Rootfs, Error> {
    super::ensure_rootfs(archive, &key_of(archive), cache, limits)
}

/// The archive's own hash (hex): the name of its root in the cache.
fn key_of(archive: &std::path::Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(archive).expect("read the archive");
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(path: &str, text: &str) -> Entry {
    Entry::File(path.into(), text.as_bytes().to_vec(), 0o644)
}

fn spec(layers: Vec<Layer>) -> Spec {
    Spec {
        layers,
        config: serde_json::json!({"Cmd": ["/bin/app"], "Env": ["A=1"], "WorkingDir": "/w"}),
    }
}

/// A scratch area: `cache/` for the unpack, `outside/` with a file that must stay untouched.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret"), "keep").unwrap();
        Scratch { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn archive(&self, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("image.tar");
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Every path under the scratch area outside the cache, with file contents.
    fn outside(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut seen = Vec::new();
        walk(self.dir.path(), &self.cache(), &mut seen);
        seen.sort();
        seen
    }

    /// What the cache holds at its top level.
    fn cache_names(&self) -> Vec<String> {
        match fs::read_dir(self.cache()) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn walk(dir: &Path, skip: &Path, seen: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            seen.push((path.clone(), Vec::new()));
            walk(&path, skip, seen);
        } else {
            seen.push((path.clone(), fs::read(&path).unwrap_or_default()));
        }
    }
}

#[test]
fn a_docker_save_archive_unpacks_with_its_config() {
    let scratch = Scratch::new();
    let image = spec(vec![Layer::new(vec![
        Entry::Dir("bin".into()),
        Entry::File("bin/app".into(), b"#!/bin/sh\n".to_vec(), 0o4755),
        Entry::Symlink("bin/sh".into(), "/bin/app".into()),
        Entry::HardLink("bin/again".into(), "bin/app".into()),
        file("etc/motd", "hi"),
    ])]);
    let archive = scratch.archive(&image.docker_save());
    let rootfs = ensure(&archive, &scratch.cache(), Limits::default()).unwrap();
    assert_eq!(rootfs.digest, image.digest());
    assert_eq!(
        rootfs.path,
        scratch.cache().join(key_of(&archive)).join("rootfs")
    );
    assert_eq!(rootfs.config.argv(), ["/bin/app"]);
    assert_eq!(rootfs.config.env, ["A=1"]);
    assert_eq!(rootfs.config.working_dir, "/w");
    let app = fs::metadata(rootfs.path.join("bin/app")).unwrap();
    assert_eq!(app.permissions().mode() & 0o7777, 0o755, "set-uid dropped");
    assert_eq!(
        fs::read_link(rootfs.path.join("bin/sh")).unwrap(),
        Path::new("/bin/app"),
        "absolute link targets are kept as written"
    );
    assert_eq!(
        fs::read(rootfs.path.join("bin/again")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.path.join("etc/motd")).unwrap(),
        "hi"
    );
    assert_eq!(
        scratch.cache_names(),
        [key_of(&archive)],
        "no temporary left"
    );
    // A second call finds it in the cache.
    assert!(rootfs.unpacked);
    let again = ensure(&archive, &scratch.cache(), Limits::default()).unwrap();
    assert_eq!(again.path, rootfs.path);
    assert!(!again.unpacked, "found in the cache");
    assert_eq!((again.digest, again.config), (rootfs.digest, rootfs.config));
}

#[test]
fn an_oci_layout_with_gzip_layers_applies_whiteouts() {
    let scratch = Scratch::new();
    let lower = Layer::new(vec![
        file("a/x", "x"),
        file("a/y", "y"),
        file("b/z", "z"),
        Entry::Dir("c".into()),
        file("c/deep/f", "f"),
    ])
    .gzip();
    let upper = Layer::new(vec![
        Entry::File("a/.wh.x".into(), Vec::new(), 0o644),
        Entry::Dir("b".into()),
        file("b/new", "n"),
        Entry::File("b/.wh..wh..opq".into(), Vec::new(), 0o644),
        Entry::File(".wh.c".into(), Vec::new(), 0o644),
    ]);
    let image = spec(vec![lower, upper]);
    let archive = scratch.archive(&image.oci_layout());
    let rootfs = ensure(&archive, &scratch.cache(), Limits::default()).unwrap();
    let root = &rootfs.path;
    assert!(!root.join("a/x").exists(), "whiteout removes a/x");
    assert_eq!(fs::read_to_string(root.join("a/y")).unwrap(), "y");
    assert!(
        !root.join("b/z").exists(),
        "opaque whiteout hides the lower b/z"
    );
    assert_eq!(
        fs::read_to_string(root.join("b/new")).unwrap(),
        "n",
        "upper entry kept"
    );
    assert!(
        !root.join("c").exists(),
        "a whited-out directory goes whole"
    );
    assert!(!root.join("a/.wh.x").exists() && !root.join("b/.wh..wh..opq").exists());
}

#[test]
fn concurrent_unpacks_of_one_image_agree() {
    let scratch = Scratch::new();
    let image = spec(vec![Layer::new(vec![file("f", "1")])]);
    let archive = scratch.archive(&image.oci_layout());
    let cache = scratch.cache();
    let roots: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| ensure(&archive, &cache, Limits::default()).unwrap().path))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(roots.iter().all(|r| r == &roots[0]));
    assert_eq!(fs::read_to_string(roots[0].join("f")).unwrap(), "1");
    assert_eq!(
        scratch.cache_names(),
        [key_of(&archive)],
        "losers leave nothing"
    );
}

/// Unpacks a one-layer image of `entries` in both formats and returns the error, after checking
/// that nothing outside the cache changed and nothing in it looks unpacked.
fn refused(entries: Vec<Entry>, limits: Limits) -> String {
    let mut message = String::new();
    for oci in [false, true] {
        let scratch = Scratch::new();
        let image = spec(vec![Layer::new(entries.clone())]);
        let bytes = if oci {
            image.oci_layout()
        } else {
            image.docker_save()
        };
        let archive = scratch.archive(&bytes);
        let before = scratch.outside();
        let err = ensure(&archive, &scratch.cache(), limits).unwrap_err();
        assert!(
            scratch.outside() == before,
            "something outside the cache changed"
        );
        assert!(
            scratch.cache_names().is_empty(),
            "{:?}",
            scratch.cache_names()
        );
        let checked = check(&archive, &scratch.cache(), limits).unwrap_err();
        assert_eq!(checked.to_string(), err.to_string());
        assert!(
            scratch.outside() == before,
            "something outside the cache changed"
        );
        assert!(
            scratch.cache_names().is_empty(),
            "{:?}",
            scratch.cache_names()
        );
        message = err.to_string();
    }
    message
}

#[test]
fn dot_dot_and_absolute_paths_are_refused() {
    let err = refused(vec![file("../outside/secret", "owned")], Limits::default());
    assert!(
        err.contains("\"../outside/secret\"") && err.contains("`..`"),
        "{err}"
    );
    let err = refused(vec![file("a/../../x", "owned")], Limits::default());
    assert!(err.contains("`..`"), "{err}");
    let err = refused(vec![file("/etc/passwd", "owned")], Limits::default());
    assert!(
        err.contains("\"/etc/passwd\"") && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn writing_through_a_symbolic_link_is_refused() {
    for target in ["/", "../../outside", "../outside"] {
        let err = refused(
            vec![
                Entry::Symlink("escape".into(), target.into()),
                file("escape/secret", "owned"),
            ],
            Limits::default(),
        );
        assert!(
            err.contains("\"escape/secret\"")
                && err.contains("passes through the symbolic link escape"),
            "{err}"
        );
    }
}

#[test]
fn hard_links_out_of_the_root_or_through_links_are_refused() {
    let err = refused(
        vec![Entry::HardLink("h".into(), "../outside/secret".into())],
        Limits::default(),
    );
    assert!(
        err.contains("hard link target") && err.contains("`..`"),
        "{err}"
    );
    let err = refused(
        vec![Entry::HardLink("h".into(), "/etc/passwd".into())],
        Limits::default(),
    );
    assert!(
        err.contains("hard link target") && err.contains("absolute"),
        "{err}"
    );
    let err = refused(
        vec![
            Entry::Symlink("up".into(), "/".into()),
            Entry::HardLink("h".into(), "up/etc/passwd".into()),
        ],
        Limits::default(),
    );
    assert!(err.contains("passes through the symbolic link up"), "{err}");
}

#[test]
fn device_nodes_are_refused() {
    let err = refused(vec![Entry::CharDevice("dev/mem".into())], Limits::default());
    assert!(
        err.contains("\"dev/mem\"") && err.contains("device nodes"),
        "{err}"
    );
}

#[test]
fn a_sparse_file_counts_at_its_full_size() {
    let limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 100,
    };
    let err = refused(vec![Entry::Sparse("big".into(), 2 << 30)], limits);
    assert!(
        err.contains("\"big\"") && err.contains("size limit of 1073741824"),
        "{err}"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 3,
    };
    let entries = (0..5).map(|i| file(&format!("f{i}"), "x")).collect();
    let err = refused(entries, limits);
    assert!(err.contains("more than 3 entries"), "{err}");
}

#[test]
fn a_tampered_layer_fails_its_digest_and_a_zstd_layer_is_refused() {
    let scratch = Scratch::new();
    let image = spec(vec![Layer::new(vec![file("f", "marker-text")])]);
    let mut bytes = image.oci_layout();
    let at = bytes.windows(11).position(|w| w == b"marker-text").unwrap();
    bytes[at] = b'M';
    let err = ensure(
        &scratch.archive(&bytes),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(scratch.cache_names().is_empty());

    let mut zstd = Layer::new(Vec::new());
    zstd.raw = Some(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]);
    let image = spec(vec![zstd]);
    let err = ensure(
        &scratch.archive(&image.docker_save()),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("zstd"), "{err}");
}

#[test]
fn an_archive_that_is_not_an_image_is_refused() {
    let scratch = Scratch::new();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &b"hi"[..])
        .unwrap();
    let bytes = tar.into_inner().unwrap();
    let err = ensure(
        &scratch.archive(&bytes),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not an image archive"), "{err}");
    let err = ensure(
        &scratch.archive(b"junk"),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not an image archive"), "{err}");
}

/// An OCI layout whose `index.json` lists `outer` (descriptors built by `make` from the digest
/// of a one-file image's manifest and of an inner index listing it for two platforms).
fn layout_with_indexes(make: impl Fn(&str, &str) -> serde_json::Value) -> (Vec<u8>, String) {
    use super::test_image::sha256;
    let layer = Layer::new(vec![file("f", "nested")]).bytes();
    let config = spec(Vec::new()).config_bytes();
    let descriptor = |bytes: &[u8]| serde_json::json!({"digest": format!("sha256:{}", sha256(bytes)), "size": bytes.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "config": descriptor(&config),
        "layers": [descriptor(&layer)],
    }))
    .unwrap();
    let platform = |arch: &str| {
        let mut d = descriptor(&manifest);
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        d
    };
    let inner = serde_json::to_vec(
        &serde_json::json!({"manifests": [platform("arm64"), platform("amd64")]}),
    )
    .unwrap();
    let index = make(&sha256(&manifest), &sha256(&inner));
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: String, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    };
    for blob in [&layer, &config, &manifest, &inner] {
        add(format!("blobs/sha256/{}", sha256(blob)), blob);
    }
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &serde_json::to_vec(&index).unwrap());
    (tar.into_inner().unwrap(), sha256(&config))
}

#[test]
fn a_nested_index_gives_its_linux_amd64_manifest_and_an_ambiguous_one_is_refused() {
    let scratch = Scratch::new();
    let (bytes, digest) = layout_with_indexes(
        |_, inner| serde_json::json!({"manifests": [{"digest": format!("sha256:{inner}"), "size": 1}]}),
    );
    let rootfs = ensure(
        &scratch.archive(&bytes),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap();
    assert_eq!(rootfs.digest, digest);
    assert_eq!(fs::read_to_string(rootfs.path.join("f")).unwrap(), "nested");

    let (bytes, _) = layout_with_indexes(|manifest, _| {
        let d = serde_json::json!({"digest": format!("sha256:{manifest}"), "size": 1});
        serde_json::json!({"manifests": [d.clone(), d]})
    });
    let scratch = Scratch::new();
    let err = ensure(
        &scratch.archive(&bytes),
        &scratch.cache(),
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::AmbiguousIndex { count: 2 }), "{err}");
    assert!(err.to_string().contains("no single linux/amd64"), "{err}");
}

#[test]
fn only_old_unfinished_roots_are_removed() {
    let scratch = Scratch::new();
    let cache = scratch.cache();
    for name in [".unpack-old", ".unpack-new", "0123"] {
        fs::create_dir_all(cache.join(name).join("rootfs")).unwrap();
    }
    let hours_ago = nix::sys::time::TimeSpec::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 7200,
        0,
    );
    for name in [".unpack-old", "0123"] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &cache.join(name),
            &hours_ago,
            &hours_ago,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let removed = super::remove_unfinished(&cache, std::time::Duration::from_secs(3600));
    assert_eq!(removed, 1);
    let mut left = scratch.cache_names();
    left.sort();
    assert_eq!(left, [".unpack-new", "0123"]);
}

#[test]
fn two_archives_with_one_config_get_roots_of_their_own() {
    // The second archive copies the first's config (so its config digest) over other layers:
    // it must not be served the first one's root, nor the first its.
    let scratch = Scratch::new();
    let first = spec(vec![Layer::new(vec![file("whose", "first")])]);
    let mut second = spec(vec![Layer::new(vec![file("whose", "second")])]);
    second.config = first.config.clone();
    assert_eq!(first.digest(), second.digest(), "one config");
    let cache = scratch.cache();
    let first_root = ensure(
        &scratch.archive(&first.docker_save()),
        &cache,
        Limits::default(),
    )
    .unwrap()
    .path;
    let archive = scratch.archive(&second.docker_save());
    let second_root = ensure(&archive, &cache, Limits::default()).unwrap().path;
    assert_ne!(first_root, second_root);
    assert_eq!(
        fs::read_to_string(first_root.join("whose")).unwrap(),
        "first"
    );
    assert_eq!(
        fs::read_to_string(second_root.join("whose")).unwrap(),
        "second"
    );
}

/// A layer whose one entry has a GNU long name of `name_bytes` bytes (the `tar` crate reads such a
/// name whole before it yields the entry).
fn long_name_layer(name_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(name_bytes as u64);
    header.set_mode(0o644);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + name_bytes.div_ceil(512) * 512, b'a');
    let mut file = tar::Header::new_gnu();
    file.set_path("x").unwrap();
    file.set_size(0);
    file.set_mode(0o644);
    file.set_cksum();
    out.extend_from_slice(file.as_bytes());
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn a_long_name_past_the_header_bound_is_refused_before_it_is_read_whole() {
    let scratch = Scratch::new();
    let mut layer = Layer::new(Vec::new());
    layer.raw = Some(long_name_layer(8 << 20));
    let archive = scratch.archive(&spec(vec![layer]).docker_save());
    let err = ensure(&archive, &scratch.cache(), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("long name"), "{err}");
    // A long name of a sane length is fine.
    let mut layer = Layer::new(Vec::new());
    layer.raw = Some(long_name_layer(200));
    let archive = scratch.archive(&spec(vec![layer]).docker_save());
    ensure(&archive, &scratch.cache(), Limits::default()).unwrap();
}

#[test]
fn an_opaque_whiteout_keeps_what_its_layer_put_under_it_and_nothing_lower() {
    // The upper layer writes b/sub/new without listing b/sub, then makes b opaque: b/sub/new
    // stays, the lower b/sub/old and b/top go.
    let scratch = Scratch::new();
    let lower = Layer::new(vec![file("b/sub/old", "o"), file("b/top", "t")]);
    let upper = Layer::new(vec![
        file("b/sub/new", "n"),
        Entry::File("b/.wh..wh..opq".into(), Vec::new(), 0o644),
    ]);
    let archive = scratch.archive(&spec(vec![lower, upper]).docker_save());
    let rootfs = ensure(&archive, &scratch.cache(), Limits::default()).unwrap();
    let root = &rootfs.path;
    assert_eq!(fs::read_to_string(root.join("b/sub/new")).unwrap(), "n");
    assert!(
        !root.join("b/sub/old").exists(),
        "a lower file under a kept directory stayed"
    );
    assert!(!root.join("b/top").exists(), "a lower file stayed");
}
