//! Behind a load balancer: a pooled keep-alive connection to an instance that a switch
//! retires is kept for as long as the balancer keeps it (deploy.yml `drain.idle_hold`, the
//! ALB's 60 s idle timeout by default), without the hook waiting for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::service::TestService;

/// One request on a kept-alive connection; returns the status line and the headers.
fn request(conn: &mut BufReader<TcpStream>) -> (String, String) {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let mut headers = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        headers.push_str(&line);
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).unwrap();
    (status, headers.to_ascii_lowercase())
}

/// The balancer's idle timeout, and so `drain.idle_hold`: 20 s here (the ALB's is 60 s, the
/// default hold), still past the drain budget (10 s) and the app's hard deadline (8 s).
const HOLD: Duration = Duration::from_secs(20);

/// A balancer's pooled connection to v1, idle for 15 s across the switch to v2 (past the
/// drain budget, 10 s, and the app's hard deadline, 8 s; within the balancer's 20 s):
/// ApplicationStart does not wait for it, v1 keeps it (its status says so), serves the
/// balancer's next request on it with `Connection: close`, and only then exits.
#[test]
fn an_idle_pooled_connection_outlives_the_switch_without_holding_the_hook() {
    let mut svc = TestService::new();
    let hold = format!("  idle_hold: {}s\n", HOLD.as_secs());
    let v1 = svc.revision("v1", &[], &hold);
    svc.deploy_ok("d-1", &v1);

    let mut pooled = BufReader::new(TcpStream::connect(("127.0.0.1", svc.port)).unwrap());
    pooled
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, headers) = request(&mut pooled);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(headers.contains("x-release: v1"), "{headers}");
    let idle_since = Instant::now();

    let v2 = svc.revision("v2", &[], &hold);
    let hooks_started = Instant::now();
    let log = svc.deploy_ok("d-2", &v2);
    let hooks_took = hooks_started.elapsed();
    // ValidateService takes the holding v1 for what it is, a retired instance, not for one
    // an interrupted retire left running (which it would stop, waiting for the hold).
    assert!(
        log.contains("systemd ends it after the hold") && !log.contains("retiring it now"),
        "{log}"
    );
    assert_eq!(svc.answering_release(), "v2");
    // The hooks did not wait for the hold (20 s): the whole lifecycle, ValidateService's
    // stable_for included, takes a few seconds.
    assert!(
        hooks_took < Duration::from_secs(12),
        "the hooks took {hooks_took:?}: they waited for the idle hold"
    );
    // v1 still runs, says why, and is no longer enabled.
    assert_eq!(
        svc.unit_property("shop@d-1.service", "ActiveState"),
        "deactivating",
        "v1 did not hold its idle connection; its log:\n{}",
        svc.app_log("d-1")
    );
    let status_text = svc.unit_property("shop@d-1.service", "StatusText");
    assert!(
        status_text.starts_with("idle hold: 1 idle keep-alive connection"),
        "{status_text}"
    );
    assert_ne!(svc.is_enabled("shop@d-1.service"), "enabled");

    // The balancer sends on its pooled connection 15 s after the hooks began (so at most
    // 15 s after v1's SIGTERM, and still within its own 20 s idle timeout).
    let at = hooks_started + HOLD - Duration::from_secs(5);
    assert!(at - idle_since < HOLD, "the balancer would have closed it");
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    let (status, headers) = request(&mut pooled);
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "the held connection was not served ({status:?}); v1's log:\n{}",
        svc.app_log("d-1")
    );
    assert!(headers.contains("x-release: v1"), "{headers}");
    assert!(
        headers.contains("connection: close"),
        "a request during the hold is answered with Connection: close: {headers}"
    );
    // Then v1 exits (cleanly: its drain ended with nothing dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.unit_property("shop@d-1.service", "ActiveState") != "inactive" {
        assert!(
            Instant::now() < deadline,
            "v1 did not exit after its last connection closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(svc.unit_property("shop@d-1.service", "Result"), "success");
    assert_eq!(svc.live_instances(), ["shop@d-2.service"]);
}

/// An app that answers with what it was told about the client.
const ECHO: &str = "const http = require('http');\n\
    http.createServer((req, res) => {\n\
      res.writeHead(200, { 'X-Release': process.env.RELEASE });\n\
      res.end(`proto=${req.headers['x-forwarded-proto']} for=${req.headers['x-forwarded-for']} forwarded=${req.headers['forwarded']}\\n`);\n\
    }).listen(Number(process.env.PORT), '127.0.0.1');\n";

/// `curl` from a given loopback address; returns the body.
fn curl_from(source: &str, url: &str, headers: &[&str]) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--interface", source]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = crate::support::run(&mut cmd);
    assert!(out.status.success(), "{}", crate::support::explain(&cmd, &out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// HAProxy as an ALB that terminated HTTPS: it sets `X-Forwarded-Proto: https` and appends
/// the client to `X-Forwarded-For`, connecting from 127.0.0.1, which `front.trusted_proxies`
/// names. Through it the app sees `https` and the client's address; a client that reaches the
/// front directly, from 127.0.0.2, and forges both headers is not believed.
#[test]
fn behind_an_alb_the_app_sees_https_and_the_client_but_a_forger_is_not_believed() {
    let mut svc = TestService::new();
    let dir = svc.proxied_revision("v1", &[], "a", "  trusted_proxies: [127.0.0.1/32]\n");
    std::fs::write(dir.join("server.js"), ECHO).unwrap();
    crate::service::edit_deploy_yml(
        &dir,
        "  command: bin/sample-app\n  args: [\"--bind\", \"127.0.0.1:${PORT}\"]\n",
        "  command: /usr/bin/node\n  args: [server.js]\n  needs: [jit]\n",
    );
    crate::service::edit_deploy_yml(
        &dir,
        "  instance_header: X-Instance\n",
        "  instance_header: none\n",
    );
    svc.deploy_ok("d-1", &dir);

    let lb = crate::support::free_port();
    let cfg = svc.sandbox.scratch("alb.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend alb\n  bind 127.0.0.1:{lb}\n  http-request set-header X-Forwarded-Proto https\n  option forwardfor\n  default_backend targets\n\
             backend targets\n  server t 127.0.0.1:{}\n",
            svc.port
        ),
    )
    .unwrap();
    let mut haproxy = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .spawn()
        .expect("haproxy (scripts/setup installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", lb)).is_err() {
        assert!(Instant::now() < deadline, "haproxy does not listen on {lb}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let through_alb = curl_from("127.0.0.3", &format!("http://127.0.0.1:{lb}/"), &[]);
    let forged = curl_from(
        "127.0.0.2",
        &format!("http://127.0.0.1:{}/", svc.port),
        &[
            "X-Forwarded-Proto: https",
            "X-Forwarded-For: 203.0.113.7",
            "Forwarded: for=203.0.113.7;proto=https",
        ],
    );
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    assert_eq!(
        through_alb, "proto=https for=127.0.0.3, 127.0.0.1 forwarded=undefined",
        "through the trusted balancer"
    );
    assert_eq!(
        forged, "proto=http for=127.0.0.2 forwarded=undefined",
        "from a peer not in front.trusted_proxies"
    );
}
