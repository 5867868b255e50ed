//! Recovery without holes: after an interruption at a named step, a failed undo, a config that
//! the hooks cannot read, or a power cut, exactly one release serves — the one the state
//! records — through its own front and route, and exactly its instance is enabled.

use std::time::Duration;

use crate::load::{Load, assert_no_failures, slow_requests};
use crate::service::{TestService, edit_deploy_yml};
use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Waits (up to 10 s) until the port answers `GET /` with 200; returns the reply.
fn wait_for_answer(port: u16) -> String {
    for _ in 0..100 {
        if let Ok(reply) = http_get(port, "/")
            && reply.contains(" 200 ")
        {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing answers 200 on port {port}");
}

/// Whether a reply names `release` in its X-Release header.
fn answered_by(reply: &str, release: &str) -> bool {
    reply.lines().any(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-release:")
            .is_some_and(|v| v.trim() == release)
    })
}

fn front_id(svc: &TestService) -> String {
    svc.front_id()
}

/// A GET of `/` with a header of `bytes` bytes; returns the status line.
fn get_with_big_header(port: u16, bytes: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(bytes)
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.lines().next().unwrap_or_default().to_string()
}

/// A hook killed during the old release's drain (after the commit), then a power cut: the old
/// release was disabled before its drain, the next hook stops what the killed one left
/// running, and an instance left enabled by anything else stays down at boot (boot guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retire_interrupted_during_the_drain_never_brings_the_old_release_back_at_boot() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");

    let load = Load::start(svc.port, Duration::from_secs(8), 2).await;
    let slow = slow_requests(svc.port, 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| svc.hook("before-install", "d-2", &v2));
    svc.hook_killed_at("retiring", "application-start", "d-2", &v2);
    // Committed: d-2 serves and is enabled; d-1 is disabled although it still runs.
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert_eq!(svc.is_enabled("shop@d-2.service"), "enabled");
    assert_eq!(
        svc.is_enabled("shop@d-1.service"),
        "disabled",
        "the old release must be disabled before it drains"
    );
    assert_eq!(svc.live_instances(), ["shop@d-1.service", "shop@d-2.service"]);
    // The next hook reconciles: the instance the killed hook left is retired (it drains).
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-2", &v2));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shop@d-1.service is running although d-2 serves"),
        "{}",
        stderr(&out)
    );
    let report = load.finish().await;
    for s in slow {
        let reply = s.await.unwrap();
        assert!(reply.contains(" 200 "), "a slow request to d-1 failed: {reply}");
    }
    assert_no_failures(&report, "a retire interrupted during the drain");
    assert_eq!(svc.live_instances(), ["shop@d-2.service"]);

    // Anything else that leaves the old release enabled (a hook of an older version killed
    // in its retire) cannot bring it back at boot: its boot guard skips it.
    run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["enable", "shop@d-1.service"]),
    );
    svc.sandbox.reboot();
    let reply = tokio::task::block_in_place(|| wait_for_answer(svc.port));
    assert!(answered_by(&reply, "v2"), "{reply}");
    for _ in 0..40 {
        let reply = http_get(svc.port, "/").unwrap();
        assert!(answered_by(&reply, "v2"), "after the boot: {reply}");
    }
    assert_eq!(
        svc.live_instances(),
        ["shop@d-2.service"],
        "only the recorded release starts at boot"
    );
    // The next step disables what it finds enabled, and the next deployment goes through.
    let v3 = svc.revision("v3", &[], "");
    svc.deploy_ok("d-3", &v3);
    assert_eq!(svc.answering_release(), "v3");
    for (unit, want) in [
        ("shop@d-1.service", "disabled"),
        ("shop@d-2.service", "disabled"),
        ("shop@d-3.service", "enabled"),
    ] {
        assert_eq!(svc.is_enabled(unit), want, "{unit}");
    }
}

/// An undo that cannot finish (the serving release's units cannot be restored) keeps the
/// intent; the next hook finishes it once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undo_that_did_not_finish_keeps_the_intent_and_the_next_hook_finishes_it() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    // d-1's own deploy.yml, in its release folder, cannot be read: its units cannot be
    // rendered again.
    let kept = svc.sandbox.host_path("/opt/shop/releases/d-1/deploy.yml");
    let good = std::fs::read_to_string(&kept).unwrap();
    std::fs::write(&kept, format!("{good}not_a_field: 1\n")).unwrap();

    let load = Load::start(svc.port, Duration::from_secs(10), 2).await;
    let broken = svc.revision("v2", &[("SAMPLE_FAIL_START", "1")], "");
    let failure = svc.deploy_fails("d-2", &broken, "application-start", 1, "could not be restored");
    let state = svc.state();
    assert_eq!(
        state["switching"]["to"], "d-2",
        "the undo did not finish, so the intent stays:\n{state}\n{}",
        failure.output
    );
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert!(
        svc.status().contains("UNFINISHED switch to d-2"),
        "{}",
        svc.status()
    );

    // Once d-1's config reads again, the next hook finishes the undo, then deploys.
    std::fs::write(&kept, good).unwrap();
    let v3 = svc.revision("v3", &[], "");
    let log = svc.deploy_ok("d-3", &v3);
    assert!(log.contains("interrupted; undoing it first"), "{log}");
    let report = load.finish().await;
    assert_no_failures(&report, "an unfinished undo, finished by the next deployment");
    assert!(svc.state()["switching"].is_null(), "{}", svc.state());
    assert_eq!(svc.answering_release(), "v3");
    assert_eq!(svc.live_instances(), ["shop@d-3.service"]);
}

/// `releases.keep` prunes failed releases first: after a release that failed at start and
/// one rolled back by ValidateService, `handoff rollback` still has a good release to go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_releases_are_pruned_first_and_rollback_finds_the_last_good_one() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let crashing = svc.revision("f", &[("SAMPLE_FAIL_START", "1")], "");
    svc.deploy_fails("d-2", &crashing, "application-start", 1, "d-1 keeps serving");
    let v2 = svc.revision("v2", &[], "");
    svc.deploy_ok("d-3", &v2);
    // Healthy for its first health check (ApplicationStart's confirmation), unhealthy at
    // ValidateService: rolled back to d-3.
    let v3 = svc.revision("v3", &[("SAMPLE_UNHEALTHY_AFTER_CHECKS", "1")], "");
    edit_deploy_yml(&v3, "validate: 10s", "validate: 2s");
    let load = Load::start(svc.port, Duration::from_secs(12), 0).await;
    svc.deploy_fails("d-4", &v3, "validate-service", 1, "Rolled back: d-3 serves again");
    let kept: Vec<String> = std::fs::read_dir(svc.sandbox.host_path("/opt/shop/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        kept,
        ["d-1", "d-3", "d-4"],
        "the failed d-2 goes first, d-1 stays"
    );
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let report = load.finish().await;
    assert_no_failures(&report, "a rollback after two failed deployments");
    assert_eq!(svc.serving().as_deref(), Some("d-1"));
    assert_eq!(svc.answering_release(), "v1");
}

/// strategy: proxy. A release that ships other front settings (a smaller header limit) is
/// interrupted once its new front serves beside the old one: the undo goes back to the
/// recorded front, so the old release is served with its own front and settings. Then a
/// release whose app breaks under its first requests through the front is rejected the same
/// way, without the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_releases_front_never_outlives_the_undo() {
    let mut svc = TestService::new();
    let v1 = svc.proxied_revision("v1", &[], "a", "");
    svc.deploy_ok("d-1", &v1);
    let v1_front = front_id(&svc);
    assert!(get_with_big_header(svc.port, 12 * 1024).contains(" 200 "));

    let v2 = svc.proxied_revision("v2", &[], "a", "");
    edit_deploy_yml(&v2, "front:\n", "front:\n  max_header_bytes: 8192\n");
    let load = Load::start(svc.port, Duration::from_secs(20), 2).await;
    tokio::task::block_in_place(|| svc.hook("before-install", "d-2", &v2));
    svc.hook_killed_at("front-started", "application-start", "d-2", &v2);
    assert_eq!(
        svc.live_fronts().len(),
        2,
        "the new front serves beside the old one"
    );
    assert_eq!(
        svc.state()["front"],
        v1_front.as_str(),
        "not committed: v1's front is recorded"
    );
    // The next hook (CodeDeploy's next deployment, here v1's revision again) undoes it first.
    let log = svc.deploy_ok("d-3", &v1);
    assert!(log.contains("interrupted; undoing it first"), "{log}");
    assert_eq!(front_id(&svc), v1_front, "v1's front serves after the undo");

    // A release whose app is healthy for the direct probes and breaks through the front: its
    // new front was confirmed, the public probe fails, and the undo keeps v1's front.
    let v4 = svc.proxied_revision("v4", &[("SAMPLE_UNHEALTHY_AFTER_CHECKS", "1")], "a", "");
    edit_deploy_yml(&v4, "front:\n", "front:\n  max_header_bytes: 8192\n");
    let failure = svc.deploy_fails("d-4", &v4, "application-start", 1, "d-3 keeps serving");
    let report = load.finish().await;
    assert!(failure.output.contains("HTTP 503"), "{}", failure.output);
    assert_no_failures(&report, "releases rejected behind a new front");
    assert_eq!(front_id(&svc), v1_front, "v1's front serves after the undo");
    assert_eq!(svc.serving().as_deref(), Some("d-3"));
    assert_eq!(svc.state()["front"], v1_front.as_str());
    assert_eq!(svc.live_instances(), ["shop@d-3.service"]);
    let status = get_with_big_header(svc.port, 12 * 1024);
    assert!(
        status.contains(" 200 "),
        "v1's settings accept a 12 KB header: {status}"
    );
    let route: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(svc.sandbox.host_path("/opt/shop/routes.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(route["release"], "d-3");
}

/// strategy: proxy. Whether the serving release runs behind a front is never decided by
/// parsing its deploy.yml (a hook of another version may not read it): the front keeps
/// serving, the same process, through the next deployment's recovery. A route that does not
/// name the serving release is set back by every recovery, and routes.json stays readable
/// under a strict umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_config_never_stops_the_front_and_recovery_fixes_the_route() {
    let mut svc = TestService::new();
    let v1 = svc.proxied_revision("v1", &[], "a", "");
    svc.deploy_ok("d-1", &v1);
    let front = front_id(&svc);
    let front_unit = format!("shop-front@{front}.service");
    let pid = svc.unit_property(&front_unit, "MainPID");
    // d-1's deploy.yml as a newer version of the hooks could write it.
    let kept = svc.sandbox.host_path("/opt/shop/releases/d-1/deploy.yml");
    let text = std::fs::read_to_string(&kept).unwrap();
    std::fs::write(&kept, format!("{text}a_future_setting: yes\n")).unwrap();
    // And a route file that names no running release (a hand edit, a half-finished step).
    let routes = svc.sandbox.host_path("/opt/shop/routes.json");
    std::fs::write(&routes, "{\"release\":\"d-0\",\"upstream\":\"127.0.0.1:1\"}\n").unwrap();

    // The next step's recovery, under a strict umask: the front must not be stopped.
    let load = Load::start(svc.port, Duration::from_secs(6), 2).await;
    let mut cmd = svc.sandbox.command("sh");
    cmd.arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(svc.sandbox.test_binary("handoff"))
        .arg("validate-service")
        .arg("--revision")
        .arg(&v1)
        .env("DEPLOYMENT_ID", "d-1");
    let out = tokio::task::block_in_place(|| run(&mut cmd));
    let report = load.finish().await;
    assert!(out.status.success(), "{}", explain(&cmd, &out));
    assert!(
        stderr(&out).contains("the route does not name d-1"),
        "{}",
        stderr(&out)
    );
    assert_no_failures(&report, "a recovery with an unreadable config");
    assert_eq!(svc.live_fronts(), std::slice::from_ref(&front_unit));
    assert_eq!(
        svc.unit_property(&front_unit, "MainPID"),
        pid,
        "the front was restarted"
    );
    let route: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&routes).unwrap()).unwrap();
    assert_eq!(route["release"], "d-1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&routes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "routes.json under umask 077");
    // A front that restarts reads it.
    run_ok(svc.sandbox.command("systemctl").args(["restart", &front_unit]));
    let reply = tokio::task::block_in_place(|| wait_for_answer(svc.port));
    assert!(answered_by(&reply, "v1"), "{reply}");
}

/// A socket move interrupted after the unit was rewritten, whose new address then cannot be
/// bound: the recovery goes back to the addresses recorded before the move (the unit file no
/// longer has them), and the release keeps serving there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_socket_move_that_fails_goes_back_to_the_recorded_addresses() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let old_port = svc.port;
    // The new address is taken (by this test) once the hook has rewritten the unit.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    svc.port = taken.local_addr().unwrap().port();
    let v2 = svc.revision("v2", &[], "");
    run_ok(&mut svc.hook_command("before-install", "d-2", &v2));
    drop(taken);
    svc.hook_killed_at("socket-written", "application-start", "d-2", &v2);
    let state = svc.state();
    assert_eq!(state["socket_pending"], "d-2", "{state}");
    assert_eq!(
        state["socket_before"],
        serde_json::json!([format!("127.0.0.1:{old_port}")]),
        "{state}"
    );
    let _taken = std::net::TcpListener::bind(("127.0.0.1", svc.port)).unwrap();

    let out = tokio::task::block_in_place(|| svc.hook("application-start", "d-2", &v2));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("The socket is back on [127.0.0.1:{old_port}]")),
        "{text}"
    );
    assert!(!text.contains("Nothing may serve"), "{text}");
    let reply = http_get(old_port, "/").unwrap();
    assert!(
        answered_by(&reply, "v2"),
        "d-2 serves on the old address: {reply}"
    );
    assert!(svc.state().get("socket_pending").is_none(), "{}", svc.state());
}

/// The agent's SIGTERM after the commit, while the old release drains: the hook finishes the
/// retire before it exits, says that the new release serves, and succeeds (exit 0): the release
/// it deployed serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_after_the_commit_finishes_the_retire_before_the_hook_exits() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.revision("v2", &[], "");
    let load = Load::start(svc.port, Duration::from_secs(6), 2).await;
    tokio::task::block_in_place(|| svc.hook("before-install", "d-2", &v2));
    let out = svc.hook_termed_at("retiring", "application-start", "d-2", &v2, 0);
    let report = load.finish().await;
    assert!(
        stderr(&out).contains("d-2 serves (its switch was committed)")
            && stderr(&out).contains("d-2 serves: its switch was committed before SIGTERM"),
        "{}",
        stderr(&out)
    );
    assert_no_failures(&report, "SIGTERM during the retire");
    assert_eq!(svc.live_instances(), ["shop@d-2.service"]);
    assert_eq!(svc.is_enabled("shop@d-1.service"), "disabled");
    assert_eq!(svc.is_enabled("shop@d-2.service"), "enabled");
    // ValidateService of the same deployment goes on from there.
    let out = tokio::task::block_in_place(|| svc.hook("validate-service", "d-2", &v2));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// strategy: proxy. A power cut after a switch wrote `routes.json` for the new release and
/// before its commit: at boot the recorded front and release start (the new release's boot
/// guard keeps it down), and the front routes to the release the state commits, not to the
/// one `routes.json` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_power_cut_mid_switch_the_front_routes_to_the_committed_release() {
    let mut svc = TestService::new();
    let v1 = svc.proxied_revision("v1", &[], "a", "");
    svc.deploy_ok("d-1", &v1);
    let v2 = svc.proxied_revision("v2", &[], "a", "");
    tokio::task::block_in_place(|| svc.hook("before-install", "d-2", &v2));
    svc.hook_killed_at("route-written", "application-start", "d-2", &v2);
    let routes = svc.sandbox.host_path("/opt/shop/routes.json");
    let route: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&routes).unwrap()).unwrap();
    assert_eq!(route["release"], "d-2", "the kill point is real");
    assert_eq!(svc.serving().as_deref(), Some("d-1"));

    svc.sandbox.reboot();
    let reply = tokio::task::block_in_place(|| wait_for_answer(svc.port));
    assert!(answered_by(&reply, "v1"), "{reply}");
    for _ in 0..20 {
        let reply = http_get(svc.port, "/").unwrap();
        assert!(answered_by(&reply, "v1"), "after the boot: {reply}");
    }
    assert_eq!(svc.live_instances(), ["shop@d-1.service"]);
    // The next deployment undoes the interrupted switch and goes through.
    let v3 = svc.proxied_revision("v3", &[], "a", "");
    svc.deploy_ok("d-3", &v3);
    assert_eq!(svc.answering_release(), "v3");
}
