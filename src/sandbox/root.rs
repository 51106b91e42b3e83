//! Step 3 of the shim, the private filesystem: a fresh tmpfs root holding read-only binds of the
//! host's system paths, a few files of `/etc`, the device nodes a program needs and the paths
//! the runtime needs; a size-capped writable tmpfs as `/tmp`, the working directory; a fresh
//! `/proc`; nothing else of the host. A zygote builds the read-only part once per set of paths
//! as a template root ([`fill_template`]) that executors copy; without one each builds its own.

use std::path::{Path, PathBuf};

use nix::libc;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::sys::{self, Error, call as step};

/// Where the function's writable tmpfs is mounted, also its working directory.
pub const WORKDIR: &str = "/tmp";

/// Where the sandbox shows the function's bundle.
pub const BUNDLE: &str = "/faasd/bundle";

/// What the sandbox shows: host paths read-only at paths inside, or an image's own root.
pub(super) struct View<'a> {
    /// Host paths bound read-only, each at the given path inside.
    pub read_only: &'a [(PathBuf, PathBuf)],
    /// An unpacked image that is the root itself (its `tmp`, `proc`, `dev` and `.old-root`
    /// directories exist: the unpack made them as mount points).
    pub rootfs: Option<&'a Path>,
    /// Where the function starts instead of `/tmp`.
    pub workdir: Option<&'a Path>,
}

/// The function's writable space (`/tmp`): its size and owner.
pub(super) struct Workspace {
    /// Its size, in bytes.
    pub tmpfs_bytes: u64,
    /// Its owner's uid.
    pub uid: u32,
    /// Its owner's gid.
    pub gid: u32,
}

/// Host directories every sandbox sees read-only (symlinks among them are recreated).
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Files of the host's `/etc` a program may need; nothing else of `/etc` (no `shadow`).
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/alternatives",
];

/// Device nodes bound into the sandbox's `/dev`.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Binds `source` at `target`, read-only, without set-uid (and without devices unless
/// `devices`).
fn bind_read_only(source: &Path, target: &Path, devices: bool) -> Result<(), Error> {
    let nodev = if devices {
        MsFlags::empty()
    } else {
        MsFlags::MS_NODEV
    };
    let none: Option<&str> = None;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, none, flags, none).map_err(|errno| Error::Path {
        call: "bind mount",
        path: source.to_owned(),
        errno,
    })?;
    let flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | nodev;
    mount(none, target, none, flags, none).map_err(|errno| Error::Path {
        call: "read-only remount",
        path: target.to_owned(),
        errno,
    })
}

/// Makes `inside` (a path under the new root) a mount point for `host`: a directory or an empty
/// file, or the same symlink (returns `None` then, and for a host path that does not exist).
fn mirror(host: &Path, inside: &Path, root: &Path) -> Result<Option<PathBuf>, Error> {
    let Ok(meta) = std::fs::symlink_metadata(host) else {
        return Ok(None);
    };
    let inside = root.join(inside.strip_prefix("/").unwrap_or(inside));
    if let Some(parent) = inside.parent() {
        mkdir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(host).map_err(|e| sys::on_path("readlink", host, &e))?;
        if !inside.exists() {
            std::os::unix::fs::symlink(&target, &inside)
                .map_err(|e| sys::on_path("symlink", &inside, &e))?;
        }
        return Ok(None);
    }
    if meta.is_dir() {
        mkdir_all(&inside)?;
    } else if !inside.exists() {
        std::fs::File::create(&inside).map_err(|e| sys::on_path("creat", &inside, &e))?;
    }
    Ok(Some(inside))
}

/// Creates `dir` and its parents.
fn mkdir_all(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| sys::on_path("mkdir", dir, &e))
}

/// The private filesystem view, then `pivot_root` into it: an image's root, or over a template
/// a zygote built once, or built here from nothing; with `read_only` bound in and the
/// workspace mounted.
pub(super) fn build_root(
    view: &View<'_>,
    workspace: &Workspace,
    template: Option<&Path>,
) -> Result<(), Error> {
    let read_only = view.read_only;
    let none: Option<&str> = None;
    step(
        "mount(make / private)",
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    let root = match (view.rootfs, template) {
        (Some(image), _) => {
            let root =
                std::env::current_dir().map_err(|e| sys::on_path("getcwd", Path::new("."), &e))?;
            image_root(image, &root)?;
            root
        }
        (None, Some(template)) => template.to_owned(),
        (None, None) => {
            // A tmpfs over the executor's fresh, empty working directory (the worker made it;
            // no path the sandbox shows lies beneath it), visible only in this namespace.
            let root =
                std::env::current_dir().map_err(|e| sys::on_path("getcwd", Path::new("."), &e))?;
            let everything: Vec<_> = read_only.iter().collect();
            fill_template(&root, &everything, None)?;
            root
        }
    };
    mount_workspace(workspace, &root)?;
    bind_into_workspace(read_only, &root)?;
    if template.is_some() {
        // The template has a mount point for the bundle, of the right kind.
        for (host, inside) in read_only
            .iter()
            .filter(|(_, inside)| inside == Path::new(BUNDLE))
        {
            let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
            bind_read_only(host, &target, false)?;
        }
    }
    enter_root(&root)?;
    match view.workdir {
        Some(dir) => nix::unistd::chdir(dir).map_err(|errno| Error::Path {
            call: "chdir(working directory)",
            path: dir.to_owned(),
            errno,
        }),
        None => Ok(()),
    }
}

/// An image's unpacked root at `root`: bound read-only (no set-uid, no devices), then a small
/// tmpfs as `/dev` holding the host's harmless device nodes.
fn image_root(image: &Path, root: &Path) -> Result<(), Error> {
    bind_read_only(image, root, false)?;
    step(
        "mount(tmpfs /dev)",
        mount(
            Some("tmpfs"),
            &root.join("dev"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=0755"),
        ),
    )?;
    for device in DEVICES {
        let device = Path::new(device);
        if let Some(target) = mirror(device, device, root)? {
            bind_read_only(device, &target, true)?;
        }
    }
    Ok(())
}

/// Whether `host`, shown at the same path, is visible anyway through a system path.
fn shown_anyway(host: &Path, inside: &Path) -> bool {
    host == inside && SYSTEM_PATHS.iter().any(|p| host.starts_with(p))
}

/// Whether `inside` lies in the function's workspace (`/tmp`), which is mounted over the
/// template: such a path is bound after it, or the workspace would hide it.
pub(super) fn in_workspace(inside: &Path) -> bool {
    inside.starts_with(WORKDIR) && inside != Path::new(WORKDIR)
}

/// Binds, read-only, the paths of `read_only` that lie in the workspace (a virtualenv or a
/// `--python-path` directory under the host's `/tmp`), on top of the mounted workspace.
fn bind_into_workspace(read_only: &[(PathBuf, PathBuf)], root: &Path) -> Result<(), Error> {
    for (host, inside) in read_only.iter().filter(|(_, inside)| in_workspace(inside)) {
        if let Some(target) = mirror(host, inside, root)? {
            bind_read_only(host, &target, false)?;
        }
    }
    Ok(())
}

/// The function's writable space under `root`: a size-capped tmpfs owned by its uid.
fn mount_workspace(workspace: &Workspace, root: &Path) -> Result<(), Error> {
    let work = root.join(WORKDIR.trim_start_matches('/'));
    let options = format!(
        "size={},mode=0700,uid={},gid={}",
        workspace.tmpfs_bytes, workspace.uid, workspace.gid
    );
    step(
        "mount(tmpfs /tmp)",
        mount(
            Some("tmpfs"),
            &work,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        ),
    )
}

/// What says whether a call changed the workspace (`/tmp`) in a sandbox that serves another:
/// everything `stat` tells of its root directory (mode, owner, links, size, the three times,
/// inode), the size of its extended attributes' names, and the tmpfs's free blocks and inodes.
/// A call that created anything, or changed the directory itself (its mode, a time, an
/// attribute: each could carry data to the next call, which runs as the same uid), leaves a
/// different state, even within one tick of a coarse clock. `None` when it cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkspaceState {
    stat: [i64; 12],
    xattr_names: isize,
    free: (u64, u64),
}

impl WorkspaceState {
    /// The workspace's state now.
    pub(super) fn now() -> Option<WorkspaceState> {
        let st = nix::sys::stat::stat(WORKDIR).ok()?;
        let vfs = nix::sys::statvfs::statvfs(WORKDIR).ok()?;
        // SAFETY: a size query (no buffer) on a NUL-terminated path.
        let xattr_names = unsafe { libc::listxattr(c"/tmp".as_ptr(), std::ptr::null_mut(), 0) };
        Some(WorkspaceState {
            stat: [
                st.st_mode as i64,
                st.st_uid as i64,
                st.st_gid as i64,
                st.st_nlink as i64,
                st.st_size,
                st.st_ino as i64,
                st.st_atime,
                st.st_atime_nsec,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec,
            ],
            xattr_names,
            free: (vfs.blocks_free() as u64, vfs.files_free() as u64),
        })
    }
}

/// Between two calls of a sandbox that serves more than one, with every process of the last
/// call gone: a fresh workspace in place of the old one (detached), and `/tmp` the working
/// directory again.
pub(super) fn renew_workspace(workspace: &Workspace) -> Result<(), Error> {
    step("chdir(/)", nix::unistd::chdir("/"))?;
    step("umount2(/tmp)", umount2(WORKDIR, MntFlags::MNT_DETACH))?;
    mount_workspace(workspace, Path::new("/"))?;
    step("chdir(/tmp)", nix::unistd::chdir(WORKDIR))
}

/// `pivot_root` into `root`, the old root detached, a fresh `/proc`, and `/tmp` the working
/// directory.
fn enter_root(root: &Path) -> Result<(), Error> {
    step("chdir(new root)", nix::unistd::chdir(root))?;
    step("pivot_root", nix::unistd::pivot_root(".", ".old-root"))?;
    step("chdir(/)", nix::unistd::chdir("/"))?;
    step(
        "umount2(old root)",
        umount2("/.old-root", MntFlags::MNT_DETACH),
    )?;
    let none: Option<&str> = None;
    step(
        "mount(proc)",
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
    )?;
    step("chdir(/tmp)", nix::unistd::chdir(WORKDIR))
}

/// Builds a root at `root` (a directory): a tmpfs holding read-only binds of the system paths
/// and of `read_only`, mount points for `/tmp`, `/proc` and (when `bundle_stub` says whether
/// it is a directory) the bundle, then made read-only. A zygote builds one per set of paths and
/// every executor's root is a copy of it; without a zygote each executor builds its own.
pub(super) fn fill_template(
    root: &Path,
    read_only: &[&(PathBuf, PathBuf)],
    bundle_stub: Option<bool>,
) -> Result<(), Error> {
    step(
        "mount(tmpfs root)",
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=16m,mode=0755"),
        ),
    )?;
    // The function's writable space's mount point first (so nothing bound below is hidden).
    for dir in [WORKDIR.trim_start_matches('/'), "proc", "dev", ".old-root"] {
        mkdir_all(&root.join(dir))?;
    }
    let system = SYSTEM_PATHS
        .iter()
        .chain(ETC_FILES)
        .chain(DEVICES)
        .map(|p| (PathBuf::from(p), PathBuf::from(p)));
    let own = read_only
        .iter()
        .filter(|(host, inside)| !shown_anyway(host, inside) && !in_workspace(inside))
        .map(|&p| p.clone());
    for (host, inside) in system.chain(own) {
        if let Some(target) = mirror(&host, &inside, root)? {
            bind_read_only(&host, &target, host.starts_with("/dev"))?;
        }
    }
    if let Some(is_dir) = bundle_stub {
        make_bundle_stub(root, is_dir)?;
    }
    // Everything but /tmp is read-only from here on.
    let none: Option<&str> = None;
    step(
        "mount(remount root read-only)",
        mount(
            none,
            root,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            none,
        ),
    )
}

/// The bundle's mount point in a template: a directory or an empty file.
fn make_bundle_stub(root: &Path, is_dir: bool) -> Result<(), Error> {
    let stub = root.join(BUNDLE.trim_start_matches('/'));
    if let Some(parent) = stub.parent() {
        mkdir_all(parent)?;
    }
    let made = if is_dir {
        std::fs::create_dir(&stub)
    } else {
        std::fs::File::create(&stub).map(drop)
    };
    made.map_err(|e| sys::on_path("mkdir", &stub, &e))
}
