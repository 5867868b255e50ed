//! One deployment step at a time per service: an exclusive `flock` on
//! `/run/lock/handoff-<service>.lock`. The kernel releases it when the holder dies, so a hook
//! killed by the agent's timeout never leaves a stale lock.
//!
//! The lock covers one step; what spans the steps of one deployment (a switch that
//! ValidateService has not judged yet) is recorded in `state.json` and checked under the lock
//! (see [`crate::lifecycle`]). Waiting for the lock is asynchronous, so a SIGTERM while
//! waiting ends the hook at once.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::fault::Fault;

pub struct DeployLock {
    _lock: Flock<File>,
}

pub fn lock_path(service: &str) -> PathBuf {
    PathBuf::from("/run/lock").join(format!("handoff-{service}.lock"))
}

impl DeployLock {
    /// Takes the lock, waiting up to `wait` for another step to finish.
    pub async fn acquire(service: &str, holder: &str, wait: Duration) -> Result<Self> {
        let path = lock_path(service);
        std::fs::create_dir_all(path.parent().unwrap()).ok();
        let started = Instant::now();
        let mut logged = false;
        // Held while another step holds the lock; dropped when this returns.
        let mut _waiting = None;
        loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open the deploy lock {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    lock.set_len(0)?;
                    lock.rewind()?;
                    writeln!(lock, "{} {holder}", std::process::id())?;
                    return Ok(Self { _lock: lock });
                }
                Err((mut file, _)) => {
                    let mut who = String::new();
                    let _ = file.read_to_string(&mut who);
                    if started.elapsed() >= wait {
                        bail!(Fault::environment(format!(
                            "another deployment step holds {} (pid and step: {}); wait for it to finish, or stop it \
                             (the lock is released when that process exits)",
                            path.display(),
                            who.trim()
                        )));
                    }
                    if !logged {
                        _waiting = Some(crate::timing::waiting(crate::timing::Wait::Lock));
                        tracing::info!("waiting for another deployment step to finish ({})", who.trim());
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
