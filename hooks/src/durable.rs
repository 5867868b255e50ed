//! Files that survive a crash or a power cut as either the old or the new content, never a
//! mix: the state, the unit files, the route and the front's files are all written this way.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `path` so that a crash leaves the old or the new content, never a mix: a temporary
/// file, fsync, rename, fsync of the folder.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_durably(path, bytes, None)
}

/// [`write_durably`] with the file's mode set on the temporary file, before the rename: the
/// file never appears under its name with the mode the umask gave it.
pub fn write_durably_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_file_durably(path, bytes, Some(mode))
}

fn write_file_durably(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Some(mode) = mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    }
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)
}

/// fsync of a folder: makes the renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// fsync of every folder in a tree, deepest first: makes the names in them durable (the files
/// themselves are synced by whoever wrote them).
pub fn sync_dirs(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dirs(&entry.path())?;
        }
    }
    sync_dir(dir)
}
