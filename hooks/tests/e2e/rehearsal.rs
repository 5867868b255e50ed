//! `deploy-local` in a sandbox: the agent's in-place lifecycle, with the real hooks in a real
//! bundle folder, and the agent's timeout on a script that hangs.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::service::TestService;
use crate::support::*;

/// deploy-local's default deployment root, inside the sandbox.
const ROOT: &str = "/opt/codedeploy-agent/deployment-root";
const GROUP: &str = "local-group";

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bundle folder as scripts/bundle lays it out: the service's revision (deploy.yml, units/,
/// bin/sample-app), the hook executable itself in hooks/ (it finds deploy.yml from its own
/// path, so it must live in the bundle, not behind a launcher) with the four hook scripts that
/// run it, and the repo's appspec.yml, plus a script in ApplicationStop that says which archive
/// it runs from.
fn bundle(svc: &TestService, label: &str) -> PathBuf {
    let dir = svc.revision(label, &[], "");
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    link_or_copy(&workspace_bin("handoff"), &dir.join("hooks/handoff"));
    for hook in handoff::bundle::project::HOOKS {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("hooks").join(hook);
        std::fs::write(&path, handoff::bundle::project::HOOK_SCRIPT).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    write_script(
        &dir.join("hooks/where"),
        &format!(
            "echo \"{label}'s $LIFECYCLE_EVENT from $(cd \"$(dirname \"$0\")/..\" && pwd) for $DEPLOYMENT_ID in $(pwd)\""
        ),
    );
    let repo = std::fs::read_to_string(workspace().join("appspec.yml")).unwrap();
    let stop = "    - location: hooks/application-stop\n      timeout: 60\n";
    assert!(
        repo.contains(stop),
        "the repo's appspec.yml changed its ApplicationStop:\n{repo}"
    );
    let appspec = repo.replace(
        stop,
        &format!("{stop}    - location: hooks/where\n      timeout: 30\n"),
    );
    std::fs::write(dir.join("appspec.yml"), appspec).unwrap();
    dir
}

fn deploy_local(sandbox: &Sandbox, bundle: &Path, id: &str) -> Output {
    let mut cmd = sandbox.command(sandbox.test_binary("deploy-local"));
    cmd.arg("--bundle").arg(bundle).arg("--deployment-id").arg(id);
    let out = run(&mut cmd);
    eprintln!("{}", explain(&cmd, &out));
    out
}

fn scripts_log(sandbox: &Sandbox, id: &str) -> String {
    let path = sandbox.host_path(&format!("{ROOT}/{GROUP}/{id}/logs/scripts.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn events_in(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.split_once("] LifecycleEvent - ").map(|(_, e)| e))
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS.mmm`
fn is_timestamp(s: &str) -> bool {
    s.len() == 23
        && s.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            19 => c == '.',
            _ => c.is_ascii_digit(),
        })
}

/// Every line: `[timestamp] ` then an event header, a script, or a line of output; and the
/// time is UTC now (checked against `date -u`, not against the code under test).
fn assert_scripts_log_format(log: &str) {
    assert!(!log.is_empty());
    for line in log.lines() {
        let ok = line.len() >= 26
            && line.starts_with('[')
            && is_timestamp(&line[1..24])
            && &line[24..26] == "] "
            && ["LifecycleEvent - ", "Script - ", "[stdout]", "[stderr]"]
                .iter()
                .any(|p| line[26..].starts_with(p));
        assert!(ok, "malformed scripts.log line {line:?} in:\n{log}");
    }
    let first = &log[1..24];
    let out = run_ok(std::process::Command::new("date").args(["-u", "-d", first, "+%s"]));
    let logged: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - logged).abs() < 600,
        "the log's first time stamp {first} is not UTC now ({logged} vs {now})"
    );
}

#[test]
fn deploy_local_runs_the_agents_lifecycle_with_the_real_hooks() {
    let svc = TestService::new();
    let sandbox = &svc.sandbox;

    // First deployment: no ApplicationStop at all.
    let v1 = bundle(&svc, "v1");
    let out = deploy_local(sandbox, &v1, "d-REHEARSE1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "first deployment:\n{stderr}");
    let log1 = scripts_log(sandbox, "d-REHEARSE1");
    assert_eq!(
        events_in(&log1),
        ["BeforeInstall", "ApplicationStart", "ValidateService"],
        "{log1}"
    );
    assert!(!log1.contains("ApplicationStop"), "{log1}");
    assert_scripts_log_format(&log1);
    assert!(
        log1.contains("[stderr]") && log1.contains("preflight passed"),
        "{log1}"
    );
    // One summary line per event, with its duration.
    assert!(
        stdout.contains("ApplicationStop") && stdout.contains("skipped: first deployment"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("ApplicationStart") && l.contains(" s  1 script")),
        "{stdout}"
    );
    // Output is echoed as it comes, prefixed with the event.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("BeforeInstall: ") && l.contains("preflight passed")),
        "{stderr}"
    );
    assert_eq!(svc.serving().as_deref(), Some("d-REHEARSE1"));
    assert_eq!(svc.answering_release(), "v1");
    let archive1 = format!("{ROOT}/{GROUP}/d-REHEARSE1/deployment-archive");
    let last = sandbox.host_path(&format!(
        "{ROOT}/deployment-instructions/{GROUP}_last_successful_install"
    ));
    assert_eq!(std::fs::read_to_string(&last).unwrap().trim(), archive1);
    assert!(
        sandbox
            .host_path(&format!("{archive1}/hooks/application-start"))
            .is_file()
    );

    // Second deployment: ApplicationStop runs v1's scripts from v1's archive, with v2's id.
    let v2 = bundle(&svc, "v2");
    let out = deploy_local(sandbox, &v2, "d-REHEARSE2");
    assert_eq!(
        out.status.code(),
        Some(0),
        "second deployment:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log2 = scripts_log(sandbox, "d-REHEARSE2");
    assert_eq!(
        events_in(&log2),
        [
            "ApplicationStop",
            "BeforeInstall",
            "ApplicationStart",
            "ValidateService"
        ],
        "{log2}"
    );
    assert_scripts_log_format(&log2);
    assert!(
        log2.contains(&format!(
            "[stdout]v1's ApplicationStop from {archive1} for d-REHEARSE2 in /"
        )),
        "{log2}"
    );
    // The application-stop hook itself recorded the new deployment beginning.
    let events = std::fs::read_to_string(sandbox.host_path("/opt/shop/events.log")).unwrap();
    let begins: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["hook"] == "application-stop")
        .collect();
    assert_eq!(begins.len(), 1, "{events}");
    assert_eq!(begins[0]["deployment"], "d-REHEARSE2", "{events}");
    assert_eq!(
        begins[0]["message"], "deployment d-REHEARSE2 begins; serving d-REHEARSE1",
        "{events}"
    );
    assert_eq!(svc.serving().as_deref(), Some("d-REHEARSE2"));
    assert_eq!(svc.answering_release(), "v2");
    assert_eq!(
        std::fs::read_to_string(&last).unwrap().trim(),
        format!("{ROOT}/{GROUP}/d-REHEARSE2/deployment-archive")
    );
}

#[test]
fn a_script_past_its_timeout_gets_one_sigterm_to_its_process_group() {
    let sandbox = Sandbox::start();
    let dir = sandbox.scratch(&format!("timeout-bundle-{}", free_port()));
    write_script(&dir.join("hooks/ok"), "echo \"$LIFECYCLE_EVENT ok\"");
    // The script and its child both write their pids; the child holds the output open.
    write_script(
        &dir.join("hooks/slow"),
        "trap 'echo got SIGTERM; exit 143' TERM\n\
         echo $$ > /opt/slow.pid\n\
         sleep 30 &\n\
         echo $! > /opt/sleep.pid\n\
         echo \"waiting for sleep $!\"\n\
         wait\n\
         echo not reached",
    );
    std::fs::write(
        dir.join("appspec.yml"),
        "version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: hooks/ok\n  ApplicationStart:\n    \
         - location: hooks/slow\n      timeout: 1\n  ValidateService:\n    - location: hooks/ok\n",
    )
    .unwrap();

    let t0 = Instant::now();
    let out = deploy_local(&sandbox, &dir, "d-TIMEOUT1");
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed at ApplicationStart")
            && stderr.contains("hooks/slow failed to complete in 1 seconds")
            && stderr.contains("SIGTERM"),
        "{stderr}"
    );
    assert!(stderr.contains("Later lifecycle events did not run"), "{stderr}");
    assert!(took < Duration::from_secs(20), "the runner took {took:?}");

    let log = scripts_log(&sandbox, "d-TIMEOUT1");
    assert_eq!(events_in(&log), ["BeforeInstall", "ApplicationStart"], "{log}");
    assert!(
        log.contains("[stdout]got SIGTERM"),
        "the script got SIGTERM:\n{log}"
    );
    assert!(!log.contains("not reached"), "{log}");
    assert_scripts_log_format(&log);

    // Both the script and its child are gone: the signal went to the whole group.
    for file in ["/opt/slow.pid", "/opt/sleep.pid"] {
        let pid = std::fs::read_to_string(sandbox.host_path(file)).unwrap();
        let pid = pid.trim();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive = run(sandbox.command("sh").args(["-c", &format!("kill -0 {pid}")]));
            if !alive.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{file}: process {pid} is still there after the timeout's SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The zero-downtime claim through the agent's whole lifecycle: five consecutive deployments
/// with deploy-local under ab, wrk and WebSocket clients, then a release that turns unhealthy
/// after the switch and is rolled back by ValidateService, all without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_deployments_and_a_rollback_through_the_lifecycle_lose_no_request() {
    let svc = TestService::new();
    let sandbox = &svc.sandbox;
    let v1 = bundle(&svc, "v1");
    let out = tokio::task::block_in_place(|| deploy_local(sandbox, &v1, "d-FIVE1"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let load = crate::load::Load::start(svc.port, Duration::from_secs(60), 3).await;
    let mut closes = 0;
    for n in 2..=6 {
        let label = format!("v{n}");
        let b = bundle(&svc, &label);
        let id = format!("d-FIVE{n}");
        let out = tokio::task::block_in_place(|| deploy_local(sandbox, &b, &id));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(svc.answering_release(), label, "{id} serves");
        assert_eq!(svc.serving().as_deref(), Some(id.as_str()));
        closes += 1;
    }

    // v7 answers healthy at first, then /healthz says 503: ApplicationStart lets it take over,
    // ValidateService sees it fail and rolls back to v6 in place.
    let broken = bundle(&svc, "v7");
    let config = broken.join("deploy.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "    RELEASE: \"v7\"\n",
            "    RELEASE: \"v7\"\n    SAMPLE_UNHEALTHY_AFTER_MS: \"1500\"\n",
        )
        .replace("stable_for: 1s", "stable_for: 3s");
    std::fs::write(&config, text).unwrap();
    let out = tokio::task::block_in_place(|| deploy_local(sandbox, &broken, "d-FIVE7"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ValidateService") && stderr.contains("Rolled back: d-FIVE6 serves again"),
        "{stderr}"
    );
    closes += 2;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report = load.finish().await;
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(
        report.ab.requests > 100 && report.wrk.requests > 100,
        "{}",
        report.summary()
    );
    assert_eq!(svc.answering_release(), "v6");
    assert_eq!(report.last_release().as_deref(), Some("v6"));
    // Every switch (five, then to v7 and back) closed each WebSocket with 1012; they reconnected.
    assert!(report.ws.closes_1012 >= 3 * closes, "{}", report.summary());
    assert_eq!(
        report.ws.releases_seen,
        ["v1", "v2", "v3", "v4", "v5", "v6", "v7"].map(String::from),
        "{}",
        report.summary()
    );
    eprintln!("{}", report.summary());
}

/// A bundle the agent would refuse (quoted version) is refused before any hook runs; the
/// serving release is untouched.
#[test]
fn a_broken_appspec_is_refused_before_anything_runs() {
    let svc = TestService::new();
    let v1 = bundle(&svc, "v1");
    assert_eq!(deploy_local(&svc.sandbox, &v1, "d-GOOD1").status.code(), Some(0));
    let bad = bundle(&svc, "v2");
    let appspec = bad.join("appspec.yml");
    let text = std::fs::read_to_string(&appspec)
        .unwrap()
        .replace("version: 0.0", "version: \"0.0\"");
    std::fs::write(&appspec, text).unwrap();
    let out = deploy_local(&svc.sandbox, &bad, "d-BAD2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("version"), "{stderr}");
    assert_eq!(svc.answering_release(), "v1");
    assert_eq!(svc.serving().as_deref(), Some("d-GOOD1"));
    assert!(!svc.sandbox.host_path("/opt/shop/releases/d-BAD2").exists());
}
