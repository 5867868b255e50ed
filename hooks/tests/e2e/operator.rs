//! An operator's side of a real app: probes with the Host header the app demands, durations
//! written as systemd writes them, and the `handoff` CLI without `--service`.

use std::process::Command;
use std::time::Duration;

use crate::service::{TestService, edit_deploy_yml};
use crate::support::*;

/// An app that answers 400 unless the Host header is `shop.example` (Django's ALLOWED_HOSTS).
const PICKY: &str = "const http = require('http');\n\
    http.createServer((req, res) => {\n\
      if (req.headers.host !== 'shop.example') { res.writeHead(400); res.end('bad host\\n'); return; }\n\
      res.writeHead(200, { 'X-Release': process.env.RELEASE }); res.end('ok\\n');\n\
    }).listen(Number(process.env.PORT), '127.0.0.1');\n";

#[test]
fn an_app_that_checks_the_host_deploys_with_health_host_and_systemd_durations() {
    let mut svc = TestService::new();
    let revision = |svc: &TestService, label: &str, host: bool| {
        let dir = svc.proxied_revision(label, &[], "a", "");
        std::fs::write(dir.join("server.js"), PICKY).unwrap();
        edit_deploy_yml(
            &dir,
            "  command: bin/sample-app\n  args: [\"--bind\", \"127.0.0.1:${PORT}\"]\n",
            "  command: /usr/bin/node\n  args: [server.js]\n  needs: [jit]\n",
        );
        if host {
            edit_deploy_yml(
                &dir,
                "  stable_for: 1s\n",
                "  stable_for: 1s\n  host: shop.example\n",
            );
            edit_deploy_yml(
                &dir,
                "deadlines:\n  start: 10s\n  validate: 10s\ndrain:\n  budget: 10s\n",
                "deadlines:\n  start: 2min\n  validate: 1min 30s\ndrain:\n  budget: 1h\n",
            );
        } else {
            // It never answers 200: the probes give up at deadlines.start.
            edit_deploy_yml(&dir, "  start: 10s\n", "  start: 3s\n");
        }
        dir
    };

    // Without health.host the probes' Host is the address: 400, and the message names the fix.
    let v1 = revision(&svc, "v1", false);
    svc.deploy_fails(
        "d-1",
        &v1,
        "application-start",
        1,
        "set health.host to a name the app accepts",
    );

    let v1 = revision(&svc, "v1", true);
    svc.deploy_ok("d-2", &v1);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", svc.port)).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET / HTTP/1.0\r\nHost: shop.example\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    assert_eq!(svc.unit_property("shop@d-2.service", "TimeoutStopUSec"), "1h");
    assert_eq!(svc.unit_property("shop@d-2.service", "TimeoutStartUSec"), "2min");

    // The CLI finds the one service on this host by itself.
    let mut status = svc.sandbox.command(svc.sandbox.test_binary("handoff"));
    status.arg("status").current_dir("/");
    let out = run(&mut status);
    let text = explain(&status, &out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("service shop"), "{text}");
    let mut completions = Command::new(workspace_bin("handoff"));
    completions.args(["completions", "bash"]);
    let out = run_ok(&mut completions);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uninstall"),
        "{}",
        explain(&completions, &out)
    );
}

/// `handoff status` as an operator's check: without `--service` on a host with one service, exit
/// 0 while the recorded release serves healthy; `--json` for tools; a stopped instance makes it
/// exit 1 and name the problem, with the report still printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_0_only_while_the_recorded_release_serves_healthy() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);

    // The CLI finds the one service on this host by itself; it serves healthy.
    let mut status = svc.sandbox.command(svc.sandbox.test_binary("handoff"));
    status.arg("status").current_dir("/");
    let out = tokio::task::block_in_place(|| run(&mut status));
    let text = explain(&status, &out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("service shop") && text.contains("healthy   d-1 serves"),
        "{text}"
    );

    let (json, code) = tokio::task::block_in_place(|| svc.status_json());
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["service"], "shop", "{json:#}");
    assert_eq!(json["serving"], "d-1", "{json:#}");
    assert_eq!(json["healthy"], true, "{json:#}");
    assert_eq!(json["problems"].as_array().map(Vec::len), Some(0), "{json:#}");
    assert_eq!(json["socket"]["active_state"], "active", "{json:#}");
    let instance = &json["instances"][0];
    assert_eq!(
        (
            instance["unit"].as_str(),
            instance["release"].as_str(),
            instance["active_state"].as_str(),
            instance["enabled"].as_str()
        ),
        (
            Some("shop@d-1.service"),
            Some("d-1"),
            Some("active"),
            Some("enabled")
        ),
        "{json:#}"
    );
    assert_eq!(json["releases"][0]["mark"], "serving", "{json:#}");
    assert_eq!(json["probe"]["status"], 200, "{json:#}");
    assert_eq!(json["last_deployment"]["deployment"], "d-1", "{json:#}");
    assert_eq!(json["last_deployment"]["outcome"], "succeeded", "{json:#}");

    // The serving instance stopped by hand: the socket still accepts, nothing answers.
    svc.sandbox
        .systemd()
        .await
        .stop("shop@d-1.service", Duration::from_secs(30))
        .await
        .expect("stop shop@d-1.service");
    let out = tokio::task::block_in_place(|| svc.handoff(&["status"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("NOT HEALTHY")
            && text.contains("the serving release's instance is not active: shop@d-1.service is "),
        "{text}"
    );
    let (json, code) = tokio::task::block_in_place(|| svc.status_json());
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["healthy"], false, "{json:#}");
    assert!(
        json["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("shop@d-1.service")))),
        "{json:#}"
    );
}
