//! appspec.yml's hook timeouts against deploy.yml's deadlines: the agent kills a script at its
//! timeout (one SIGTERM), so a timeout shorter than the work the hook may have to wait for
//! turns a slow start or a rollback into an interrupted hook. Checked by `lint-bundle` (an
//! error) and by BeforeInstall (a warning: the agent has accepted the bundle already).

use std::path::Path;
use std::time::Duration;

use crate::bundle::appspec::{self, AppSpec, Problem};
use crate::config::DeployConfig;

/// What ApplicationStart may wait for: `app.before_switch` (up to its timeout), the start job
/// and its confirmation (each up to `deadlines.start`), the old release's drain, and a margin
/// for systemd and the copy.
pub fn application_start_needs(cfg: &DeployConfig) -> Duration {
    switch_needs(cfg)
        + cfg
            .app
            .before_switch
            .as_ref()
            .map_or(Duration::ZERO, |b| b.timeout)
}

/// A switch without `app.before_switch` (a rollback runs none).
fn switch_needs(cfg: &DeployConfig) -> Duration {
    cfg.deadlines.start * 2 + cfg.drain.budget + Duration::from_secs(15)
}

/// What ValidateService may wait for: validation, the stability window, then a whole
/// rollback (a switch back to the previous release).
pub fn validate_service_needs(cfg: &DeployConfig) -> Duration {
    cfg.deadlines.validate + cfg.health.stable_for + Duration::from_secs(1) + switch_needs(cfg)
}

/// Every hook whose timeout does not cover what it may wait for.
pub fn check(spec: &AppSpec, cfg: &DeployConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let rows = [
        (
            "ApplicationStart",
            "application-start",
            application_start_needs(cfg),
            if cfg.app.before_switch.is_some() {
                "app.before_switch.timeout + 2 × deadlines.start + drain.budget + 15 s"
            } else {
                "2 × deadlines.start + drain.budget + 15 s"
            },
        ),
        (
            "ValidateService",
            "validate-service",
            validate_service_needs(cfg),
            "deadlines.validate + health.stable_for + a rollback (2 × deadlines.start + drain.budget) + 16 s",
        ),
    ];
    for (event, hook, need, formula) in rows {
        for (i, script) in spec.scripts(event).iter().enumerate() {
            let have = script.timeout_secs();
            let need_secs = need.as_secs_f64().ceil() as i64;
            if script.location().ends_with(hook) && have > 0 && have < need_secs {
                problems.push(Problem::error(
                    appspec::FILE_NAME,
                    format!("hooks.{event}[{i}].timeout"),
                    format!(
                        "{have} s does not cover what the hook may wait for per deploy.yml ({formula} = {need_secs} s): \
                         the agent would kill it half-way; raise it to at least {need_secs}, or lower the deadlines"
                    ),
                ));
            }
        }
    }
    problems
}

/// The same check on an unpacked revision, as one warning line (None when it passes or the
/// appspec cannot be read: the agent has already judged that).
pub fn warning_for(revision: &Path, cfg: &DeployConfig) -> Option<String> {
    let (spec, _) = appspec::check_appspec(revision);
    let problems = check(&spec?, cfg);
    (!problems.is_empty()).then(|| {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "version: 0.0\nos: linux\nhooks:\n  ApplicationStart:\n    - location: hooks/application-start\n      timeout: 300\n  ValidateService:\n    - location: hooks/validate-service\n      timeout: 300\n";

    fn cfg(extra: &str) -> DeployConfig {
        DeployConfig::parse(&format!(
            "service: t\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/app\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_shipped_timeouts_cover_the_default_deadlines() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (spec, _) = appspec::check_appspec(&repo);
        let cfg = DeployConfig::load(&repo.join("deploy.yml")).unwrap();
        assert_eq!(check(&spec.unwrap(), &cfg), vec![]);
    }

    #[test]
    fn a_timeout_shorter_than_the_deadlines_is_named_with_the_fix() {
        let (spec, _) = appspec::check_text(SPEC, appspec::FILE_NAME);
        let p = check(
            &spec.unwrap(),
            &cfg("deadlines:\n  start: 120s\n  validate: 30s\ndrain:\n  budget: 60s\n"),
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        let text = p[0].to_string();
        assert!(
            text.contains("hooks.ApplicationStart[0].timeout: 300 s does not cover")
                && text.contains("= 315 s")
                && text.contains("raise it to at least 315"),
            "{text}"
        );
    }
}
