//! The test bed itself: a real systemd boots, serves a socket unit started over D-Bus, and
//! leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_unit_started_over_dbus_answers_and_teardown_leaves_nothing() {
    // A file in the host's /tmp: booting systemd with the distribution's units once emptied it.
    let sentinel = tempfile_in_tmp();

    let sandbox = Sandbox::start();
    let ns = std::fs::read_link(format!("/proc/{}/ns/pid", sandbox.pid))
        .unwrap()
        .to_string_lossy()
        .to_string();
    let port = free_port();

    // A socket-activated service: one instance per connection, talking over the socket.
    let socket = sandbox.scratch("smoke.socket");
    std::fs::write(
        &socket,
        format!("[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n"),
    )
    .unwrap();
    let service = sandbox.scratch("smoke@.service");
    std::fs::write(
        &service,
        "[Service]\nStandardInput=socket\nStandardOutput=socket\n\
         ExecStart=/bin/sh -c 'while read -r l && [ $${#l} -gt 1 ]; do :; done; printf \"HTTP/1.0 200 OK\\r\\nContent-Length: 19\\r\\n\\r\\nhello from systemd\\n\"'\n",
    )
    .unwrap();
    sandbox.install_units(&[&socket, &service]);

    let systemd = sandbox.systemd().await;
    assert_eq!(
        systemd.status("smoke.socket").await.unwrap().active_state,
        "inactive"
    );
    systemd
        .start("smoke.socket", Duration::from_secs(10))
        .await
        .expect("start smoke.socket over D-Bus");
    let st = systemd.status("smoke.socket").await.unwrap();
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "listening"),
        "{st:?}"
    );

    let reply = tokio::task::spawn_blocking(move || http_get(port, "/"))
        .await
        .unwrap()
        .expect("request to the socket");
    assert!(reply.starts_with("HTTP/1.0 200 OK"), "unexpected reply: {reply}");
    assert!(
        reply.ends_with("hello from systemd\n"),
        "unexpected reply: {reply}"
    );

    // A unit with PrivateTmp= running at teardown: systemd made its folder in the host's
    // /var/tmp, named after the sandbox's own boot id, and the sandbox is killed, not shut
    // down, so the stop must remove it.
    run_ok(sandbox.command("systemd-run").args([
        "--unit",
        "private-tmp",
        "-p",
        "PrivateTmp=yes",
        "/bin/sleep",
        "600",
    ]));
    let boot_id = std::fs::read_to_string(sandbox.dir.join("boot-ids"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(boot_id.len(), 32, "{boot_id}");
    // The sandbox's /var/tmp: the host's, or in another distribution's root the overlay's,
    // which goes with the sandbox's folder.
    let private_tmp_in = |var_tmp: &Path| -> Vec<_> {
        std::fs::read_dir(var_tmp)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(&format!("systemd-private-{boot_id}-")))
            .collect()
    };
    let inside = private_tmp_in(&sandbox.host_path("/var/tmp"));
    assert!(
        inside.iter().any(|n| n.contains("-private-tmp.service-")),
        "no PrivateTmp folder of the sandbox's boot id: {inside:?}"
    );

    let dir = sandbox.dir.clone();
    drop(systemd);
    drop(sandbox);
    assert_eq!(
        private_tmp_in(Path::new("/var/tmp")),
        Vec::<String>::new(),
        "PrivateTmp folders left in the host's /var/tmp"
    );

    assert!(
        !dir.exists(),
        "the sandbox folder {} is left behind",
        dir.display()
    );
    let cgroup = dir.file_name().unwrap().to_string_lossy().to_string();
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .flat_map(|h| [h.join(&cgroup), h.parent().unwrap().join(&cgroup)])
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    assert!(
        processes_in_namespace(&ns).is_empty(),
        "processes of the sandbox remain"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is still open"
    );
    assert!(Path::new(&sentinel).exists(), "the host's /tmp lost {sentinel}");
    std::fs::remove_file(&sentinel).unwrap();
}

#[test]
fn several_sandboxes_run_at_once() {
    let a = Sandbox::start();
    let b = Sandbox::start();
    assert_ne!(a.dir, b.dir);
    assert_ne!(a.pid, b.pid);
    // Each has its own /opt: a file in one is not in the other.
    std::fs::write(a.host_path("/opt/only-in-a"), "a").unwrap();
    assert!(a.host_path("/opt/only-in-a").exists());
    assert!(!b.host_path("/opt/only-in-a").exists());
    assert!(
        !Path::new("/opt/only-in-a").exists(),
        "the host's /opt was written"
    );
    // Commands run inside see the sandbox's own manager.
    let out = run_ok(b.command("systemctl").args(["is-active", "dbus.service"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
    // Each manages a cgroup tree of its own: the same unit in two sandboxes never collides.
    let cgroup = |s: &Sandbox| {
        let out = run_ok(
            s.command("systemctl")
                .args(["show", "-P", "ControlGroup", "dbus.service"]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (ca, cb) = (cgroup(&a), cgroup(&b));
    assert!(
        ca.ends_with("/system.slice/dbus.service") && cb.ends_with("/system.slice/dbus.service"),
        "{ca} {cb}"
    );
    assert_ne!(ca, cb, "two sandboxes share a cgroup");
}

fn tempfile_in_tmp() -> String {
    let path = format!("/tmp/handoff-sentinel-{}-{}", std::process::id(), free_port());
    std::fs::write(&path, "must survive").unwrap();
    path
}
