//! The sample app under a real systemd with a plain socket unit: restarts lose nothing.

use std::time::Duration;

use crate::load::Load;
use crate::support::*;

/// Socket activation + `RestartUnit`: systemd stops the old process (it drains) and starts the
/// new one on the same socket; connections wait in the queue meanwhile, none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_behind_a_socket_unit_fail_no_request() {
    let sandbox = Sandbox::start();
    let port = free_port();
    let socket = sandbox.scratch("plain.socket");
    std::fs::write(&socket, format!("[Socket]\nListenStream=127.0.0.1:{port}\n")).unwrap();
    let log = sandbox.scratch("plain.log");
    let service = sandbox.scratch("plain.service");
    std::fs::write(
        &service,
        format!(
            "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=notify\nExecStart={}\nEnvironment=RELEASE=plain\n\
             StandardOutput=append:{}\nStandardError=inherit\nTimeoutStopSec=20\n",
            sandbox.test_binary("sample-app"),
            log.display()
        ),
    )
    .unwrap();
    sandbox.install_units(&[&socket, &service]);
    let systemd = sandbox.systemd().await;
    systemd
        .start("plain.socket", Duration::from_secs(10))
        .await
        .unwrap();
    systemd
        .start("plain.service", Duration::from_secs(10))
        .await
        .unwrap();

    let load = Load::start(port, Duration::from_secs(7), 2).await;
    let mut pids = vec![systemd.status("plain.service").await.unwrap().main_pid];
    for _ in 0..3 {
        systemd
            .stop("plain.service", Duration::from_secs(30))
            .await
            .unwrap();
        systemd
            .start("plain.service", Duration::from_secs(30))
            .await
            .unwrap();
        pids.push(systemd.status("plain.service").await.unwrap().main_pid);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let report = load.finish().await;
    assert_eq!(
        report.failures(),
        0,
        "requests failed across restarts:\n{}",
        report.summary()
    );
    assert!(
        report.ws.closes_1012 >= 6,
        "each restart closes the WebSockets with 1012:\n{}",
        report.summary()
    );
    pids.dedup();
    assert_eq!(pids.len(), 4, "every restart started a new process: {pids:?}");
    assert!(pids.iter().all(|p| *p != 0), "{pids:?}");
}
