//! The zygote's template roots: one per set of read-only paths, built in the zygote's own mount
//! namespace on first use and copied by every executor's mount namespace; rebuilt after a
//! minute (so a host file replaced since is seen), the old one detached once no child can still
//! be about to copy it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sandbox::root;
use crate::sandbox::shim::Config;

/// How long a template root serves before it is built anew.
const TEMPLATE_LIFE: Duration = Duration::from_secs(60);

/// How long a replaced template stays mounted.
const RETIRED_GRACE: Duration = Duration::from_secs(10);

/// Which template root serves an executor: its read-only paths other than the bundle, and
/// whether the bundle is a directory.
type TemplateKey = (Vec<(PathBuf, PathBuf)>, Option<bool>);

/// The template roots built so far.
pub(super) struct Templates {
    /// Where they are built (empty: nowhere, executors build their own roots).
    dir: PathBuf,
    /// The roots built so far and when (`None`: building failed then).
    built: HashMap<TemplateKey, (Option<PathBuf>, Instant)>,
    /// Roots replaced by newer ones, and since when (detached once no child can still be about
    /// to copy them).
    retired: Vec<(PathBuf, Instant)>,
    /// Numbers the template directories.
    next: usize,
}

impl Templates {
    /// Templates built under `dir` (an empty path: none are built).
    pub(super) fn new(dir: PathBuf) -> Self {
        Templates {
            dir,
            built: HashMap::new(),
            retired: Vec::new(),
            next: 0,
        }
    }

    /// The template root for `config`'s paths, built on first use; `None` (each executor then
    /// builds its own root) when it cannot be built.
    pub(super) fn for_config(&mut self, config: &Config) -> Option<PathBuf> {
        if self.dir.as_os_str().is_empty() {
            return None;
        }
        let key = key_of(config);
        if let Some((path, built)) = self.built.get(&key) {
            if built.elapsed() < TEMPLATE_LIFE {
                return path.clone();
            }
            // Files bound one by one (`/etc/resolv.conf`, `hosts`, `localtime`) keep the inode
            // they had when the template was built; a host that replaced one gets it seen anew.
            if let Some(path) = path {
                self.retired.push((path.clone(), Instant::now()));
            }
        }
        self.detach_retired();
        self.build(key)
    }

    /// Detaches the retired templates no child can still be about to copy: a child forked just
    /// before a template was retired may not have copied the mount namespace yet; a few seconds
    /// later every such child has.
    fn detach_retired(&mut self) {
        self.retired.retain(|(path, since)| {
            if since.elapsed() < RETIRED_GRACE {
                return true;
            }
            let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(path);
            false
        });
    }

    /// Builds the template for `key` in a new directory.
    fn build(&mut self, key: TemplateKey) -> Option<PathBuf> {
        let path = self.dir.join(format!("root-{}", self.next));
        self.next += 1;
        let built = std::fs::create_dir_all(&path)
            .map_err(|e| crate::sandbox::sys::on_path("mkdir", &path, &e))
            .and_then(|()| {
                let refs: Vec<_> = key.0.iter().collect();
                root::fill_template(&path, &refs, key.1)
            });
        match built {
            Ok(()) => {
                self.built.insert(key, (Some(path.clone()), Instant::now()));
                Some(path)
            }
            Err(why) => {
                eprintln!(
                    "faasd zygote: cannot build a template root, executors build their own: {why}"
                );
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                // Tried again for these paths once the template's life has passed.
                self.built.insert(key, (None, Instant::now()));
                None
            }
        }
    }
}

/// The template key of `config`: its read-only paths but the bundle, and whether the bundle is
/// a directory (`None`: it has none).
fn key_of(config: &Config) -> TemplateKey {
    let bundle = Path::new(root::BUNDLE);
    let others: Vec<_> = config
        .read_only
        .iter()
        .filter(|(_, inside)| inside != bundle)
        .cloned()
        .collect();
    let stub = config
        .read_only
        .iter()
        .find(|(_, inside)| inside == bundle)
        .map(|(host, _)| host.is_dir());
    (others, stub)
}
