//! Adopting handoff with an app as a team ships it (README "Adopt it"): a Django app in a
//! virtualenv from PyPI, an Express app with `node_modules` from npm, a plain Java jar. Each
//! runs today as a plain unit that binds the port itself. The test runs the real `handoff
//! init` (into the team's own appspec.yml) and `handoff bundle` (beside a `.env` and a
//! `.git`), then, under `ab -r`, `wrk` and the probe, the first deployment takes the port over
//! from that unit (`takeover:`) and a second switches v1 → v2, in `strategy: proxy`.
//! `handoff uninstall` then gives the port back to the old unit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::load::{Load, assert_no_failures};
use crate::service::TestService;
use crate::support::*;

/// One kind of app: how it is built, how it runs today, how handoff runs it.
struct App {
    name: &'static str,
    /// Writes the app's sources into the folder and builds what a team would commit or ship.
    build: fn(&Path),
    /// `handoff init --command … --arg …` for the release (run in the release folder).
    command: &'static str,
    args: &'static [&'static str],
    needs: &'static str,
    /// The legacy unit's ExecStart, relative paths resolved in the app folder ({dir}, {port}).
    legacy: &'static str,
    /// Extra deploy.yml lines under `app:` (besides RELEASE).
    app_extra: &'static str,
    /// A path the zip must hold: the app's dependencies, shipped.
    shipped: &'static str,
}

const DJANGO: App = App {
    name: "django",
    build: build_django,
    command: ".venv/bin/python",
    args: &[
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:${PORT}",
        "--workers",
        "2",
        "shop.wsgi",
    ],
    needs: "setuid",
    legacy: "{dir}/.venv/bin/python -m gunicorn --bind 127.0.0.1:{port} --workers 2 shop.wsgi",
    app_extra: "  environment_files: [{host_env}]\n  state_directory: shop\n  before_switch:\n    \
                command: .venv/bin/python\n    args: [manage.py, migrate, --noinput]\n    timeout: 60s\n",
    shipped: ".venv/bin/python3",
};

const EXPRESS: App = App {
    name: "express",
    build: build_express,
    command: "/usr/bin/node",
    args: &["server.js"],
    needs: "jit",
    legacy: "/usr/bin/node {dir}/server.js",
    app_extra: "",
    shipped: "node_modules/express/package.json",
};

const JAR: App = App {
    name: "jar",
    build: build_jar,
    command: "/usr/bin/java",
    args: &["-XX:-UsePerfData", "-jar", "app.jar"],
    needs: "jit",
    // An IPv4 socket, not an IPv6 one with a mapped address: the socket unit's is IPv4.
    legacy: "/usr/bin/java -XX:-UsePerfData -Djava.net.preferIPv4Stack=true -jar {dir}/app.jar",
    app_extra: "",
    shipped: "app.jar",
};

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn build_django(dir: &Path) {
    write(
        dir,
        "manage.py",
        "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')\n\
        from django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n",
    );
    write(dir, "shop/__init__.py", "");
    write(
        dir,
        "shop/settings.py",
        "import os\nSECRET_KEY = os.environ.get('SECRET_KEY', 'legacy-only')\nDEBUG = False\nALLOWED_HOSTS = ['*']\n\
         ROOT_URLCONF = 'shop.urls'\nINSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth']\n\
         DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',\n    \
         'NAME': os.path.join(os.environ.get('STATE_DIRECTORY', os.path.dirname(__file__)), 'db.sqlite3')}}\n\
         USE_TZ = True\n",
    );
    write(
        dir,
        "shop/urls.py",
        "import os\nfrom django.db import connection\nfrom django.http import HttpResponse\nfrom django.urls import path\n\
         RELEASE = os.environ.get('RELEASE', 'dev')\n\n\
         def home(request):\n    r = HttpResponse(RELEASE + '\\n', content_type='text/plain')\n    r['X-Release'] = RELEASE\n    return r\n\n\
         def healthz(request):\n    with connection.cursor() as c:\n        c.execute('SELECT COUNT(*) FROM django_migrations')\n    \
         r = HttpResponse('ok\\n', content_type='text/plain')\n    r['X-Release'] = RELEASE\n    return r\n\n\
         urlpatterns = [path('', home), path('healthz', healthz)]\n",
    );
    write(
        dir,
        "shop/wsgi.py",
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')\n\
        from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n",
    );
    // The virtualenv a team builds: Debian's Python, Django and gunicorn from PyPI.
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(dir),
    );
    run_ok(
        Command::new(".venv/bin/pip")
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "django>=4.2,<6",
                "gunicorn>=21",
            ])
            .current_dir(dir),
    );
    // The legacy unit's database, migrated once by hand, the way it runs today.
    run_ok(
        Command::new(".venv/bin/python")
            .args(["manage.py", "migrate", "--noinput"])
            .current_dir(dir),
    );
}

fn build_express(dir: &Path) {
    write(
        dir,
        "package.json",
        "{\"name\": \"shop\", \"version\": \"1.0.0\", \"private\": true}\n",
    );
    write(
        dir,
        "server.js",
        "const express = require('express');\nconst RELEASE = process.env.RELEASE || 'dev';\nconst app = express();\n\
         // Graceful stop, as a server behind a load balancer needs: once SIGTERM came, every answer\n\
         // closes its connection, so a keep-alive client moves on between two requests.\n\
         let closing = false;\n\
         app.use((req, res, next) => { if (closing) res.set('Connection', 'close'); next(); });\n\
         app.get('/healthz', (req, res) => res.set('X-Release', RELEASE).send('ok\\n'));\n\
         app.get('/', (req, res) => res.set('X-Release', RELEASE).send(RELEASE + '\\n'));\n\
         const server = app.listen(Number(process.env.PORT), '127.0.0.1');\n\
         // Longer than any client's idle timeout: the server never closes an idle connection first.\n\
         server.keepAliveTimeout = 65000;\n\
         // Not server.close() at once: since Node 19 it also closes every idle keep-alive connection,\n\
         // and a client whose next request is on its way meanwhile gets no answer.\n\
         process.on('SIGTERM', () => {\n  closing = true;\n  \
         setTimeout(() => server.close(() => process.exit(0)), 1000);\n  \
         setTimeout(() => process.exit(0), 10000).unref();\n});\n",
    );
    run_ok(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "express@4"])
            .current_dir(dir),
    );
}

fn build_jar(dir: &Path) {
    write(
        dir,
        "src/App.java",
        "import com.sun.net.httpserver.HttpExchange;\nimport com.sun.net.httpserver.HttpServer;\n\
         import java.net.InetSocketAddress;\nimport java.util.concurrent.Executors;\n\n\
         public class App {\n  static final String RELEASE = System.getenv().getOrDefault(\"RELEASE\", \"dev\");\n  \
         static volatile boolean closing = false;\n\n  \
         static void reply(HttpExchange ex, String body) throws java.io.IOException {\n    \
         byte[] b = body.getBytes();\n    ex.getResponseHeaders().add(\"X-Release\", RELEASE);\n    \
         if (closing) ex.getResponseHeaders().set(\"Connection\", \"close\");\n    \
         ex.sendResponseHeaders(200, b.length);\n    try (var out = ex.getResponseBody()) { out.write(b); }\n  }\n\n  \
         public static void main(String[] args) throws Exception {\n    int port = Integer.parseInt(System.getenv(\"PORT\"));\n    \
         HttpServer server = HttpServer.create(new InetSocketAddress(\"127.0.0.1\", port), 1024);\n    \
         server.createContext(\"/\", ex -> reply(ex, RELEASE + \"\\n\"));\n    \
         server.createContext(\"/healthz\", ex -> reply(ex, \"ok\\n\"));\n    \
         server.setExecutor(Executors.newFixedThreadPool(16));\n    server.start();\n    \
         // Graceful stop: answers close their connections for a second, then the server stops.\n    \
         Runtime.getRuntime().addShutdownHook(new Thread(() -> {\n      closing = true;\n      \
         try { Thread.sleep(1000); } catch (InterruptedException e) { }\n      server.stop(1);\n    }));\n  }\n}\n",
    );
    run_ok(
        Command::new("javac")
            .args(["-d", "classes", "src/App.java"])
            .current_dir(dir),
    );
    run_ok(
        Command::new("jar")
            .args([
                "--create",
                "--file",
                "app.jar",
                "--main-class",
                "App",
                "-C",
                "classes",
                ".",
            ])
            .current_dir(dir),
    );
    std::fs::remove_dir_all(dir.join("classes")).unwrap();
}

/// The team's own appspec.yml, before `handoff init`: files, permissions and an AfterInstall.
const TEAM_APPSPEC: &str = "version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: /srv/shop\n\
    permissions:\n  - object: /srv/shop\n    owner: root\nhooks:\n  # our own step, kept by handoff init\n  \
    AfterInstall:\n    - location: scripts/after_install.sh\n      timeout: 60\n";

/// The app folder, built once per test, with `handoff init` run in it.
fn project(svc: &TestService, app: &App) -> PathBuf {
    let dir = svc.sandbox.scratch(&format!("src/{}", app.name));
    std::fs::create_dir_all(&dir).unwrap();
    (app.build)(&dir);
    write(&dir, "appspec.yml", TEAM_APPSPEC);
    write(&dir, "scripts/after_install.sh", "#!/bin/sh\necho installed\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("scripts/after_install.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // What a checkout has beside the app: secrets and history, never to be shipped.
    write(&dir, ".env", "SECRET_KEY=do-not-ship\n");
    write(&dir, ".git/HEAD", "ref: refs/heads/main\n");
    // The host's configuration (README: secrets from SSM), outside what is shipped.
    write(&dir, "../host.env", "SECRET_KEY=from-the-host\n");
    let mut init = Command::new(workspace_bin("handoff"));
    init.args([
        "init",
        "--service",
        &svc.name,
        "--strategy",
        "proxy",
        "--needs",
        app.needs,
    ])
    .arg("--listen")
    .arg(format!("127.0.0.1:{}", svc.port))
    .arg("--command")
    .arg(app.command);
    for a in app.args {
        init.arg(format!("--arg={a}"));
    }
    run_ok(init.arg(&dir));
    let appspec = std::fs::read_to_string(dir.join("appspec.yml")).unwrap();
    assert!(
        appspec.contains("  # our own step, kept by handoff init\n")
            && appspec.contains("location: scripts/after_install.sh")
            && appspec.contains("destination: /srv/shop")
            && appspec.contains("ApplicationStart"),
        "init merged into the team's appspec.yml:\n{appspec}"
    );
    std::fs::copy(dir.join("deploy.yml"), dir.with_extension("deploy.yml")).unwrap();
    dir
}

/// `handoff bundle` of the project as release `label`, unpacked the way the agent does.
fn revision(svc: &TestService, app: &App, dir: &Path, label: &str) -> PathBuf {
    // What `handoff init` wrote, with this release's label and the app's own fields.
    let base = std::fs::read_to_string(dir.with_extension("deploy.yml")).unwrap();
    let host_env = dir.parent().unwrap().join("host.env");
    let extra = app
        .app_extra
        .replace("{host_env}", &host_env.display().to_string());
    assert!(base.contains("  environment: {}\n"), "{base}");
    let text = base.replace(
        "  environment: {}\n",
        &format!("  environment: {{ RELEASE: \"{label}\" }}\n  log_to_file: true\n{extra}"),
    ) + "takeover: shop-legacy.service\n";
    let text = text.replace("  stable_for: 2s\n", "  stable_for: 1s\n");
    std::fs::write(dir.join("deploy.yml"), &text).unwrap();
    let zip = svc.sandbox.scratch(&format!("zips/{}-{label}.zip", app.name));
    let out = run_ok(
        Command::new(workspace_bin("handoff"))
            .arg("bundle")
            .arg(dir)
            .arg("-o")
            .arg(&zip),
    );
    let listing =
        String::from_utf8_lossy(&run_ok(Command::new("unzip").arg("-Z1").arg(&zip)).stdout).to_string();
    assert!(
        listing.lines().any(|l| l == app.shipped),
        "{} not in the zip:\n{listing}",
        app.shipped
    );
    assert!(
        !listing.lines().any(|l| l == ".env" || l.starts_with(".git/")),
        "the zip holds .env or .git:\n{listing}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("files"),
        "{}",
        explain(&Command::new("bundle"), &out)
    );
    let revision = svc.sandbox.scratch(&format!("revisions/{}-{label}", app.name));
    run_ok(Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&revision));
    revision
}

/// The unit that serves the port today, as a team writes it: binds the port itself.
fn start_legacy(svc: &TestService, app: &App, dir: &Path) {
    let unit = svc.sandbox.scratch("units/shop-legacy.service");
    let exec = app
        .legacy
        .replace("{dir}", &dir.display().to_string())
        .replace("{port}", &svc.port.to_string());
    std::fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=shop as it runs today\n\n[Service]\nWorkingDirectory={}\n\
             Environment=RELEASE=v0 PORT={}\nExecStart={exec}\nRestart=on-failure\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            dir.display(),
            svc.port
        ),
    )
    .unwrap();
    svc.sandbox.install_units(&[&unit]);
    run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["enable", "--now", "shop-legacy.service"]),
    );
    for _ in 0..200 {
        if http_get(svc.port, "/").is_ok_and(|r| r.to_ascii_lowercase().contains("x-release: v0")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the legacy unit never answered on {}", svc.port);
}

/// The releases the probe saw, in order, each once.
fn sequence(report: &crate::load::Report) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for s in &report.samples {
        if let Some(r) = &s.release
            && seen.last() != Some(r)
        {
            seen.push(r.clone());
        }
    }
    seen
}

async fn adopt(app: App) {
    let mut svc = TestService::new();
    let dir = tokio::task::block_in_place(|| project(&svc, &app));
    start_legacy(&svc, &app, &dir);
    let v1 = revision(&svc, &app, &dir, "v1");
    let v2 = revision(&svc, &app, &dir, "v2");

    let load = Load::start(svc.port, Duration::from_secs(60), 0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let first = svc.deploy_ok("d-1", &v1);
    assert!(first.contains("takeover: joined shop-legacy.service"), "{first}");
    assert!(
        first.contains("took the port over from shop-legacy.service"),
        "{first}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    svc.deploy_ok("d-2", &v2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.finish().await;
    eprintln!("{}: takeover and v1 -> v2\n{}", app.name, report.summary());
    assert_no_failures(&report, &format!("{}: takeover, then v1 -> v2", app.name));
    assert_eq!(sequence(&report), ["v0", "v1", "v2"], "{}", report.summary());
    assert_eq!(
        svc.unit_property("shop-legacy.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(svc.is_enabled("shop-legacy.service"), "disabled");
    assert_eq!(svc.state()["taken_over"], "shop-legacy.service");

    for line in first
        .lines()
        .filter(|l| l.contains("takeover") || l.contains("application-start: took"))
    {
        eprintln!("{}: {line}", app.name);
    }

    // The way back: the old unit serves again, handoff's units and releases are gone. The
    // port is closed meanwhile (README): measured, not asserted.
    let load = Load::start(svc.port, Duration::from_secs(30), 0).await;
    let out = tokio::task::block_in_place(|| svc.handoff(&["uninstall"]));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = load.finish().await;
    eprintln!("{}: during handoff uninstall\n{}", app.name, during.summary());
    let text = explain(&Command::new("handoff uninstall"), &out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("enabled and started shop-legacy.service"), "{text}");
    eprintln!(
        "{}: uninstall\n{}",
        app.name,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(svc.answering_release(), "v0");
    assert!(!svc.sandbox.host_path("/opt/shop").exists());
    assert!(!svc.sandbox.host_path("/etc/systemd/system/shop.socket").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_django_app_in_its_virtualenv_is_taken_over_from_its_gunicorn_unit_and_switched_under_load() {
    adopt(DJANGO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_express_app_with_node_modules_is_taken_over_from_its_unit_and_switched_under_load() {
    adopt(EXPRESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_java_jar_is_taken_over_from_its_unit_and_switched_under_load() {
    adopt(JAR).await;
}

/// A takeover whose ApplicationStart is killed after the release started and connections
/// were steered to the socket, before the commit: the next deployment's ApplicationStart
/// undoes that switch, gives the port back to the old unit, and takes it over again. Native
/// mode, under load and WebSockets throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_killed_before_its_commit_gives_the_port_back_and_the_next_one_takes_it() {
    let mut svc = TestService::new();
    // The unit that serves today: the sample app binding the port itself (no SO_REUSEPORT).
    let app = svc.sandbox.test_binary("sample-app");
    let unit = svc.sandbox.scratch("units/shop-legacy.service");
    std::fs::write(
        &unit,
        format!(
            "[Service]\nEnvironment=RELEASE=v0\nExecStart={app} --bind 127.0.0.1:{}\n\n[Install]\nWantedBy=multi-user.target\n",
            svc.port
        ),
    )
    .unwrap();
    svc.sandbox.install_units(&[&unit]);
    run_ok(
        svc.sandbox
            .command("systemctl")
            .args(["enable", "--now", "shop-legacy.service"]),
    );
    for _ in 0..100 {
        if http_get(svc.port, "/").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(svc.answering_release(), "v0");
    let takeover = "takeover: shop-legacy.service\n";
    let v1 = svc.revision("v1", &[], takeover);

    let load = Load::start(svc.port, Duration::from_secs(40), 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = svc.hook("before-install", "d-1", &v1);
    assert!(
        out.status.success(),
        "{}",
        explain(&Command::new("before-install"), &out)
    );
    let t0 = crate::load::clock();
    svc.hook_killed_at("after-start", "application-start", "d-1", &v1);
    let t1 = crate::load::clock();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Until a hook recovers, the started release serves the socket, as after any kill there.
    assert_eq!(svc.answering_release(), "v1");
    // The next deployment's ApplicationStart recovers first: the port goes back to the old
    // unit, then this deployment takes it over again.
    let v1 = svc.revision("v1", &[], takeover);
    let t2 = crate::load::clock();
    let log = svc.deploy_ok("d-2", &v1);
    let t3 = crate::load::clock();
    eprintln!("killed at {t0:?}..{t1:?}, recovered and taken over at {t2:?}..{t3:?}");
    assert!(
        log.contains("giving the port back to shop-legacy.service"),
        "{log}"
    );
    assert!(
        log.contains("took the port over from shop-legacy.service"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.finish().await;
    eprintln!(
        "killed takeover, given back, taken over\n{}\nprobe failures at {:?}",
        report.summary(),
        report.probe_failed_at
    );
    assert_no_failures(
        &report,
        &format!("a takeover killed before its commit, then the next one; d-2's hooks:\n{log}"),
    );
    assert_eq!(
        sequence(&report),
        ["v0", "v1", "v0", "v1"],
        "{}",
        report.summary()
    );
    assert_eq!(svc.answering_release(), "v1");
    assert_eq!(
        svc.unit_property("shop-legacy.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(svc.is_enabled("shop-legacy.service"), "disabled");
}
