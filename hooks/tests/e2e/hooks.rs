//! The hooks against a real systemd, under load: every switch, every broken release, every
//! interruption must leave a release serving and lose no request.

use std::time::Duration;

use crate::load::{Load, slow_requests};
use crate::service::TestService;
use crate::support::*;

fn assert_no_failures(report: &crate::load::Report, what: &str) {
    assert_eq!(
        report.failures(),
        0,
        "{what}: requests failed under load:\n{}",
        report.summary()
    );
    assert!(
        report.ab.requests > 100 && report.wrk.requests > 100,
        "{what}: too little load:\n{}",
        report.summary()
    );
}

/// (took, app, systemd, own) in ms from a hook's last line: "HOOK: took N ms: A ms waiting on
/// the app, S ms on systemd, O ms own work".
fn hook_split(log: &str, hook: &str) -> (u64, u64, u64, u64) {
    let prefix = format!("{hook}: took ");
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .unwrap_or_else(|| panic!("{hook} printed no timing line:\n{log}"));
    let number_before = |what: &str| -> u64 {
        let end = line.find(what).unwrap_or_else(|| panic!("no '{what}' in {line}"));
        let start = line[..end]
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        line[start..end].parse().unwrap_or_else(|_| panic!("{line}"))
    };
    (
        number_before(" ms:"),
        number_before(" ms waiting on the app"),
        number_before(" ms on systemd"),
        number_before(" ms own work"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_switch_the_serving_release_under_load_without_a_failed_request() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.answering_release(), "v1");
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);

    // The new release takes 300 ms to start; slow requests are in flight on the old one.
    let v2 = svc.revision("v2", &[("SAMPLE_STARTUP_DELAY_MS", "300")], "");
    // A latency test: it runs alone (.config/nextest.toml).
    let load = Load::start(svc.port, Duration::from_secs(8), 4).await;
    let slow = slow_requests(svc.port, 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let switch_from = crate::load::clock();
    let log = svc.deploy_ok("d-2", &v2);
    let switch_to = crate::load::clock();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = load.finish().await;
    for s in slow {
        let reply = s.await.unwrap();
        assert!(
            reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
            "a slow request failed: {reply}"
        );
    }
    assert_no_failures(&report, "switch v1 -> v2");
    assert_eq!(report.last_release().as_deref(), Some("v2"));
    crate::load::assert_websockets_reconnected(&report, 4, "switch v1 -> v2");
    assert_eq!(
        report.ws.releases_seen,
        vec!["v1", "v2"],
        "WebSockets reconnect to v2:\n{}",
        report.summary()
    );
    // No stall: the deployment window's p99 stays within a bound of the baseline's, and the
    // load overlapped the whole deployment.
    crate::load::assert_no_stall(&report, switch_from, switch_to, "switch v1 -> v2");

    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"));
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    // Every hook says where its time went; the 300 ms start and the drain of the slow
    // requests are the app's, not the hook's own work.
    for hook in [
        "application-stop",
        "before-install",
        "application-start",
        "validate-service",
    ] {
        let (took, app, systemd, own) = hook_split(&log, hook);
        // Each figure is rounded to the millisecond: the parts add up to the whole within 2 ms.
        assert!(
            (app + systemd + own).abs_diff(took) <= 2,
            "{hook}: {took} ms is not {app} + {systemd} + {own} ms:\n{log}"
        );
    }
    let (_, app, _, _) = hook_split(&log, "before-install");
    assert_eq!(app, 0, "BeforeInstall does not wait on the app:\n{log}");
    let (took, app, _, own) = hook_split(&log, "application-start");
    assert!(
        app >= 300,
        "the release's 300 ms start is time waiting on the app: {app} ms:\n{log}"
    );
    assert!(
        own < took / 2,
        "application-start's own work {own} ms of {took} ms:\n{log}"
    );
    let (_, app, _, _) = hook_split(&log, "validate-service");
    assert!(
        app >= 1000,
        "the 1 s stability check (stable_for) is time waiting on the app: {app} ms:\n{log}"
    );
    assert!(
        svc.app_log("d-1").contains("drain"),
        "the old release drained:\n{}",
        svc.app_log("d-1")
    );

    let status = svc.handoff(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("shop@d-2.service is active (running)"), "{text}");
    assert!(text.contains("d-1") && text.contains("previous"), "{text}");
    // Enabled, so the socket and the serving release come back after a reboot.
    let enabled = run(svc.sandbox.command("systemctl").args([
        "is-enabled",
        "shop.socket",
        "shop@d-2.service",
        "shop@d-1.service",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["enabled", "enabled", "disabled"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_releases_never_take_over_and_the_old_one_keeps_serving() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);

    let cases = [
        (
            "d-2",
            "crashes at start",
            vec![("SAMPLE_FAIL_START", "1")],
            "",
            "crashed while starting",
        ),
        (
            "d-3",
            "never sends READY",
            vec![("SAMPLE_NEVER_READY", "1")],
            "deadlines:\n  start: 2s\n  validate: 10s\n",
            "must send READY=1",
        ),
        (
            "d-4",
            "is unhealthy",
            vec![("SAMPLE_UNHEALTHY", "1")],
            "deadlines:\n  start: 2s\n  validate: 10s\n",
            "HTTP 503",
        ),
    ];
    let load = Load::start(svc.port, Duration::from_secs(18), 2).await;
    for (id, what, env, extra, reason) in cases {
        // `extra` replaces the default deadlines (a deploy.yml has one `deadlines:`).
        let rev = if extra.is_empty() {
            svc.revision(id, &env, "")
        } else {
            revision_with_deadlines(&svc, id, &env, extra)
        };
        let failure = svc.deploy_fails(id, &rev, "application-start", 1, reason);
        assert!(
            failure.output.contains("d-1 keeps serving"),
            "{what}:\n{}",
            failure.output
        );
        assert_eq!(svc.serving().as_deref(), Some("d-1"), "{what}");
        assert_eq!(svc.answering_release(), "v1", "{what}");
        assert_eq!(
            svc.live_instances(),
            vec!["shop@d-1.service"],
            "{what}: the broken instance is stopped"
        );
    }
    let report = load.finish().await;
    assert_no_failures(&report, "three broken releases");
    // The unhealthy one sent READY=1, so it shared the socket until its first 503 stopped it.
    let by_broken = report
        .samples
        .iter()
        .filter(|s| s.release.as_deref() == Some("d-4"))
        .count();
    eprintln!(
        "probe requests answered by the unhealthy release: {by_broken} of {}",
        report.samples.len()
    );
    assert!(
        by_broken < 60,
        "the unhealthy release served {by_broken} probe requests"
    );
    assert_eq!(
        report.ws.closes_1012,
        0,
        "nothing closed the WebSockets on v1:\n{}",
        report.summary()
    );
    let state = svc.state();
    assert_eq!(state["failed"], serde_json::json!(["d-2", "d-3", "d-4"]));
    // The socket never failed: a crash-looping instance must not hit a start limit.
    let socket = run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["is-active", "shop.socket"]),
    );
    assert_eq!(String::from_utf8_lossy(&socket.stdout).trim(), "active");
}

fn revision_with_deadlines(
    svc: &TestService,
    id: &str,
    env: &[(&str, &str)],
    deadlines: &str,
) -> std::path::PathBuf {
    let rev = svc.revision(id, env, "");
    crate::service::edit_deploy_yml(&rev, "deadlines:\n  start: 10s\n  validate: 10s\n", deadlines);
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_crashes_after_starting_is_rolled_back_by_validate_service() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[("SAMPLE_CRASH_AFTER_MS", "1500")], "");
    let v2 = {
        let path = v2.join("deploy.yml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("stable_for: 1s", "stable_for: 3s");
        std::fs::write(path, text).unwrap();
        v2
    };
    let load = Load::start(svc.port, Duration::from_secs(10), 2).await;
    svc.deploy_fails("d-2", &v2, "validate-service", 1, "Rolled back: d-1 serves again");
    let report = load.finish().await;
    // A process that crashes loses what it holds: the requests in flight on it and its
    // keep-alive connections (one per wrk/ab connection at most; ab counts one reset
    // connection up to three times: Receive, Length, Exceptions); nothing else fails.
    eprintln!("a release crashing after its switch: {}", report.summary());
    assert!(
        report.ab.failed <= 30
            && report.wrk.failed <= 10
            && report.probe.failed <= 5
            && report.ws.other_closes.is_empty(),
        "more failed than the crash itself explains:\n{}",
        report.summary()
    );
    assert_eq!(report.last_release().as_deref(), Some("v1"));
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.answering_release(), "v1");
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);
    assert_eq!(svc.state()["failed"], serde_json::json!(["d-2"]));

    // The next deployment builds on that: its ApplicationStop comes from the failed revision
    // (the agent's "last successful install"), and it must still go through.
    let v3 = svc.revision("v3", &[], "");
    svc.deploy_ok("d-3", &v3);
    assert_eq!(svc.answering_release(), "v3");
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unhealthy_after_switch_is_rolled_back_in_place_under_load() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");
    svc.deploy_ok("d-2", &v2);

    // d-2 serves; make validate-service fail by asking it about a health path that fails,
    // as a release whose dependency broke after the switch would.
    let broken = {
        let path = v2.join("deploy.yml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("path: /healthz", "path: /missing");
        std::fs::write(&path, text).unwrap();
        v2
    };
    let load = Load::start(svc.port, Duration::from_secs(8), 3).await;
    let out = svc.hook("validate-service", "d-2", &broken);
    let report = load.finish().await;
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("HTTP 404") && text.contains("Rolled back: d-1 serves again"),
        "{text}"
    );
    assert_no_failures(&report, "rollback d-2 -> d-1");
    assert_eq!(report.last_release().as_deref(), Some("v1"));
    assert_eq!(report.ws.releases_seen, vec!["v2", "v1"], "{}", report.summary());
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_killed_mid_switch_converge_when_run_again() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[("SAMPLE_STARTUP_DELAY_MS", "1500")], "");
    let load = Load::start(svc.port, Duration::from_secs(12), 2).await;

    // Killed once the new instance runs, before the commit (SIGKILL): the next run undoes it
    // first.
    svc.hook_killed_at("after-start", "application-start", "d-2", &v2);
    // The agent's SIGTERM once d-2 answers, before the commit: the hook stops there and
    // undoes the switch itself before it exits.
    let out = svc.hook_termed_at("after-start", "application-start", "d-2", &v2, 1);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("the uncommitted switch to d-2 was undone; d-1 serves"),
        "{text}"
    );
    assert!(svc.state()["switching"].is_null(), "{}", svc.state());
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);
    assert_eq!(svc.is_enabled("shop@d-2.service"), "disabled");
    let out = svc.hook("application-start", "d-2", &v2);
    assert!(
        out.status.success(),
        "re-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = svc.hook("validate-service", "d-2", &v2);
    assert!(
        out.status.success(),
        "validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = load.finish().await;
    assert_no_failures(&report, "interrupted and re-run switch");
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert_eq!(svc.state()["previous"].as_str(), Some("d-1"));
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    assert_eq!(report.last_release().as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_rollback_serves_the_previous_release_without_a_failed_request() {
    let mut svc = TestService::new();
    for (id, label) in [("d-1", "v1"), ("d-2", "v2")] {
        let rev = svc.revision(label, &[], "");
        svc.deploy_ok(id, &rev);
    }
    let load = Load::start(svc.port, Duration::from_secs(6), 2).await;
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback"]));
    let report = load.finish().await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_failures(&report, "manual rollback");
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.state()["previous"].as_str(), Some("d-2"));
    assert_eq!(svc.answering_release(), "v1");

    // A release that is not kept is refused with the list of those that are.
    let out = svc.handoff(&["rollback", "--to", "d-9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kept: d-1, d-2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_changes_nothing_and_stop_service_really_stops() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");
    let out = run_ok(svc.hook_command("application-start", "d-2", &v2).arg("--dry-run"));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("would copy") && plan.contains("would start shop@d-2.service"),
        "{plan}"
    );
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert!(!svc.sandbox.host_path("/opt/shop/releases/d-2").exists());

    // A normal ApplicationStop leaves the service serving...
    run_ok(&mut svc.hook_command("application-stop", "d-2", &v1));
    assert_eq!(svc.answering_release(), "v1");
    // ...and --stop-service really stops it: the port closes.
    run_ok(
        svc.hook_command("application-stop", "d-2", &v1)
            .arg("--stop-service"),
    );
    assert!(http_get(svc.port, "/").is_err(), "the port is still open");
    assert!(svc.live_instances().is_empty());
    // The next deployment brings it back.
    svc.deploy_ok("d-2", &v2);
    assert_eq!(svc.answering_release(), "v2");
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let svc = TestService::new();
    let rev = svc.revision("v1", &[], "");
    std::fs::write(
        rev.join("deploy.yml"),
        "service: ../etc\nlisten: [\"127.0.0.1:1\"]\napp:\n  command: bin/x\n",
    )
    .unwrap();
    let out = svc.hook("before-install", "d-1", &rev);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("service: '../etc'"), "{text}");

    let rev = svc.revision("v1", &[], "");
    let out = svc.hook("application-start", "../../etc", &rev);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("deployment id '../../etc'"), "{text}");
    assert!(
        !svc.sandbox.host_path("/opt/shop").exists(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_strategy_loses_nothing_but_waits_for_the_drain_and_the_start() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "strategy: restart\n");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[("SAMPLE_STARTUP_DELAY_MS", "300")], "strategy: restart\n");
    let load = Load::start(svc.port, Duration::from_secs(8), 2).await;
    let out = svc.deploy_ok("d-2", &v2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    assert!(
        out.contains("strategy restart: stopping d-1 before d-2 starts"),
        "{out}"
    );
    assert_no_failures(&report, "restart strategy");
    assert_eq!(report.last_release().as_deref(), Some("v2"));
    // The price: while nothing serves, requests wait in the socket's queue.
    let worst = report.samples.iter().map(|s| s.latency).max().unwrap();
    assert!(
        worst >= Duration::from_millis(250),
        "expected a stall of at least the 300 ms start, worst was {worst:?}"
    );
    eprintln!("restart strategy: worst probe latency {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_applied_and_reported() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let old_port = svc.port;
    svc.port = free_port();
    let v2 = svc.revision("v2", &[], "");
    let log = svc.deploy_ok("d-2", &v2);
    assert!(
        log.contains(&format!(
            "addresses change from [ListenStream=127.0.0.1:{old_port}] to [127.0.0.1:{}]",
            svc.port
        )),
        "{log}"
    );
    assert_eq!(svc.answering_release(), "v2");
    assert!(
        http_get(old_port, "/").is_err(),
        "the old address still accepts connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deployment_step_at_a_time() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let slow = svc.revision("v2", &[("SAMPLE_STARTUP_DELAY_MS", "3000")], "");
    let other = svc.revision("v3", &[], "");
    let first = svc
        .hook_command("application-start", "d-2", &slow)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let out = svc
        .hook_command("application-start", "d-3", &other)
        .args(["--lock-wait", "500ms"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("another deployment step holds") && text.contains("application-start d-2"),
        "{text}"
    );
    let first = tokio::task::block_in_place(|| first.wait_with_output()).unwrap();
    assert!(first.status.success());
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_the_socket_and_the_serving_release_come_back() {
    let mut svc = TestService::new();
    for (id, label) in [("d-1", "v1"), ("d-2", "v2")] {
        let rev = svc.revision(label, &[], "");
        svc.deploy_ok(id, &rev);
    }
    let old_pid = svc.sandbox.pid;
    svc.sandbox.reboot();
    assert_ne!(svc.sandbox.pid, old_pid);
    // Enabled units start at boot; the instance may still be starting.
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(reply) = http_get(svc.port, "/version") {
            answered = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = answered.expect("nothing answers after the reboot");
    assert!(reply.trim_end().ends_with("v2"), "{reply}");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    // And the next deployment builds on it.
    let v3 = svc.revision("v3", &[], "");
    svc.deploy_ok("d-3", &v3);
    assert_eq!(svc.answering_release(), "v3");
}
