//! Elastic Beanstalk: the same switch, run from the platform's hooks instead of CodeDeploy's.
//!
//! The Beanstalk platform engine deploys a source bundle in steps, and runs the bundle's own
//! executables at three of them (`.platform/hooks/<step>/`, as root, in lexical order; a
//! non-zero exit fails the deployment):
//!
//! | engine step | working directory | `beanstalk` runs | the CodeDeploy hook it stands for |
//! |---|---|---|---|
//! | prebuild | `/var/app/staging` | — | — |
//! | predeploy | `/var/app/staging` | `predeploy`: preflight, changes nothing | BeforeInstall |
//! | *the flip* | — | — (the engine stops and starts nginx and `web.service`) | — |
//! | postdeploy | `/var/app/current` | `postdeploy`: copy, start beside, confirm, drain; then health, stable, else roll back | ApplicationStart + ValidateService |
//! | config deployment, postdeploy | `/var/app/current` | `confighook`: checks the serving release answers; switches nothing | — |
//!
//! Why this is zero-downtime on Beanstalk, where the platform's own deployment is not: in the
//! flip the engine stops nginx (the owner of port 80 by default) and the app's `web.service`,
//! and starts them again, about a second without a listener. Here the port belongs to the
//! service's `.socket` unit, which nothing in the engine touches; the bundle moves nginx off
//! the port (`.platform/nginx/nginx.conf`, or `ProxyServer: none`) and gives the engine a
//! placeholder `web` process (Procfile). The engine's flip then restarts only things that hold
//! no client, and the switch happens in postdeploy, beside it.
//!
//! The release: Beanstalk has no deployment id in the hooks' environment, so postdeploy names
//! the release `eb-<UTC time>-<4 hex>` (a `DEPLOYMENT_ID` or `--deployment-id` wins: it must be
//! new for each deployment, since a release already copied is reused as it is), and
//! copies it out of `/var/app/current` into `/opt/<service>/releases/`: the engine replaces
//! `/var/app/current` on the next deployment, and rollback needs the old files. A failed switch
//! leaves the previous release serving and exits non-zero, so Beanstalk marks the deployment
//! failed, as CodeDeploy would.
//!
//! Environment properties: the platform writes them to `/opt/elasticbeanstalk/deployment/env`
//! on the host; on such a host the instance units (and `app.before_switch`) read that file as an
//! optional environment file after the release's `app.env` (see [`crate::config::app_env`]), so a new
//! property reaches the service at the next application deployment.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

use crate::cli::HookArgs;
use crate::fault::Fault;
use crate::lifecycle;
use crate::release::ReleaseStore;

/// predeploy (cwd `/var/app/staging`): BeforeInstall's preflight of the staged bundle.
pub async fn predeploy(args: &HookArgs) -> Result<()> {
    // The release is named in postdeploy; preflight checks the staged bundle under this name.
    lifecycle::before_install(&with_release(args, || "eb-staged".into())).await
}

/// postdeploy (cwd `/var/app/current`, after the engine's flip): ApplicationStart, then
/// ValidateService, for one release named once.
pub async fn postdeploy(args: &HookArgs) -> Result<()> {
    let args = with_release(args, || release_name(SystemTime::now()));
    tracing::info!(
        "beanstalk postdeploy: release {} from {}",
        args.deployment(),
        args.revision_dir()?.display()
    );
    lifecycle::application_start(&args).await?;
    if crate::cli::sigterm_received() {
        // Its release serves (ApplicationStart succeeded), but SIGTERM stops the rest.
        bail!(Fault::deployment(format!(
            "interrupted by SIGTERM before ValidateService: {} serves, not validated; check it with \
             `handoff status`, or deploy again",
            args.deployment()
        )));
    }
    lifecycle::validate_service(&args).await
}

/// A configuration deployment's postdeploy: the engine restarted its own units (nginx, the
/// placeholder `web.service`); the service's socket and instances were not among them. Checks
/// that the serving release still answers through the port, and changes nothing.
pub async fn confighook(args: &HookArgs) -> Result<()> {
    let (_, cfg) = args.config()?;
    let store = ReleaseStore::for_config(&cfg);
    let state = store.load_state()?;
    let Some(serving) = state.serving else {
        bail!(Fault::input(format!(
            "{} has no serving release: a configuration deployment has nothing to leave running; deploy an \
             application version first (eb deploy)",
            cfg.service
        )));
    };
    let probe = crate::health::Probe::new(&cfg)?;
    probe
        .wait_for(&serving, Duration::from_secs(10))
        .await
        .map_err(|e| {
            Fault::deployment(format!(
                "{} serves release {serving}, but it does not answer {} healthy: {e:#}. This configuration \
                 deployment changed nothing of it; see /var/app/current/hooks/handoff --service {} status",
                cfg.service, cfg.health.path, cfg.service
            ))
        })?;
    tracing::info!(
        "{} still serves release {serving} through {}; a configuration deployment leaves it alone (changed \
         environment properties reach the service, from {}, at its next application deployment)",
        cfg.service,
        cfg.listen.join(", "),
        crate::config::app_env::BEANSTALK_ENV
    );
    Ok(())
}

/// The hook arguments with a release name: the given deployment id, else `name()`.
fn with_release(args: &HookArgs, name: impl FnOnce() -> String) -> HookArgs {
    let mut args = args.clone();
    args.deployment_id.get_or_insert_with(name);
    args
}

/// `eb-YYYYMMDD-HHMMSS-xxxx`: sorts by time; the suffix tells two deployments in one second apart.
pub fn release_name(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = crate::date::civil_from_days(days as i64);
    let suffix = (since.subsec_nanos() ^ std::process::id()) & 0xffff;
    format!(
        "eb-{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{suffix:04x}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_carry_the_utc_time_and_are_usable_release_names() {
        // 2026-11-30 18:07:09 UTC
        let at = UNIX_EPOCH + Duration::from_secs(1_796_062_029);
        let name = release_name(at);
        assert!(name.starts_with("eb-20261130-180709-"), "{name}");
        assert_eq!(name.len(), "eb-20261130-180709-abcd".len());
        assert!(crate::config::is_safe_name(&name, false), "{name}");
    }
}
