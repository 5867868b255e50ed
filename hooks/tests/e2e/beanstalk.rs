//! Elastic Beanstalk: the bundle's platform hooks run by a replay of the platform engine
//! (scripts/eb-engine) inside the real systemd sandbox: staging, prebuild/predeploy, the flip
//! with its systemctl calls in the engine's logged order, staging → current, postdeploy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::load::{Load, assert_no_failures, assert_no_stall, assert_websockets_reconnected, clock};
use crate::service::TestService;
use crate::support::*;

/// The flip as the platform engine logged it in its eb-engine.log, one systemctl call per line:
/// the sequence scripts/eb-engine reproduces (README, "Elastic Beanstalk").
const LOGGED_FLIP: [&str; 17] = [
    "stop nginx.service",
    "disable nginx.service",
    "daemon-reload",
    "reset-failed",
    "stop eb-app.target",
    "disable web.service",
    "daemon-reload",
    "reset-failed",
    "daemon-reload",
    "reset-failed",
    "enable eb-app.target",
    "start eb-app.target",
    "enable web.service",
    "start web.service",
    "daemon-reload",
    "reset-failed",
    "start nginx.service",
];

/// A Beanstalk instance: the engine's folders (root) and its stand-ins for port 80 (where the
/// platform's default nginx listens) and the app's PORT (5000).
struct Engine {
    script: PathBuf,
    root: PathBuf,
    nginx_port: u16,
    app_port: u16,
}

impl Engine {
    fn new(svc: &TestService) -> Self {
        // Inside the sandbox the checkout may be hidden (its own /tmp): run a copy from scratch.
        let script = svc.sandbox.scratch("eb-engine");
        std::fs::copy(workspace().join("scripts/eb-engine"), &script).unwrap();
        Self {
            script,
            root: svc.sandbox.scratch("var-app"),
            nginx_port: free_port(),
            app_port: free_port(),
        }
    }

    fn command(&self, svc: &TestService, args: &[&str]) -> Command {
        let mut cmd = svc.sandbox.command(&self.script);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["--port", &self.nginx_port.to_string()])
            .args(["--app-port", &self.app_port.to_string()])
            .args(args);
        cmd
    }

    /// Runs an application deployment of `bundle` (a folder); returns the engine's output.
    fn deploy(&self, svc: &TestService, bundle: &Path) -> (bool, String) {
        let mut cmd = self.command(svc, &["deploy", bundle.to_str().unwrap()]);
        let out = in_place(|| run(&mut cmd));
        (out.status.success(), explain(&cmd, &out))
    }

    fn config(&self, svc: &TestService) -> (bool, String) {
        let mut cmd = self.command(svc, &["config"]);
        let out = in_place(|| run(&mut cmd));
        (out.status.success(), explain(&cmd, &out))
    }

    /// The systemctl calls the replay made, in order.
    fn verbs(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join(".replay/systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Inside the (multi-thread) test runtime, keeps the load clients' tasks running.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to),
    );
}

/// The source bundle `make bundle-beanstalk` builds, as a folder: a revision of the sample app
/// plus beanstalk/'s .platform hooks, nginx.conf and Procfile, and `hooks/beanstalk`.
fn eb_bundle(svc: &TestService, label: &str, env: &[(&str, &str)], proxy_none: bool) -> PathBuf {
    with_beanstalk_layout(svc, svc.revision(label, env, ""), proxy_none)
}

fn with_beanstalk_layout(svc: &TestService, dir: PathBuf, proxy_none: bool) -> PathBuf {
    copy_tree(&workspace().join("beanstalk"), &dir);
    std::fs::remove_dir_all(dir.join("proxy-none")).unwrap();
    if proxy_none {
        std::fs::remove_dir_all(dir.join(".platform/nginx")).unwrap();
        copy_tree(&workspace().join("beanstalk/proxy-none"), &dir);
    }
    let beanstalk = svc.sandbox.test_binary("beanstalk");
    write_exe(
        &dir.join("hooks/beanstalk"),
        &format!("#!/bin/sh\nexec {beanstalk} \"$@\"\n"),
    );
    dir
}

/// What a Beanstalk user deploys without us: the app as the Procfile's web process on $PORT,
/// behind the platform's default nginx on port 80.
fn plain_bundle(svc: &TestService, label: &str) -> PathBuf {
    let dir = svc.revision(label, &[], "");
    // The engine gives web.service only PORT: the release id goes on the command line.
    std::fs::write(
        dir.join("Procfile"),
        format!("web: exec env RELEASE={label} bin/sample-app --bind 127.0.0.1:$PORT\n"),
    )
    .unwrap();
    dir
}

/// The replay itself: its flip is the engine's logged systemctl sequence; ProxyServer: none
/// drops the nginx calls; a failing hook fails the deployment before the flip.
#[test]
fn the_replay_flips_in_the_engines_logged_order_and_a_failing_hook_stops_it() {
    let svc = TestService::new();
    let engine = Engine::new(&svc);
    let bundle = svc.sandbox.scratch("placeholder");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("Procfile"), "web: exec sleep infinity\n").unwrap();
    let (ok, out) = engine.deploy(&svc, &bundle);
    assert!(ok, "{out}");
    assert_eq!(engine.verbs(), LOGGED_FLIP, "{out}");
    assert_eq!(svc.unit_property("web.service", "ActiveState"), "active", "{out}");
    assert_eq!(
        svc.unit_property("nginx.service", "ActiveState"),
        "active",
        "{out}"
    );
    assert_eq!(svc.is_enabled("eb-app.target"), "enabled");
    // The platform's default nginx listens on "port 80" and forwards to $PORT.
    assert!(
        http_get(engine.nginx_port, "/").is_ok(),
        "nginx does not listen on {}",
        engine.nginx_port
    );

    // ProxyServer: none: no nginx at all.
    std::fs::remove_file(engine.root.join(".replay/systemctl.log")).unwrap();
    copy_tree(&workspace().join("beanstalk/proxy-none"), &bundle);
    let (ok, out) = engine.deploy(&svc, &bundle);
    assert!(ok, "{out}");
    assert_eq!(engine.verbs(), LOGGED_FLIP[4..14], "{out}");

    // A predeploy hook that fails: the deployment fails, nothing is flipped.
    std::fs::remove_file(engine.root.join(".replay/systemctl.log")).unwrap();
    write_exe(
        &bundle.join(".platform/hooks/predeploy/10-fail"),
        "#!/bin/sh\necho no >&2\nexit 7\n",
    );
    let (ok, out) = engine.deploy(&svc, &bundle);
    assert!(!ok, "{out}");
    assert!(out.contains("predeploy hook 10-fail exited 7"), "{out}");
    assert!(engine.verbs().is_empty(), "{:?}", engine.verbs());
}

/// v1 → v2 → v1 → broken v3, and a configuration deployment, each through the replayed engine
/// under ab -r, wrk, WebSocket clients and the probe: not one failed request; v3 rejected with
/// v1 serving; the configuration deployment leaves v1's instance alone.
#[tokio::test(flavor = "multi_thread")]
async fn beanstalk_deployments_switch_without_a_failed_request_and_reject_a_broken_release() {
    let svc = TestService::new();
    let engine = Engine::new(&svc);
    let v1 = eb_bundle(&svc, "v1", &[], false);
    let (ok, out) = engine.deploy(&svc, &v1);
    assert!(ok, "{out}");
    assert_eq!(svc.answering_release(), "v1");
    // nginx runs with the bundle's nginx.conf: on no port.
    assert_eq!(svc.unit_property("nginx.service", "ActiveState"), "active");
    assert!(
        http_get(engine.nginx_port, "/").is_err(),
        "nginx still listens on {}",
        engine.nginx_port
    );

    let v2 = eb_bundle(&svc, "v2", &[], false);
    let v1_again = eb_bundle(&svc, "v1", &[], false);
    let v3 = eb_bundle(&svc, "v3", &[("SAMPLE_UNHEALTHY", "1")], false);
    let load = Load::start(svc.port, Duration::from_secs(60), 4).await;
    let mut windows = Vec::new();
    for (bundle, label) in [(&v2, "v2"), (&v1_again, "v1")] {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let from = clock();
        let (ok, out) = engine.deploy(&svc, bundle);
        windows.push((from, clock()));
        assert!(ok, "{out}");
        assert_eq!(svc.answering_release(), label, "{out}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let serving = svc.serving().unwrap();
    let from = clock();
    let (ok, out) = engine.deploy(&svc, &v3);
    windows.push((from, clock()));
    assert!(!ok, "the broken v3 was deployed:\n{out}");
    assert!(out.contains("postdeploy hook 50-handoff exited 1"), "{out}");
    assert!(
        out.contains("503"),
        "the failure does not name the unhealthy answer:\n{out}"
    );
    assert_eq!(svc.answering_release(), "v1");
    assert_eq!(svc.serving().as_deref(), Some(serving.as_str()));

    let unit = format!("shop@{serving}.service");
    let pid = svc.unit_property(&unit, "MainPID");
    let from = clock();
    let (ok, out) = engine.config(&svc);
    windows.push((from, clock()));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("still serves release {serving}")), "{out}");
    assert_eq!(svc.live_instances(), vec![unit.clone()], "{out}");
    assert_eq!(
        svc.unit_property(&unit, "MainPID"),
        pid,
        "the configuration deployment restarted {unit}:\n{out}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.finish().await;
    eprintln!("beanstalk: {}", report.summary());
    assert_no_failures(&report, "beanstalk deployments");
    assert_websockets_reconnected(&report, 4, "beanstalk deployments");
    for (from, to) in windows {
        assert_no_stall(&report, from, to, "beanstalk deployment");
    }
}

/// The platform's default, side by side: nginx owns the port and the app is web.service, so
/// the engine's flip (one deployment, v1 → v2) leaves the port without a listener, and
/// requests fail.
#[tokio::test(flavor = "multi_thread")]
async fn the_platforms_default_nginx_fails_requests_in_its_flip() {
    let svc = TestService::new();
    let engine = Engine::new(&svc);
    let (ok, out) = engine.deploy(&svc, &plain_bundle(&svc, "v1"));
    assert!(ok, "{out}");
    let v2 = plain_bundle(&svc, "v2");
    let load = Load::start(engine.nginx_port, Duration::from_secs(30), 0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, out) = engine.deploy(&svc, &v2);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.finish().await;
    eprintln!("default nginx: {}", report.summary());
    assert!(
        report.failures() > 0 && !report.probe_failed_at.is_empty(),
        "the default nginx lost no request in the flip, so the comparison in the README is wrong:\n{}",
        report.summary()
    );
}

/// `strategy: proxy` from the platform hooks: an app that only listens on $PORT, behind our
/// front, deployed with `ProxyServer: none` (no nginx at all), switches v1 → v2 under load
/// without a failed request.
#[tokio::test(flavor = "multi_thread")]
async fn beanstalk_deploys_strategy_proxy_without_nginx_and_without_a_failed_request() {
    let svc = TestService::new();
    let engine = Engine::new(&svc);
    let v1 = with_beanstalk_layout(&svc, svc.proxied_revision("v1", &[], "a", ""), true);
    let (ok, out) = engine.deploy(&svc, &v1);
    assert!(ok, "{out}");
    assert_eq!(svc.answering_release(), "v1");
    assert!(
        !engine.verbs().iter().any(|v| v.contains("nginx")),
        "{:?}",
        engine.verbs()
    );
    let v2 = with_beanstalk_layout(&svc, svc.proxied_revision("v2", &[], "a", ""), true);
    let load = Load::start(svc.port, Duration::from_secs(30), 2).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, out) = engine.deploy(&svc, &v2);
    assert!(ok, "{out}");
    assert_eq!(svc.answering_release(), "v2", "{out}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.finish().await;
    eprintln!("beanstalk, strategy: proxy: {}", report.summary());
    assert_no_failures(&report, "beanstalk, strategy: proxy");
    assert_websockets_reconnected(&report, 2, "beanstalk, strategy: proxy");
}
