//! DownloadBundle's side of the agent's folders: a bundle folder copied into the deployment's
//! `deployment-archive` (a zip, unpacked before anything ran, is moved there instead), and the
//! group's oldest deployment folders removed beyond the agent's default `max_revisions`, never
//! the new one or the last successful install's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Archives kept per deployment group (the agent's `max_revisions` default).
pub const KEEP_ARCHIVES: usize = 5;

/// Copies a bundle folder into the archive: files with their modes, symlinks as symlinks.
pub(crate) fn copy_bundle(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode & 0o7777))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_bundle(&src, &dst)?;
        } else if meta.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Removes the group's oldest archives beyond [`KEEP_ARCHIVES`], never `keep`.
pub(crate) fn prune_archives(group_dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(group_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            (
                e.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH),
                e.path(),
            )
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(KEEP_ARCHIVES);
    let mut removed = Vec::new();
    for (_, dir) in dirs.into_iter().take(excess) {
        if keep.iter().any(|k| k.starts_with(&dir)) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}
