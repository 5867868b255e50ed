//! The shared socket as every instance sees it, across a switch: what systemd does to it when
//! it starts the next instance must not change how the serving instance accepts.

use std::time::Duration;

use crate::service::TestService;

/// The file status flags of a process's fd (octal, as /proc/PID/fdinfo prints them).
fn fd_flags(svc: &TestService, pid: &str, fd: u32) -> u32 {
    let info = std::fs::read_to_string(svc.sandbox.host_path(&format!("/proc/{pid}/fdinfo/{fd}"))).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or_else(|| panic!("no flags in {info}"));
    u32::from_str_radix(flags.trim(), 8).unwrap()
}

const O_NONBLOCK: u32 = 0o4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_instance_keeps_a_non_blocking_socket_while_the_next_one_starts() {
    let mut svc = TestService::new();
    let v1 = svc.revision("v1", &[], "");
    svc.deploy_ok("d-1", &v1);
    let pid = svc.unit_property("shop@d-1.service", "MainPID");
    assert_ne!(
        fd_flags(&svc, &pid, 3) & O_NONBLOCK,
        0,
        "the app's own socket is blocking"
    );

    // The next release never touches the socket (and never sends READY=1): whatever the
    // flag is while it starts is what systemd made of it.
    let v2 = svc.revision("v2", &[], "");
    crate::service::edit_deploy_yml(&v2, "start: 10s", "start: 3s");
    std::fs::write(v2.join("bin/sample-app"), "#!/bin/sh\nexec sleep 30\n").unwrap();
    let mut start = svc.hook_command("application-start", "d-2", &v2);
    let hook = start
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if svc.unit_property("shop@d-2.service", "SubState") == "start" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen = Some(fd_flags(&svc, &pid, 3));
            break;
        }
    }
    let out = tokio::task::block_in_place(|| hook.wait_with_output()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flags = seen.expect("d-2 was never seen starting");
    assert_ne!(
        flags & O_NONBLOCK,
        0,
        "starting d-2 made d-1's listening socket blocking (flags {flags:o}): NonBlocking=yes is missing"
    );
    assert_eq!(svc.answering_release(), "v1");

    // And the file limit fits a server, not a shell: far above the default soft 1024, and
    // soft = hard (65536, or the host's own ceiling where that is lower).
    let limits = std::fs::read_to_string(svc.sandbox.host_path(&format!("/proc/{pid}/limits"))).unwrap();
    let open_files: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        open_files[0] > 4096 && open_files[0] == open_files[1],
        "open files soft/hard: {open_files:?}"
    );
}
