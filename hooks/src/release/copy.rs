//! A revision's copy into a release folder: symlinks judged, files copied with the modes a
//! release gets, and files unchanged since another complete release hard-linked to its copies,
//! which are on disk already, so that only what changed is written and synced.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fault::Fault;

/// A revision's copy into a release folder.
pub(super) struct Copy<'a> {
    /// The revision's top folder (symlinks are judged relative to it).
    pub top: &'a Path,
    /// A complete release whose identical files are linked instead of copied.
    pub like: Option<&'a Path>,
    /// The files written (to be synced).
    pub written: Vec<PathBuf>,
    /// How many files were linked.
    pub linked: usize,
}

impl Copy<'_> {
    /// Copies the folder `from` (inside `top`) to `to`.
    pub fn tree(&mut self, from: &Path, to: &Path) -> Result<()> {
        let top = self.top;
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
            let entry = entry?;
            let src = entry.path();
            let dst = to.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&src)?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&src)?;
                let rel = src.strip_prefix(top).unwrap_or(&src);
                match crate::links::classify(rel, &target) {
                    crate::links::Link::Absolute => {}
                    crate::links::Link::Escapes => bail!(Fault::input(format!(
                        "the bundle's symlink {} points outside the bundle (to {}); ship the file itself instead, or \
                         link relatively to a file inside",
                        src.display(),
                        target.display()
                    ))),
                    crate::links::Link::Inside => {
                        if std::fs::metadata(&src).is_err() {
                            bail!(Fault::input(format!(
                                "the bundle's symlink {} points nowhere (to {}); remove it from the bundle or ship its \
                                 target",
                                src.display(),
                                target.display()
                            )));
                        }
                    }
                }
                std::os::unix::fs::symlink(&target, &dst)
                    .with_context(|| format!("cannot create the symlink {}", dst.display()))?;
            } else if ft.is_dir() {
                self.tree(&src, &dst)?;
            } else if ft.is_file() {
                let mode = meta.mode() & 0o755;
                if let Some(same) = self.identical(&src, &meta, mode)
                    && std::fs::hard_link(&same, &dst).is_ok()
                {
                    self.linked += 1;
                    continue;
                }
                std::fs::copy(&src, &dst).map_err(|e| copy_error(&src, &dst, e))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
                self.written.push(dst);
            } else {
                bail!(Fault::input(format!(
                    "{} is not a regular file or folder; remove it from the bundle",
                    src.display()
                )));
            }
        }
        Ok(())
    }

    /// The other release's file at the same place as `src`, when it is a regular file with the
    /// mode a copy would get and the same bytes.
    fn identical(&self, src: &Path, meta: &std::fs::Metadata, mode: u32) -> Option<PathBuf> {
        let theirs = self.like?.join(src.strip_prefix(self.top).ok()?);
        let their_meta = std::fs::symlink_metadata(&theirs).ok()?;
        if !their_meta.is_file() || their_meta.len() != meta.len() || their_meta.mode() & 0o7777 != mode {
            return None;
        }
        same_bytes(src, &theirs).unwrap_or(false).then_some(theirs)
    }
}

/// Whether two files of the same length hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

pub(super) fn copy_error(src: &Path, dst: &Path, e: std::io::Error) -> anyhow::Error {
    if matches!(e.raw_os_error(), Some(nix::libc::ENOSPC | nix::libc::EDQUOT)) {
        anyhow::Error::new(Fault::environment(format!(
            "no space left to copy {} to {}; free disk space (old releases: lower releases.keep) and retry",
            src.display(),
            dst.display()
        )))
    } else {
        // The io error stays in the chain: one only the host can fix (EROFS, EACCES, …) exits 3.
        anyhow::Error::new(e).context(format!("cannot copy {} to {}", src.display(), dst.display()))
    }
}
