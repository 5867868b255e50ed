//! `strategy: proxy`: apps that do nothing for a deploy (bind `$PORT`, die at once on SIGTERM,
//! never drain) switch without a failed request, because the front drains for them; the front
//! itself is replaced with the native handoff; a broken release never takes traffic.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{Load, assert_no_failures, assert_websockets_reconnected, slow_requests};
use crate::service::{TestService, edit_deploy_yml};
use crate::support::*;

async fn assert_answered(slow: Vec<tokio::task::JoinHandle<String>>, what: &str) {
    for s in slow {
        let reply = s.await.unwrap();
        assert!(is_status(&reply, 200), "{what}: a slow request failed: {reply}");
    }
}

/// Whether an HTTP reply's status line has `code`.
fn is_status(reply: &str, code: u16) -> bool {
    reply
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some(&code.to_string()))
}

fn front_id(svc: &TestService) -> String {
    svc.front_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_that_die_on_sigterm_switch_behind_the_front_and_the_front_is_replaced_without_a_failed_request()
{
    let mut svc = TestService::new();
    let v1 = svc.proxied_revision("v1", &[], "a", "");
    svc.deploy_ok("d-1", &v1);
    assert_eq!(svc.answering_release(), "v1");
    let first_front = front_id(&svc);
    assert_eq!(svc.state()["front"], first_front.as_str(), "{}", svc.state());
    // The release listens on loopback only, on the port the hooks chose, without the socket.
    let env = svc.instance_environment("d-1");
    let port: u16 = env
        .lines()
        .find_map(|l| l.strip_prefix("PORT="))
        .expect("PORT in the release's environment")
        .parse()
        .unwrap();
    assert!(!env.contains("LISTEN_FDS"), "{env}");
    assert!(is_status(&http_get(port, "/healthz").unwrap(), 200));

    let load = Load::start(svc.port, Duration::from_secs(30), 4).await;
    // HTTP/2 clients beside them: h2load (Debian's nghttp2-client), with prior knowledge, over
    // the route switch and the front switch (the old front sends its connections GOAWAY, and
    // h2load opens new ones on the socket the next front serves).
    let h2log = svc.sandbox.scratch("h2load.log");
    let h2load = std::process::Command::new("h2load")
        .args(["-c", "4", "-m", "4", "-D", "15", "--log-file"])
        .arg(&h2log)
        .arg(format!("http://127.0.0.1:{}/", svc.port))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("h2load: run scripts/setup test, which installs nghttp2-client");

    // 1. A route switch: same front, new release (which takes 300 ms to start).
    let v2 = svc.proxied_revision("v2", &[("SAMPLE_STARTUP_DELAY_MS", "300")], "a", "");
    let slow = slow_requests(svc.port, 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = svc.deploy_ok("d-2", &v2);
    assert!(out.contains("front") && out.contains("drained d-1"), "{out}");
    assert_answered(slow, "route switch").await;
    assert_eq!(front_id(&svc), first_front, "the same front serves");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);

    // 2. A front switch: v1 again, with another front build and other front settings, among
    //    them its metrics.
    let v1b = svc.proxied_revision("v1", &[], "b", "");
    let metrics = free_port();
    edit_deploy_yml(
        &v1b,
        "front:\n",
        &format!("front:\n  idle_timeout: 30s\n  metrics: 127.0.0.1:{metrics}\n"),
    );
    let slow = slow_requests(svc.port, 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    svc.deploy_ok("d-3", &v1b);
    assert_answered(slow, "front switch").await;
    // The new front, under its systemd unit, counts the load's requests to d-3.
    let scrape = http_get(metrics, "/metrics").unwrap();
    let d3_ok = scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"handoff_front_requests_total{release="d-3",method="GET",status_class="2xx"} "#)
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(d3_ok.is_some_and(|n| n > 0), "{scrape}");
    assert!(
        scrape.contains(r#",release="d-3"} 1"#),
        "handoff_front_info: {scrape}"
    );
    let mut h2load = h2load;
    assert!(
        h2load.try_wait().unwrap().is_none(),
        "h2load ended before the front switch did: raise its -D"
    );
    let h2load = tokio::task::block_in_place(|| h2load.wait_with_output()).unwrap();
    let h2 = String::from_utf8_lossy(&h2load.stdout);
    let line = |prefix: &str| {
        h2.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {h2}"))
    };
    let counts = |l: &str| -> Vec<u64> {
        l.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let r = counts(line("requests:"));
    // Its log, a line per request: when it was sent (0: never), its status (-1: none), its time.
    // nghttp2, h2load's library, refuses the requests h2load queued but had not sent when the
    // old front's GOAWAY came (a client retries those on its next connection; h2load counts
    // them as errored). Every request that left h2load must have been answered 2xx.
    let log = std::fs::read_to_string(&h2log).unwrap();
    let (mut sent, mut never_sent, mut unanswered) = (0, 0, Vec::new());
    for l in log.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        match (f[0], f[1]) {
            ("0", "-1") => never_sent += 1,
            (_, "-1") => unanswered.push(l.to_string()),
            (_, status) => {
                sent += 1;
                assert!(status.starts_with('2'), "h2load got {status}: {l}");
            }
        }
    }
    eprintln!(
        "h2load: {}; {}; {sent} answered, {never_sent} refused by h2load's own library after GOAWAY, before they were sent",
        line("requests:"),
        line("finished in")
    );
    assert!(
        h2load.status.success() && sent > 1000 && unanswered.is_empty() && r[5] == never_sent && r[6] == 0,
        "h2load across the route switch and the front switch: {} sent and unanswered:\n{}\n{h2}{}",
        unanswered.len(),
        unanswered.join("\n"),
        String::from_utf8_lossy(&h2load.stderr)
    );
    let second_front = front_id(&svc);
    assert_ne!(second_front, first_front);
    assert_eq!(
        svc.is_enabled(&format!("shop-front@{first_front}.service")),
        "disabled"
    );
    assert_eq!(
        svc.is_enabled(&format!("shop-front@{second_front}.service")),
        "enabled"
    );
    let builds: Vec<String> = std::fs::read_dir(svc.sandbox.host_path("/opt/shop/fronts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        builds,
        vec![second_front.clone()],
        "front builds that no longer run are removed"
    );

    // 3. `handoff rollback`: d-2 again, with the front it shipped.
    let out = tokio::task::block_in_place(|| svc.handoff(&["rollback"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = load.finish().await;
    assert_no_failures(
        &report,
        "v1 -> v2 -> v1 (new front) -> rollback, apps that die on SIGTERM",
    );
    assert_websockets_reconnected(&report, 4, "every switch, to the old release's WebSockets");
    eprintln!("{}", report.summary());
    assert_eq!(svc.answering_release(), "v2");
    // A rollback serves d-2 with the front d-2 shipped: the first one, replaced again.
    assert_eq!(front_id(&svc), first_front);
    let status = svc.status_healthy();
    assert!(
        status.contains(&first_front) && status.contains("strategy proxy"),
        "{status}"
    );

    // Least privilege: the front's exposure score.
    let out = run_ok(svc.sandbox.command("systemd-analyze").args([
        "security",
        "--no-pager",
        &format!("shop-front@{first_front}.service"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in {text}"));
    assert!(score <= 2.0, "the front's exposure is {score}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_never_gets_healthy_crashes_listens_publicly_or_fails_validation_costs_nothing() {
    let mut svc = TestService::new();
    let v1 = svc.proxied_revision("v1", &[], "a", "");
    svc.deploy_ok("d-1", &v1);
    let load = Load::start(svc.port, Duration::from_secs(55), 2).await;

    let unhealthy = svc.proxied_revision("v2", &[("SAMPLE_UNHEALTHY", "1")], "a", "");
    edit_deploy_yml(&unhealthy, "start: 10s", "start: 3s");
    let t = Instant::now();
    let failure = svc.deploy_fails(
        "d-2",
        &unhealthy,
        "application-start",
        1,
        "answer GET /healthz with 200",
    );
    assert!(failure.output.contains("d-1 keeps serving"), "{}", failure.output);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    let crashing = svc.proxied_revision("v3", &[("SAMPLE_FAIL_START", "1")], "a", "");
    svc.deploy_fails("d-3", &crashing, "application-start", 1, "d-1 keeps serving");

    let public = svc.proxied_revision("v4", &[], "a", "");
    edit_deploy_yml(&public, "127.0.0.1:${PORT}", "0.0.0.0:${PORT}");
    svc.deploy_fails("d-4", &public, "application-start", 2, "not loopback only");
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);

    // Healthy at the switch, unhealthy a moment later: ValidateService routes back to d-1.
    // Placed by count, not by a timer: ApplicationStart's two probe bursts (directly, then
    // through the front) take at most 8 health checks, each ending at its first 200.
    let later = svc.proxied_revision("v5", &[("SAMPLE_UNHEALTHY_AFTER_CHECKS", "8")], "a", "");
    svc.deploy_fails(
        "d-5",
        &later,
        "validate-service",
        1,
        "Rolled back: d-1 serves again",
    );
    assert_eq!(svc.live_instances(), vec!["shop@d-1.service"]);

    // A hook killed between the route file and the front: the next step routes back first.
    let v6 = svc.proxied_revision("v6", &[], "a", "");
    assert!(is_status(&http_get(svc.port, "/").unwrap(), 200));
    tokio::task::block_in_place(|| svc.hook("before-install", "d-6", &v6));
    svc.hook_killed_at("route-written", "application-start", "d-6", &v6);
    svc.deploy_ok("d-6", &v6);
    let report = load.finish().await;
    assert_no_failures(
        &report,
        "four releases that never took traffic for long, and an interrupted switch",
    );
    assert_eq!(svc.answering_release(), "v6");

    // A crash of the serving release: 502 from the front, quickly, until systemd restarts it.
    let pid = svc.unit_property("shop@d-6.service", "MainPID");
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 1),
        "MainPID {pid}:\n{}",
        svc.status()
    );
    run_ok(svc.sandbox.command("kill").args(["-KILL", &pid]));
    // Once systemd has seen the crash (MainPID gone; it restarts the release after
    // RestartSec=1s), the front answers 502 at once.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        svc.unit_property("shop@d-6.service", "MainPID") == "0"
    });
    assert!(gone, "systemd did not see d-6's crash:\n{}", svc.status());
    let t = Instant::now();
    let reply = http_get(svc.port, "/").unwrap();
    assert!(is_status(&reply, 502), "{reply}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let back = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        http_get(svc.port, "/").is_ok_and(|r| is_status(&r, 200))
    });
    assert!(back, "d-6 did not come back after a crash");

    // After a reboot the front and the release come back on their own.
    svc.sandbox.reboot();
    let mut answered = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        answered = http_get(svc.port, "/").unwrap_or_default();
        if is_status(&answered, 200) {
            break;
        }
    }
    assert!(answered.contains("v6"), "after a reboot: {answered}");
}

/// A real third-party server with its defaults: gunicorn (Debian's package, sync worker),
/// bound to `127.0.0.1:$PORT`, with no drain of its own beyond what gunicorn does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gunicorn_with_its_defaults_switches_behind_the_front_without_a_failed_request() {
    if !Path::new("/usr/bin/gunicorn").exists() {
        panic!("gunicorn is not installed: run scripts/setup (it installs Debian's gunicorn)");
    }
    let mut svc = TestService::new();
    let revision = |svc: &TestService, label: &str| {
        let dir = svc.proxied_revision(label, &[], "a", "");
        std::fs::write(
            dir.join("app.py"),
            format!(
                "def app(environ, start_response):\n    body = b'{label}\\n'\n    \
                 start_response('200 OK', [('Content-Type', 'text/plain'), ('X-Release', '{label}'), \
                 ('Content-Length', str(len(body)))])\n    return [body]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("bin/sample-app"),
            "#!/bin/sh\nexec /usr/bin/gunicorn \"$@\"\n",
        )
        .unwrap();
        edit_deploy_yml(
            &dir,
            "[\"--bind\", \"127.0.0.1:${PORT}\"]",
            "[\"--bind\", \"127.0.0.1:${PORT}\", \"app:app\"]",
        );
        dir
    };
    let v1 = revision(&svc, "g1");
    if let Err(f) = tokio::task::block_in_place(|| svc.deploy("d-1", &v1)) {
        panic!("{}\ngunicorn's log:\n{}", f.output, svc.app_log("d-1"));
    }
    assert_eq!(svc.answering_release(), "g1");
    let load = Load::start(svc.port, Duration::from_secs(20), 0).await;
    let v2 = revision(&svc, "g2");
    svc.deploy_ok("d-2", &v2);
    let v1 = revision(&svc, "g1");
    svc.deploy_ok("d-3", &v1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    assert_no_failures(&report, "gunicorn g1 -> g2 -> g1");
    assert_eq!(svc.answering_release(), "g1");
    eprintln!("{}", report.summary());
}

/// Node's own `http` server with its defaults (it dies at once on SIGTERM, and closes idle
/// keep-alive connections after 5 s, under the front's pooled connections), bound to
/// `127.0.0.1:$PORT`. A JIT runtime: the revision's template drops `MemoryDenyWriteExecute=`,
/// as `lint-bundle` tells a user to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_http_with_its_defaults_switches_behind_the_front_without_a_failed_request() {
    let node = ["/usr/bin/node", "/usr/bin/nodejs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("node is not installed: run scripts/setup");
    let mut svc = TestService::new();
    let revision = |svc: &TestService, label: &str| {
        let dir = svc.proxied_revision(label, &[], "a", "");
        std::fs::write(
            dir.join("server.js"),
            format!(
                "const http = require('http');\n\
                 http.createServer((req, res) => {{\n  res.setHeader('X-Release', '{label}');\n  \
                 res.end('{label}\\n');\n}}).listen(Number(process.env.PORT), '127.0.0.1');\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("bin/sample-app"),
            format!("#!/bin/sh\nexec {node} server.js\n"),
        )
        .unwrap();
        let template = dir.join("units/proxied@.service");
        let text = std::fs::read_to_string(&template).unwrap();
        assert!(text.contains("MemoryDenyWriteExecute=yes\n"));
        std::fs::write(&template, text.replace("MemoryDenyWriteExecute=yes\n", "")).unwrap();
        dir
    };
    let v1 = revision(&svc, "n1");
    if let Err(f) = tokio::task::block_in_place(|| svc.deploy("d-1", &v1)) {
        panic!("{}\nnode's log:\n{}", f.output, svc.app_log("d-1"));
    }
    assert_eq!(svc.answering_release(), "n1");
    let load = Load::start(svc.port, Duration::from_secs(25), 0).await;
    let v2 = revision(&svc, "n2");
    svc.deploy_ok("d-2", &v2);
    // Longer than Node's keep-alive timeout: the front's idle pooled connections are closed
    // by Node under it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v1 = revision(&svc, "n1");
    svc.deploy_ok("d-3", &v1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    assert_no_failures(&report, "node n1 -> n2 -> n1");
    assert_eq!(svc.answering_release(), "n1");
    eprintln!("{}", report.summary());
}
