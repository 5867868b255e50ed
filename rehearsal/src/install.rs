//! The agent's Install step: what the previous deployment's Install created is deleted (the
//! group's `-cleanup` file lists it), then the appspec's `files:` are copied from the archive
//! with their modes and owners under `file_exists_behavior`, and what was created is written
//! as the next cleanup list. Right after it, the deployment is recorded as the group's last
//! successful install (see [`crate::run`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use handoff::bundle::appspec::AppSpec;
use handoff::fault::Fault;

/// Writes a file atomically and durably ([`handoff::durable::write_durably`]), creating its folder.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    handoff::durable::write_durably(path, text.as_bytes())
}

/// Install, step one: delete what the previous deployment's Install created (files and
/// symlinks unlinked, then its folders if empty). Returns how many were removed.
pub fn clean_previous_install(cleanup_file: &Path) -> Result<usize> {
    let text = match std::fs::read_to_string(cleanup_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cleanup_file.display())),
    };
    let mut removed = 0;
    for line in text.lines().rev().filter(|l| !l.trim().is_empty()) {
        let path = Path::new(line);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        let done = if meta.is_dir() {
            std::fs::remove_dir(path).is_ok()
        } else {
            std::fs::remove_file(path).map(|()| true).with_context(|| {
                format!(
                    "Install cannot delete {} (from the previous Install)",
                    path.display()
                )
            })?
        };
        removed += usize::from(done);
    }
    Ok(removed)
}

/// Install, step two: copy the appspec's `files:` from the archive; returns every path it
/// created (folders too), in creation order, for the next deployment's cleanup.
pub fn install_files(spec: &AppSpec, archive: &Path) -> Result<Vec<PathBuf>> {
    let behavior = spec.file_exists_behavior();
    let mut created = Vec::new();
    for (i, f) in spec.files.iter().flatten().enumerate() {
        let (Some(source), Some(destination)) = (f.source.as_deref(), f.destination.as_deref()) else {
            bail!(Fault::input(format!(
                "appspec.yml files[{i}]: needs source and destination"
            )));
        };
        let src = archive.join(source.trim_start_matches('/'));
        let dest = PathBuf::from(destination);
        make_dirs(&dest, &mut created)?;
        let meta = std::fs::metadata(&src)
            .with_context(|| format!("files[{i}]: source {source} is not in the revision"))?;
        if meta.is_dir() {
            copy_dir_contents(&src, &dest, behavior, &mut created)?;
        } else {
            let name = src.file_name().context("a file source has a name")?;
            copy_one(&src, &dest.join(name), behavior, &mut created)?;
        }
    }
    Ok(created)
}

/// Creates `dir` and its missing ancestors, recording each one created.
fn make_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d).with_context(|| format!("Install cannot create {}", d.display()))?;
        created.push(d.to_path_buf());
    }
    Ok(())
}

/// Copies a folder's contents into `to`, in name order, recording what it creates.
fn copy_dir_contents(from: &Path, to: &Path, behavior: &str, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(from)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            make_dirs(&dst, created)?;
            copy_dir_contents(&src, &dst, behavior, created)?;
        } else {
            copy_one(&src, &dst, behavior, created)?;
        }
    }
    Ok(())
}

/// Copies one file with its mode and owner, under `file_exists_behavior`.
fn copy_one(src: &Path, dst: &Path, behavior: &str, created: &mut Vec<PathBuf>) -> Result<()> {
    if std::fs::symlink_metadata(dst).is_ok() {
        match behavior {
            "RETAIN" => return Ok(()),
            "OVERWRITE" => {}
            _ => bail!(Fault::deployment(format!(
                "Install: the deployment failed because a specified file already exists at this location: {} \
                 (not installed by the previous deployment). Remove it, or set file_exists_behavior: OVERWRITE \
                 or RETAIN in appspec.yml",
                dst.display()
            ))),
        }
    }
    // Opens the destination for writing, as the agent does: "Text file busy" on a running binary.
    std::fs::copy(src, dst)
        .with_context(|| format!("Install cannot copy {} to {}", src.display(), dst.display()))?;
    let meta = std::fs::metadata(src)?;
    let _ = std::os::unix::fs::chown(dst, Some(meta.uid()), Some(meta.gid()));
    created.push(dst.to_path_buf());
    Ok(())
}
