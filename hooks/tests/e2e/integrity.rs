//! The switch's integrity: every way a switch can fail or be interrupted leaves the serving
//! release serving with the units it was started with, a state the next step builds on, and
//! (where an old release serves) no failed request. Interruptions happen at named steps
//! (`HANDOFF_KILL_AT`), not by timing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::load::{Load, assert_no_failures, clock};
use crate::service::{TestService, edit_deploy_yml};
use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Gives a revision's instance template a line of its own, so which template a running
/// instance was started from shows in its environment.
fn mark_template(revision: &Path, mark: &str) {
    let path = revision.join("units/app@.service");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "Environment=INSTANCE=%i\n",
        &format!("Environment=INSTANCE=%i\nEnvironment=TEMPLATE={mark}\n"),
    );
    assert!(text.contains(&format!("TEMPLATE={mark}")));
    std::fs::write(path, text).unwrap();
}

/// A revision whose instance template does not load (no ExecStart=).
fn break_template(revision: &Path) {
    let path = revision.join("units/app@.service");
    let text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("ExecStart="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_start_puts_back_the_serving_releases_units_in_both_strategies() {
    for strategy in ["handoff", "restart"] {
        let mut svc = TestService::new();
        let extra = format!("strategy: {strategy}\n");
        let v1 = svc.revision("v1", &[], &extra);
        svc.deploy_ok("d-1", &v1);
        let template = svc.installed_template();

        // d-2 ships a template of its own and crashes at start.
        let v2 = svc.revision("v2", &[("SAMPLE_FAIL_START", "1")], &extra);
        mark_template(&v2, "v2");
        let load = Load::start(svc.port, Duration::from_secs(8), 2).await;
        let failure = svc.deploy_fails("d-2", &v2, "application-start", 1, "d-1 ");
        let report = load.finish().await;
        assert_no_failures(&report, &format!("{strategy}: a release that crashes at start"));
        assert!(
            failure.output.contains("with its own units"),
            "{strategy}:\n{}",
            failure.output
        );
        assert_eq!(
            svc.installed_template(),
            template,
            "{strategy}: d-1's template was not put back"
        );
        assert_eq!(
            svc.unit_property("shop@d-1.service", "NeedDaemonReload"),
            "no",
            "{strategy}"
        );
        assert!(
            !svc.instance_environment("d-1").contains("TEMPLATE=v2"),
            "{strategy}: d-1 runs under d-2's template"
        );
        // At its next crash (or a reboot) d-1 comes back with its own units.
        tokio::task::block_in_place(|| svc.crash_and_wait_for_restart("d-1"));
        assert!(
            !svc.instance_environment("d-1").contains("TEMPLATE=v2"),
            "{strategy}"
        );
        assert_eq!(svc.answering_release(), "v1", "{strategy}");
        // And the next deployment goes through, with its own template.
        let v3 = svc.revision("v3", &[], &extra);
        mark_template(&v3, "v3");
        svc.deploy_ok("d-3", &v3);
        assert!(
            svc.instance_environment("d-3").contains("TEMPLATE=v3"),
            "{strategy}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_killed_between_writing_the_units_and_reloading_is_undone_by_the_next_run() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let template = svc.installed_template();
    let v2 = svc.revision("v2", &[], "");
    break_template(&v2);

    let load = Load::start(svc.port, Duration::from_secs(10), 2).await;
    svc.hook_killed_at("units-written", "application-start", "d-2", &v2);
    // The kill point is real: the invalid template is on disk, systemd has not read it.
    assert_ne!(svc.installed_template(), template);
    assert_eq!(svc.unit_property("shop@d-1.service", "NeedDaemonReload"), "yes");
    let status = svc.status();
    assert!(
        status.contains("UNFINISHED switch to d-2") && status.contains("NeedDaemonReload"),
        "{status}"
    );

    // The re-run undoes the interrupted switch, then refuses the template for what it is.
    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-2", &v2));
    let report = load.finish().await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted; undoing it first")
            && stderr(&out).contains("shop@d-2.service does not load (bad-setting)"),
        "{}",
        stderr(&out)
    );
    assert_no_failures(&report, "killed before the reload, then re-run");
    assert_eq!(svc.installed_template(), template);
    assert_eq!(svc.unit_property("shop@d-1.service", "NeedDaemonReload"), "no");
    assert_eq!(svc.answering_release(), "v1");
    assert!(svc.state().get("switching").is_none(), "{}", svc.state());

    let v3 = svc.revision("v3", &[], "");
    svc.deploy_ok("d-3", &v3);
    assert_eq!(svc.answering_release(), "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_hangs_or_fails_every_request_after_ready_is_stopped_within_seconds() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let load = Load::start(svc.port, Duration::from_secs(25), 2).await;

    // Accepts, never answers. Its start deadline is 30 s: only the hang detection ends it early.
    let hung = svc.revision(
        "v2",
        &[("SAMPLE_HANG", "1"), ("SAMPLE_DRAIN_TIMEOUT_MS", "500")],
        "",
    );
    edit_deploy_yml(&hung, "start: 10s", "start: 30s");
    let (hang_from, t) = (clock(), Instant::now());
    let failure = svc.deploy_fails(
        "d-2",
        &hung,
        "application-start",
        1,
        "sent READY=1 but does not answer",
    );
    let (hang_took, hang_to) = (t.elapsed(), clock());
    assert!(failure.output.contains("d-1 keeps serving"), "{}", failure.output);
    // Unanswered probes through the shared socket may have been d-1's (the first burst may
    // well all reach the new instance): d-2 is stopped, not barred as a rollback target.
    assert!(
        failure.output.contains("raise health.timeout")
            && failure.output.contains("d-2 is not marked failed"),
        "{}",
        failure.output
    );
    assert_eq!(svc.state()["failed"], serde_json::json!([]), "{}", svc.state());
    assert!(
        hang_took < Duration::from_secs(12),
        "the hung release was detected after {hang_took:?}"
    );
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);

    // Answers every request with 503 once READY=1 is sent.
    let broken = svc.revision("v3", &[("SAMPLE_BROKEN", "1")], "");
    let broken_from = clock();
    svc.deploy_fails("d-3", &broken, "application-start", 1, "answered HTTP 503");
    let broken_to = clock();
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;

    // What these releases cost: only the requests they took before they were stopped.
    let in_window = |from: Duration, to: Duration| {
        report
            .probe_failed_at
            .iter()
            .filter(|at| **at >= from && **at < to)
            .count()
    };
    let (lost_hung, lost_broken) = (in_window(hang_from, hang_to), in_window(broken_from, broken_to));
    eprintln!(
        "hung release: detected in {hang_took:?}, {lost_hung} probe requests lost; broken release: {lost_broken} \
         probe requests lost; {}",
        report.summary()
    );
    assert_eq!(
        lost_hung + lost_broken,
        report.probe_failed_at.len(),
        "probe requests failed outside the two switches: {:?}",
        report.probe_failed_at
    );
    // The README's figures: 4 probe requests of 200/s lost to a release that answers errors
    // (1 and 7 in CI runs), asserted with a 5x margin; and, for one that hangs, its share of the
    // socket's accepts until two probes time out: 349 in a quiet run, up to 668 in a CI run
    // beside other tests (detected in 5.5 s there), asserted with a 1.5x margin on that.
    assert!(
        lost_broken <= 20,
        "the broken release failed {lost_broken} probe requests (README: 4; bound 20)"
    );
    assert!(
        lost_hung <= 1000,
        "the hung release lost {lost_hung} probe requests (README: 349 quiet, up to 668 in CI; bound 1000)"
    );
    assert!(
        report.samples.iter().filter(|s| s.at >= broken_to).count() > 50,
        "{}",
        report.summary()
    );
    // Two refusals that name their cause: a process killed by a signal at start (what a JIT
    // under MemoryDenyWriteExecute= or a system-call filter does), and an app that does not
    // echo the instance header.
    let trapped = svc.revision("v4", &[], "");
    std::fs::write(trapped.join("bin/sample-app"), "#!/bin/sh\nkill -TRAP $$\n").unwrap();
    let trap = svc.deploy_fails(
        "d-4",
        &trapped,
        "application-start",
        1,
        "was killed by signal SIGTRAP (5) while starting",
    );
    assert!(
        trap.output
            .contains("add `needs: [jit]` under app: in deploy.yml"),
        "{}",
        trap.output
    );
    let silent = svc.revision("v5", &[], "");
    edit_deploy_yml(&silent, "instance_header: X-Instance", "instance_header: X-Other");
    edit_deploy_yml(&silent, "start: 10s", "start: 2s");
    svc.deploy_fails(
        "d-5",
        &silent,
        "application-start",
        1,
        "every answer came without a X-Other header, so none can be told apart as d-5's. The app must add its \
         INSTANCE environment variable (the release id) to its responses as a header, `X-Other: $INSTANCE`",
    );
    assert_eq!(svc.answering_release(), "v1");
    // d-2 (hung) is not among them: its verdict could not be pinned on it.
    assert_eq!(svc.state()["failed"], serde_json::json!(["d-3", "d-4", "d-5"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_interrupted_before_or_after_its_commit_converges_without_a_failed_request() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let load = Load::start(svc.port, Duration::from_secs(20), 2).await;
    let port = svc.port;
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::task::spawn_blocking(move || http_get(port, "/?sleep_ms=2500")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Killed after the commit, before the old release drains: the new one serves, is
    // enabled for boot, and the old one keeps serving beside it until the re-run.
    let v2 = svc.revision("v2", &[], "");
    svc.hook_killed_at("after-commit", "application-start", "d-2", &v2);
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"));
    assert_eq!(svc.is_enabled("shop@d-2.service"), "enabled");
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service", "shop@d-2.service"]);
    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-2", &v2));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    assert_eq!(svc.is_enabled("shop@d-1.service"), "disabled");
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"));

    // Killed after the new release answered, before the commit: the next step (here the
    // next deployment) undoes it first, and its record survives a broken event log.
    let v3 = svc.revision("v3", &[], "");
    svc.hook_killed_at("after-start", "application-start", "d-3", &v3);
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert!(svc.status().contains("UNFINISHED switch to d-3"));
    let events = svc.sandbox.host_path("/opt/shop/events.log");
    std::fs::rename(&events, events.with_extension("saved")).unwrap();
    std::fs::create_dir(&events).unwrap();
    let v4 = svc.revision("v4", &[], "");
    let log = svc.deploy_ok("d-4", &v4);
    assert!(log.contains("undid the interrupted switch to d-3"), "{log}");
    assert!(log.contains("cannot record the event"), "{log}");
    assert_eq!(svc.live_instances(), vec!["shop@d-4.service"]);
    assert_eq!(svc.is_enabled("shop@d-3.service"), "disabled");
    assert_eq!(svc.state()["previous"].as_str(), Some("d-2"));

    // A re-run for the release that already serves, killed before it changed anything: the
    // next step must not "undo" it by stopping what serves.
    svc.hook_killed_at("after-intent", "application-start", "d-4", &v4);
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-4", &v4));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(svc.live_instances(), vec!["shop@d-4.service"]);
    assert_eq!(svc.is_enabled("shop@d-4.service"), "enabled");

    let report = load.finish().await;
    for s in slow {
        let reply = s.await.unwrap().expect("slow request");
        assert!(
            reply.contains(" 200 "),
            "a request in flight on d-1 failed: {reply}"
        );
    }
    assert_no_failures(&report, "switches killed before and after the commit");
    assert_eq!(report.last_release().as_deref(), Some("v4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listen_change_with_a_failed_release_keeps_the_old_address_and_units() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let old_port = svc.port;
    let socket_file = svc.sandbox.host_path("/etc/systemd/system/shop.socket");
    let socket_before = std::fs::read_to_string(&socket_file).unwrap();

    let load = Load::start(old_port, Duration::from_secs(8), 2).await;
    svc.port = free_port();
    let new_port = svc.port;
    let v2 = svc.revision("v2", &[("SAMPLE_FAIL_START", "1")], "");
    svc.deploy_fails("d-2", &v2, "application-start", 1, "d-1 keeps serving");
    let report = load.finish().await;
    assert_no_failures(&report, "a failed release that moves the socket");
    assert_eq!(std::fs::read_to_string(&socket_file).unwrap(), socket_before);
    assert!(
        http_get(new_port, "/").is_err(),
        "the new address accepts connections"
    );
    // systemd itself still owns the old address: the serving release survives a crash.
    svc.port = old_port;
    tokio::task::block_in_place(|| svc.crash_and_wait_for_restart("d-1"));
    assert_eq!(svc.answering_release(), "v1");
    assert!(
        svc.unit_property("shop.socket", "Listen")
            .contains(&format!("127.0.0.1:{old_port}")),
    );

    // A move onto an address another process holds: the socket goes back where it was, and
    // the new release (it took over on the old address) serves there.
    svc.port = new_port;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", new_port)).unwrap();
    let v3 = svc.revision("v3", &[], "");
    let failure = svc.deploy_fails("d-3", &v3, "application-start", 1, "is another process listening");
    assert!(
        failure.output.contains(&format!(
            "The socket is back on [127.0.0.1:{old_port}] and d-3 serves there"
        )),
        "{}",
        failure.output
    );
    drop(squatter);
    assert!(http_get(old_port, "/").is_ok_and(|r| r.contains("v3")));
    assert!(svc.state().get("socket_pending").is_none(), "{}", svc.state());

    // A good release moves the socket: restarted onto the new address, the old one closes.
    let v4 = svc.revision("v4", &[], "");
    let log = svc.deploy_ok("d-4", &v4);
    assert!(
        log.contains(&format!("moving shop.socket to 127.0.0.1:{new_port}")),
        "{log}"
    );
    assert_eq!(svc.answering_release(), "v4");
    assert!(http_get(old_port, "/").is_err(), "the old address still accepts");
    assert_eq!(svc.live_instances(), vec!["shop@d-4.service"]);

    // Killed after writing the moved socket's unit, before re-creating it: the next hook
    // applies it.
    svc.port = free_port();
    let v5 = svc.revision("v5", &[], "");
    run_ok(&mut svc.hook_command("before-install", "d-5", &v5));
    svc.hook_killed_at("socket-written", "application-start", "d-5", &v5);
    assert_eq!(
        svc.state()["socket_pending"].as_str(),
        Some("d-5"),
        "{}",
        svc.state()
    );
    let out = svc.hook("validate-service", "d-5", &v5);
    assert!(
        out.status.success() && stderr(&out).contains("written but not applied; applying them now"),
        "{}",
        stderr(&out)
    );
    assert_eq!(svc.answering_release(), "v5");
    assert!(
        http_get(new_port, "/").is_err(),
        "the previous address still accepts"
    );
    assert!(svc.state().get("socket_pending").is_none(), "{}", svc.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_never_pick_a_rejected_release_and_never_cut_into_a_deployment() {
    let mut svc = TestService::new();
    for (id, label) in [("d-1", "v1"), ("d-2", "v2")] {
        let rev = svc.revision(label, &[], "");
        svc.deploy_ok(id, &rev);
    }
    let load = Load::start(svc.port, Duration::from_secs(25), 2).await;
    // d-3 breaks after the switch (its health path starts failing): ValidateService rolls
    // back to d-2.
    let v3 = svc.revision("v3", &[], "");
    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-3", &v3));
    assert!(out.status.success(), "{}", stderr(&out));
    edit_deploy_yml(&v3, "path: /healthz", "path: /missing");
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-3", &v3));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Rolled back: d-2 serves again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"), "{}", svc.state());
    let status = svc.status_healthy();
    assert!(
        status.lines().any(|l| l.contains("d-3") && l.contains("failed")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains("d-1") && l.contains("previous (rollback target)")),
        "{status}"
    );
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        svc.serving().as_deref(),
        Some("d-1"),
        "the rollback went to the rejected d-3?"
    );

    // Between ApplicationStart and ValidateService, a manual rollback is refused...
    let v4 = svc.revision("v4", &[], "");
    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-4", &v4));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its ValidateService has not run yet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(svc.serving().as_deref(), Some("d-4"));
    // ...unless forced, and then ValidateService says what happened.
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback", "--force"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-4", &v4));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("release d-4 does not serve, so there is nothing to validate")
            && stderr(&out).contains("d-1 serves instead"),
        "{}",
        stderr(&out)
    );
    let report = load.finish().await;
    assert_no_failures(&report, "an automatic, a manual and a forced rollback");
    assert_eq!(report.last_release().as_deref(), Some("v1"));

    // A hook waiting for the lock ends at once on the agent's SIGTERM.
    let slow = svc.revision("v5", &[("SAMPLE_STARTUP_DELAY_MS", "4000")], "");
    let holder = svc
        .hook_command("application-start", "d-5", &slow)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Instant::now();
    let out = svc.hook_interrupted("TERM", "1", "validate-service", "d-5", &slow);
    let took = t.elapsed();
    assert!(
        stderr(&out).contains("waiting for another deployment step")
            && stderr(&out).contains("interrupted by SIGTERM"),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} to end a hook waiting for the lock"
    );
    let holder = tokio::task::block_in_place(|| holder.wait_with_output()).unwrap();
    assert!(holder.status.success());
}

#[test]
fn status_survives_a_damaged_state_file_and_units_of_others_are_never_touched() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let status = svc.status_healthy();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        status.lines().any(|l| l.contains("d-1")
            && l.contains("serving")
            && l.contains(&format!("hooks {version}"))
            && l.contains("enabled")),
        "{status}"
    );
    assert!(!status.contains("NeedDaemonReload"), "{status}");

    let state = svc.sandbox.host_path("/opt/shop/state.json");
    let saved = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, "{\"serving\": \"d-1\", trunc").unwrap();
    let status = svc.status();
    assert!(
        status.contains("state     DAMAGED")
            && status.contains("shop@d-1.service is active")
            && status.contains("NOT HEALTHY"),
        "{status}"
    );
    std::fs::write(&state, saved).unwrap();

    // `service: dbus` would overwrite the bus's own units: refused before anything changes.
    svc.name = "dbus".into();
    let rev: PathBuf = svc.revision("v2", &[], "");
    let out = svc.hook("before-install", "d-2", &rev);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dbus.socket already exists and was not installed by these hooks"),
        "{}",
        stderr(&out)
    );
    let out = svc.hook("application-start", "d-2", &rev);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!svc.sandbox.host_path("/etc/systemd/system/dbus.socket").exists());
    let bus = run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["is-active", "dbus.socket"]),
    );
    assert_eq!(String::from_utf8_lossy(&bus.stdout).trim(), "active");
}
