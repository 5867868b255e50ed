//! deploy.yml `app.before_switch`: a command run in the new release before it starts, such as
//! a database migration.
//!
//! ```yaml
//! app:
//!   before_switch:
//!     command: .venv/bin/python       # relative to the release folder, or absolute
//!     args: [manage.py, migrate, --noinput]
//!     timeout: 5min                   # default 5 min; between 1s and 1h
//! ```
//!
//! It runs at ApplicationStart, after the release is copied and before its instance starts
//! (for every strategy: with `strategy: restart`, before the old release is stopped), so a
//! failure leaves what serves untouched: nothing stopped, no route changed. It does not run on
//! a rollback. It runs as the app runs: a transient `Type=oneshot` service
//! `<service>-before-switch-<release>.service` ([`properties`]) in the release folder, with its
//! `app.env`, the host's environment files and credentials, the writable directories, the
//! same dynamic user as the instances (so files it writes in `$STATE_DIRECTORY` stay the
//! app's) and the instance template's hardening with `app.needs` applied.
//!
//! What the transient unit does not mirror: a bundle's own edits to its `units/` template
//! (the properties follow the shipped template's hardening); `Sockets=` and `$PORT` (it
//! serves nothing); `Restart=` and the boot guard (it runs once, now). Its arguments reach the
//! command as written (no `$VAR` expansion by systemd): use `/bin/sh -c` for a shell.
//!
//! Its output goes to `/opt/<service>/logs/before-switch-<release>.log`; when it exits
//! non-zero, is killed or outlives its timeout (`TimeoutStartSec=`, then the hooks' own
//! deadline stops it), the deployment fails with the command, how it ended and the last lines
//! of that file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::app_env;
use crate::config::before_switch::BeforeSwitch;
use crate::config::{DeployConfig, Need, Strategy};
use crate::fault::Fault;
use crate::switch::Deployer;
use crate::systemd::{Directive, UnitStatus};

/// Lines of the output shown when it fails.
const TAIL_LINES: usize = 20;

/// `<service>-before-switch-<release>.service`.
pub fn unit_name(cfg: &DeployConfig, release: &str) -> String {
    format!("{}-before-switch-{release}.service", cfg.service)
}

/// Where its output goes.
pub fn log_path(cfg: &DeployConfig, release: &str) -> PathBuf {
    cfg.root()
        .join("logs")
        .join(format!("before-switch-{release}.log"))
}

/// The user systemd allocates for the instances (`DynamicUser=yes` without `User=`): the
/// template's prefix, the service name, when it is a valid user name (else systemd hashes it,
/// and the step gets a user of its own).
pub fn instance_user(service: &str) -> Option<String> {
    let ok = service.len() <= 31
        && service.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ok.then(|| service.to_string())
}

/// The transient unit's settings for `release`: the instance's environment, places, user and
/// hardening. `env` adds `NAME=value` assignments (the deployment's ids).
pub fn properties(
    cfg: &DeployConfig,
    step: &BeforeSwitch,
    release: &str,
    beanstalk: bool,
    env: &[String],
) -> Vec<Directive> {
    use Directive::*;
    let dir = format!("{}/releases/{release}", cfg.root().display());
    let mut d = vec![
        Text(
            "Description",
            format!("{} release {release}: app.before_switch", cfg.service),
        ),
        Text("Type", "oneshot".into()),
        ExecStart(
            std::iter::once(step.program(cfg, release))
                .chain(step.args.iter().cloned())
                .collect(),
        ),
        Text("WorkingDirectory", dir.clone()),
        Words(
            "Environment",
            std::iter::once(format!("INSTANCE={release}"))
                .chain(env.iter().cloned())
                .collect(),
        ),
    ];
    let mut files = vec![(format!("{dir}/app.env"), false)];
    files.extend(
        app_env::environment_files(&cfg.app, beanstalk)
            .into_iter()
            .map(|f| (f.path, f.optional)),
    );
    d.push(EnvironmentFiles(files));
    if !cfg.app.credentials.is_empty() {
        d.push(LoadCredential(
            cfg.app
                .credentials
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    for (place, name) in app_env::directories(&cfg.app) {
        d.push(Words(place.directive(), vec![name.to_string()]));
    }
    if cfg.app.runtime_directory.is_some() {
        // The serving instance uses it too.
        d.push(Text("RuntimeDirectoryPreserve", "yes".into()));
    }
    d.extend([
        StandardOutputFile(log_path(cfg, release).display().to_string()),
        Text("StandardError", "inherit".into()),
        TimeoutStartSec(step.timeout),
        LimitNofile(65536),
        Flag("DynamicUser", true),
    ]);
    if let Some(user) = instance_user(&cfg.service) {
        d.push(Text("User", user));
    }
    let jit = cfg.app.needs.contains(&Need::Jit);
    let setuid = cfg.app.needs.contains(&Need::Setuid) || cfg.strategy == Strategy::Proxy;
    d.extend([
        NoCapabilities("CapabilityBoundingSet"),
        NoCapabilities("AmbientCapabilities"),
        Flag("NoNewPrivileges", true),
        Text("ProtectSystem", "strict".into()),
        Text("ProtectHome", "yes".into()),
        Flag("PrivateTmp", true),
        Flag("PrivateDevices", true),
        Text("DevicePolicy", "closed".into()),
        Flag("ProtectKernelTunables", true),
        Flag("ProtectKernelModules", true),
        Flag("ProtectKernelLogs", true),
        Flag("ProtectControlGroups", true),
        Flag("ProtectClock", true),
        Flag("ProtectHostname", true),
    ]);
    // app.needs: [proc]: a systemd before 247 refuses these properties of a transient unit.
    if !cfg.app.needs.contains(&Need::Proc) {
        d.extend([
            Text("ProtectProc", "invisible".into()),
            Text("ProcSubset", "pid".into()),
        ]);
    }
    d.extend([
        RestrictAddressFamilies(vec!["AF_INET".into(), "AF_INET6".into(), "AF_UNIX".into()]),
        RestrictNamespaces,
        Flag("RestrictRealtime", true),
        Flag("RestrictSUIDSGID", true),
        Flag("LockPersonality", true),
        Flag("MemoryDenyWriteExecute", !jit),
        Flag("RemoveIPC", true),
        Flag("PrivateUsers", true),
        Words("SystemCallArchitectures", vec!["native".into()]),
        SystemCallFilter {
            allow: true,
            calls: vec!["@system-service".into()],
        },
        SystemCallFilter {
            allow: false,
            calls: vec!["@privileged".into(), "@resources".into()],
        },
    ]);
    if setuid {
        d.push(SystemCallFilter {
            allow: true,
            calls: vec!["@setuid".into()],
        });
    }
    d.extend([SystemCallErrorNumber(nix::errno::Errno::EPERM), UMask(0o077)]);
    d
}

/// The deployment's ids, from the hook's environment (CodeDeploy sets them), for a step that
/// must run once per fleet or per group.
pub fn deployment_env() -> Vec<String> {
    ["DEPLOYMENT_ID", "DEPLOYMENT_GROUP_NAME", "APPLICATION_NAME"]
        .into_iter()
        .filter_map(|k| {
            let v = std::env::var(k).ok()?;
            (!v.is_empty() && !v.contains(char::is_control)).then(|| format!("{k}={v}"))
        })
        .collect()
}

/// Why a finished run failed, in words (None: it succeeded).
pub fn failure(st: &UnitStatus, timeout: Duration) -> Option<String> {
    match st.result.as_str() {
        "success" => None,
        "timeout" => Some(format!(
            "did not finish within {} s (app.before_switch.timeout) and was stopped",
            timeout.as_secs_f64()
        )),
        "signal" | "core-dump" => Some(format!(
            "was killed by signal {}",
            nix::sys::signal::Signal::try_from(st.exec_main_status)
                .map(|s| format!("{} ({})", s.as_str(), st.exec_main_status))
                .unwrap_or_else(|_| st.exec_main_status.to_string())
        )),
        "exit-code" => Some(format!("exited with status {}", st.exec_main_status)),
        other => Some(format!("failed ({}; result {other})", st.describe())),
    }
}

/// ApplicationStart's steps before the new instance starts (a rollback has none): the host
/// files the units name must exist, then `app.before_switch` runs.
pub async fn before_start(deployer: &Deployer<'_>, release: &str, hook: &str) -> Result<()> {
    if hook != "application-start" {
        return Ok(());
    }
    let cfg = deployer.cfg;
    let beanstalk = app_env::on_beanstalk();
    app_env::check_host(cfg, beanstalk)?;
    let Some(step) = &cfg.app.before_switch else {
        return Ok(());
    };
    run(deployer, step, release, beanstalk).await
}

/// Runs the step for `release` and waits for it; a deployment fault when it fails.
pub async fn run(deployer: &Deployer<'_>, step: &BeforeSwitch, release: &str, beanstalk: bool) -> Result<()> {
    let cfg = deployer.cfg;
    let unit = unit_name(cfg, release);
    let log = log_path(cfg, release);
    if !deployer.systemd.dry_run()
        && let Some(dir) = log.parent()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            Fault::environment(format!(
                "cannot create {} for app.before_switch's output: {e}",
                dir.display()
            ))
        })?;
        // One output file: the step of the release that runs now.
        for old in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.starts_with("before-switch-") && name.ends_with(".log") {
                let _ = std::fs::remove_file(old.path());
            }
        }
    }
    tracing::info!(
        "app.before_switch: running `{}` for {release} ({unit})",
        step.command_line()
    );
    let started = std::time::Instant::now();
    let props = properties(cfg, step, release, beanstalk, &deployment_env());
    let st = deployer
        .systemd
        .run_transient(&unit, &props, step.timeout + Duration::from_secs(15))
        .await?;
    match failure(&st, step.timeout) {
        None => {
            tracing::info!(
                "app.before_switch for {release} finished in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some(how) => {
            let tail = crate::switch::native::last_lines(&log, TAIL_LINES)
                .map(|t| format!("; last lines of {}:\n  {}", log.display(), t.join("\n  ")))
                .unwrap_or_else(|| format!("; it wrote nothing to {}", log.display()));
            bail!(Fault::deployment(format!(
                "app.before_switch `{}` {how}: {release} was not started, and what served before was not touched{tail}",
                step.command_line()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "service: shop\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/shop\n";

    fn parse(extra: &str) -> Result<DeployConfig> {
        DeployConfig::parse(&format!("{GOOD}{extra}"))
    }

    fn err(extra: &str) -> String {
        format!("{:#}", parse(extra).unwrap_err())
    }

    #[test]
    fn the_field_parses_with_a_default_timeout() {
        let c = parse(
            "  before_switch:\n    command: .venv/bin/python\n    args: [manage.py, migrate, --noinput]\n",
        )
        .unwrap();
        let step = c.app.before_switch.as_ref().unwrap();
        assert_eq!(step.timeout, Duration::from_secs(300));
        assert_eq!(step.program(&c, "d-2"), "/opt/shop/releases/d-2/.venv/bin/python");
        assert_eq!(
            step.command_line(),
            ".venv/bin/python manage.py migrate --noinput"
        );
        let c = parse("  before_switch: { command: /bin/sh, args: [-c, \"echo 'hi' $X\"], timeout: 90s }\n")
            .unwrap();
        let step = c.app.before_switch.clone().unwrap();
        assert_eq!(step.timeout, Duration::from_secs(90));
        assert_eq!(step.program(&c, "d-2"), "/bin/sh");
        assert_eq!(step.command_line(), "/bin/sh -c 'echo '\\''hi'\\'' $X'");
        let c = parse("  before_switch: { command: bin/migrate, timeout: 5min }\n").unwrap();
        assert_eq!(
            c.app.before_switch.as_ref().unwrap().timeout,
            Duration::from_secs(300)
        );
        // ApplicationStart's appspec timeout must cover it; a rollback (ValidateService) runs none.
        let base = parse("").unwrap();
        use crate::bundle::timeouts::{application_start_needs, validate_service_needs};
        assert_eq!(
            application_start_needs(&c),
            application_start_needs(&base) + Duration::from_secs(300)
        );
        assert_eq!(validate_service_needs(&c), validate_service_needs(&base));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = err("  before_switch: { command: ../../bin/sh }\n");
        assert!(
            e.contains("app.before_switch.command: '../../bin/sh' must be a program inside the release")
                && e.contains("put arguments in app.before_switch.args"),
            "{e}"
        );
        assert!(
            err("  before_switch: { command: \"manage.py migrate\" }\n")
                .contains("app.before_switch.command")
        );
        // 2h is a time span systemd reads, and out of the step's range.
        let e = err("  before_switch: { command: bin/migrate, timeout: 2h }\n");
        assert!(e.contains("7200 s is out of range"), "{e}");
        let e = err("  before_switch: { command: bin/migrate, timeout: 500ms }\n");
        assert!(
            e.contains("app.before_switch.timeout: 0.5 s is out of range; use between 1s and 1h"),
            "{e}"
        );
        assert!(err("  before_switch: { command: bin/migrate, when: always }\n").contains("when"));
        assert!(err("  before_switch: { args: [x] }\n").contains("command"));
    }

    #[test]
    fn the_transient_unit_mirrors_the_instance() {
        let c = parse(
            "  environment_files: [/etc/shop/env, -/etc/shop/optional.env]\n  credentials: { token: /etc/shop/token }\n  \
             state_directory: shop\n  runtime_directory: shop/run\n  needs: [jit]\n  before_switch:\n    command: \
             /bin/sh\n    args: [-c, \"echo $SECRET > $STATE_DIRECTORY/seen-$INSTANCE\"]\n    timeout: 2m\n",
        )
        .unwrap();
        let step = c.app.before_switch.clone().unwrap();
        let lines: Vec<String> = properties(&c, &step, "d-7", false, &["DEPLOYMENT_GROUP_NAME=web".into()])
            .iter()
            .flat_map(Directive::lines)
            .collect();
        let expected = [
            "Description=shop release d-7: app.before_switch",
            "Type=oneshot",
            "ExecStart=:/bin/sh -c \"echo $SECRET > $STATE_DIRECTORY/seen-$INSTANCE\"",
            "WorkingDirectory=/opt/shop/releases/d-7",
            "Environment=INSTANCE=d-7 DEPLOYMENT_GROUP_NAME=web",
            "EnvironmentFile=/opt/shop/releases/d-7/app.env",
            "EnvironmentFile=/etc/shop/env",
            "EnvironmentFile=-/etc/shop/optional.env",
            "LoadCredential=token:/etc/shop/token",
            "StateDirectory=shop",
            "RuntimeDirectory=shop/run",
            "RuntimeDirectoryPreserve=yes",
            "StandardOutput=file:/opt/shop/logs/before-switch-d-7.log",
            "StandardError=inherit",
            "TimeoutStartSec=120000ms",
            "LimitNOFILE=65536",
            "DynamicUser=yes",
            "User=shop",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "DevicePolicy=closed",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "ProtectProc=invisible",
            "ProcSubset=pid",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "RestrictNamespaces=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "MemoryDenyWriteExecute=no",
            "RemoveIPC=yes",
            "PrivateUsers=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "SystemCallFilter=~@privileged @resources",
            "SystemCallErrorNumber=EPERM",
            "UMask=0077",
        ];
        assert_eq!(lines, expected);
        // Every hardening directive of the shipped template is among them, with its value
        // (app.needs: jit relaxes MemoryDenyWriteExecute= as in the rendered unit).
        let template = include_str!("../../../units/app@.service");
        let after = template.split("DynamicUser=yes").nth(1).unwrap();
        for line in after.lines().filter(|l| l.contains('=') && !l.starts_with('#')) {
            if line.starts_with("WantedBy=") || line.starts_with("MemoryDenyWriteExecute=") {
                continue;
            }
            assert!(lines.iter().any(|l| l == line), "{line} is not mirrored");
        }
    }

    #[test]
    fn a_proxied_release_allows_setuid_and_a_relative_command_runs_from_the_release() {
        let c = parse("strategy: proxy\n")
            .map(|mut c| {
                c.app.before_switch = Some(BeforeSwitch {
                    command: "bin/migrate".into(),
                    args: vec![],
                    timeout: Duration::from_secs(5),
                });
                c
            })
            .unwrap();
        let step = c.app.before_switch.clone().unwrap();
        let lines: Vec<String> = properties(&c, &step, "d-1", true, &[])
            .iter()
            .flat_map(Directive::lines)
            .collect();
        assert!(lines.contains(&"ExecStart=:/opt/shop/releases/d-1/bin/migrate".to_string()));
        assert!(lines.contains(&"SystemCallFilter=@setuid".to_string()));
        assert!(lines.contains(&"MemoryDenyWriteExecute=yes".to_string()));
        assert!(lines.contains(&"Environment=INSTANCE=d-1".to_string()));
        // On Elastic Beanstalk the platform's properties come after app.env.
        let files: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("EnvironmentFile="))
            .collect();
        assert_eq!(
            files,
            [
                "EnvironmentFile=/opt/shop/releases/d-1/app.env",
                "EnvironmentFile=-/opt/elasticbeanstalk/deployment/env"
            ]
        );
        assert!(!lines.iter().any(|l| l.starts_with("RuntimeDirectoryPreserve")));
    }

    #[test]
    fn a_failure_says_how_it_ended() {
        let st = |result: &str, status: i32| UnitStatus {
            name: "shop-before-switch-d-3.service".into(),
            result: result.into(),
            exec_main_status: status,
            ..Default::default()
        };
        let t = Duration::from_secs(300);
        assert_eq!(failure(&st("success", 0), t), None);
        assert_eq!(failure(&st("exit-code", 3), t).unwrap(), "exited with status 3");
        assert_eq!(
            failure(&st("signal", 9), t).unwrap(),
            "was killed by signal SIGKILL (9)"
        );
        assert_eq!(
            failure(&st("timeout", 0), t).unwrap(),
            "did not finish within 300 s (app.before_switch.timeout) and was stopped"
        );
        assert_eq!(
            unit_name(&parse("").unwrap(), "d-3"),
            "shop-before-switch-d-3.service"
        );
        assert_eq!(instance_user("shop"), Some("shop".into()));
        assert_eq!(instance_user("1shop"), None);
        assert_eq!(instance_user(&"s".repeat(40)), None);
    }
}
