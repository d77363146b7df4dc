//! The `weir` binary as an operator meets it: `check`, `version`, `--help`,
//! `run` refusing a bad file, and a graceful drain on SIGTERM. Every test
//! runs the built binary as a child process; every wait has a deadline, and
//! children are killed on drop so a failing test leaves nothing behind.

mod cli_support;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use cli_support::{
    eventually, line_of, repo_file, run, weir, Gateway, RawClient, TempConfig, Upstream,
};

/// True when weir's log shows it started serving (it logs `starting weir`
/// once the config is valid, and a `listening` line per bound socket).
fn started(stderr: &str) -> bool {
    stderr.contains("starting weir") || stderr.contains("listening")
}

#[test]
fn check_accepts_the_quickstart_and_prints_a_summary() {
    let path = repo_file("examples/quickstart.yaml");
    let mut cmd = weir();
    cmd.args(["check", "--config"]).arg(&path);
    let out = run(cmd);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    for expected in [
        "valid",
        "listeners (1):",
        "public",
        "127.0.0.1:8080",
        "admin: 127.0.0.1:9901",
        "routes (2):",
        "hello",
        "-> direct 200",
        "-> api",
        "upstreams (1):",
        "127.0.0.1:9009",
    ] {
        assert!(
            out.stdout.contains(expected),
            "summary lacks {expected:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        !started(&out.stderr),
        "check started serving:\n{}",
        out.stderr
    );
}

#[test]
fn check_accepts_every_example_config() {
    let dir = repo_file("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read examples/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let mut cmd = weir();
        cmd.args(["check", "--config"]).arg(&path);
        let out = run(cmd);
        assert_eq!(
            out.code(),
            0,
            "{} is invalid:\n{}",
            path.display(),
            out.stderr
        );
        checked += 1;
    }
    assert!(checked >= 1, "no examples/*.yaml found");
}

#[test]
fn check_lists_every_error_with_file_line_and_path_and_starts_nothing() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:0
routes:
  - name: api
    match: { path_prefix: /api/ }
    upstream: apii
  - name: legacy
    match: { path_regex: \"/v1/(users\" }
    upstream: api
  - name: api
    match: { path: /hello }
    direct_response: { status: 200, body: \"hi\\n\" }
upstreams:
  - name: api
    targets:
      - address: 127.0.0.1:9
";
    let file = TempConfig::new("three-errors", text);
    let mut cmd = weir();
    cmd.args(["check", "--config"]).arg(file.path());
    let began = Instant::now();
    let out = run(cmd);
    assert_eq!(
        out.code(),
        1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "check should return at once"
    );
    let f = file.display();
    let expected = [
        format!(
            "{f}:{}: routes[0].upstream: no upstream named \"apii\" (did you mean \"api\"?)",
            line_of(text, "upstream: apii")
        ),
        format!(
            "{f}:{}: routes[1].match.path_regex: invalid regex",
            line_of(text, "path_regex")
        ),
        format!(
            "{f}:{}: routes[2].name: duplicate route name \"api\"",
            // The second `- name: api` line.
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("- name: api"))
                .nth(1)
                .map(|(i, _)| i + 1)
                .expect("second route named api")
        ),
    ];
    for e in &expected {
        assert!(
            out.stderr.contains(e.as_str()),
            "missing {e:?} in:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("3 errors"), "{}", out.stderr);
    assert!(!out.stdout.contains("valid"), "{}", out.stdout);
    assert!(
        !started(&out.stderr),
        "check started serving:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_an_unknown_key_with_its_line() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
    protocol: [http1]
routes: []
";
    let file = TempConfig::new("unknown-key", text);
    let mut cmd = weir();
    cmd.args(["check", "--config"]).arg(file.path());
    let out = run(cmd);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    let want = format!("{}:{}:", file.display(), line_of(text, "protocol:"));
    assert!(
        out.stderr.contains(&want),
        "no {want:?} in:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown field `protocol`"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_fails_on_a_missing_file() {
    let mut cmd = weir();
    cmd.args(["check", "--config", "/nonexistent/weir.yaml"]);
    let out = run(cmd);
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}

#[test]
fn run_refuses_an_invalid_config_with_the_errors_on_stderr() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:0
routes:
  - name: api
    upstream: missing
";
    let file = TempConfig::new("run-invalid", text);
    let mut cmd = weir();
    cmd.args(["run", "--config"]).arg(file.path());
    let out = run(cmd);
    assert_eq!(out.code(), 1, "stderr:\n{}", out.stderr);
    let want = format!(
        "{}:{}: routes[0].upstream: no upstream named \"missing\"",
        file.display(),
        line_of(text, "upstream: missing")
    );
    assert!(
        out.stderr.contains(&want),
        "no {want:?} in:\n{}",
        out.stderr
    );
    assert!(
        !started(&out.stderr),
        "an invalid config must not start anything:\n{}",
        out.stderr
    );
}

#[test]
fn version_prints_the_crate_version() {
    let mut cmd = weir();
    cmd.arg("version");
    let out = run(cmd);
    assert_eq!(out.code(), 0);
    assert_eq!(
        out.stdout.trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_the_subcommands() {
    let mut cmd = weir();
    cmd.arg("--help");
    let out = run(cmd);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for sub in ["run", "check", "version", "--log-level"] {
        assert!(
            out.stdout.contains(sub),
            "--help lacks {sub}:\n{}",
            out.stdout
        );
    }
    let mut cmd = weir();
    cmd.args(["run", "--help"]);
    let out = run(cmd);
    assert!(out.stdout.contains("--threads"), "{}", out.stdout);
    assert!(out.stdout.contains("--config"), "{}", out.stdout);
}

#[test]
fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    const SLOW: &str = "/slow";
    // The upstream answers /slow 1.5 s after receiving it, and not before the
    // test has seen the drain begin, so the request is surely in flight.
    let upstream = Upstream::start(SLOW, Duration::from_millis(1500));
    // Port 0 everywhere: the bound addresses are read from weir's log. One
    // worker thread: the signal handler is then installed before any
    // request is served.
    let text = format!(
        "\
runtime:
  threads: 1
  shutdown_grace: 10s
listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: app
upstreams:
  - name: app
    targets:
      - address: {}
",
        upstream.addr
    );
    let file = TempConfig::new("drain", &text);
    let mut gw = Gateway::start(file.path());
    let public = gw.wait_for_address("listener", |l| {
        l.contains("listening") && !l.contains("admin") && l.contains("public")
    });
    let admin = gw.wait_for_address("admin", |l| l.contains("admin listening"));

    // A kept-alive admin connection: it outlives the admin listener, so it
    // can still ask /ready once the drain has begun.
    let mut admin_conn =
        RawClient::connect(admin, Duration::from_secs(5)).expect("connect to admin");
    let ready = admin_conn.get("/ready").expect("GET /ready");
    assert_eq!(ready.status, 200, "before SIGTERM: {ready:?}");

    let in_flight = thread::spawn(move || {
        let mut client = RawClient::connect(public, Duration::from_secs(15))?;
        client.get(SLOW)
    });
    assert!(
        eventually(Duration::from_secs(10), || (upstream.received() >= 1)
            .then_some(()))
        .is_some(),
        "the slow request never reached the upstream; log:\n{}",
        gw.log()
    );

    let pid = gw.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed");
    let signalled = Instant::now();

    // During the drain: /ready says 503 on the open admin connection, and the
    // public listener refuses new connections, while the slow request is
    // still being served.
    let draining = eventually(Duration::from_secs(5), || {
        let r = admin_conn.get("/ready").ok()?;
        (r.status == 503).then_some(r)
    });
    let draining = draining.unwrap_or_else(|| panic!("/ready never said 503; log:\n{}", gw.log()));
    assert!(draining.body.contains("draining"), "{draining:?}");
    let listener_closed = eventually(Duration::from_secs(5), || {
        matches!(
            TcpStream::connect_timeout(&public, Duration::from_millis(200)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
        .then_some(())
    });
    assert!(
        listener_closed.is_some(),
        "the listener still accepted connections during the drain"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the upstream was released; log:\n{}",
        gw.log()
    );
    admin_conn.close();
    upstream.release();

    let response = in_flight
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}; log:\n{}", gw.log()));
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, format!("ok {SLOW}\n"));

    let status = gw
        .child
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("weir did not exit after the drain; log:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(9),
        "exit waited for the whole grace instead of the last request"
    );
    assert!(
        gw.log().contains("shutdown signal received"),
        "log:\n{}",
        gw.log()
    );
}
