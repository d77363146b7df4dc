//! The `weir` binary as an operator meets it: `check`, `version`, `--help`,
//! `run` refusing a bad file, a graceful drain on SIGTERM and SIGHUP being
//! ignored. Every test
//! runs the built binary as a child process; every wait has a deadline, and
//! children are killed on drop so a failing test leaves nothing behind.

mod cli_support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use cli_support::{
    eventually, line_of, repo_file, run, weir, Gateway, RawClient, RawResponse, TempConfig,
    Upstream,
};

/// Sends `kill -<sig>` to the gateway process.
fn send_signal(gw: &Gateway, sig: &str) {
    let pid = gw.child.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{sig} {pid} failed");
}

/// `GET /ready` on a fresh connection to the admin listener; fails the test
/// when the connection is refused or the request fails.
fn ready_on_a_new_connection(gw: &Gateway, admin: SocketAddr) -> RawResponse {
    let mut conn = RawClient::connect(admin, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "the admin listener refused a new connection: {e}; log:\n{}",
            gw.log()
        )
    });
    let ready = conn
        .get("/ready")
        .unwrap_or_else(|e| panic!("GET /ready failed: {e}; log:\n{}", gw.log()));
    conn.close();
    ready
}

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
fn check_summary_names_balancing_and_protocol_as_in_the_config() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: all
    match: { path_prefix: / }
    upstream: fast
upstreams:
  - name: fast
    load_balancing: least_request
    protocol: h2c
    targets:
      - address: 127.0.0.1:9151
  - name: plain
    targets:
      - address: 127.0.0.1:9152
";
    let file = TempConfig::new("summary-names", text);
    let mut cmd = weir();
    cmd.args(["check", "--config"]).arg(file.path());
    let out = run(cmd);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name) && l.contains("127.0.0.1:915"))
            .unwrap_or_else(|| panic!("no upstream line for {name}:\n{}", out.stdout))
            .to_owned()
    };
    let fast = line("fast");
    assert!(
        fast.contains(" least_request ") && fast.contains(" h2c "),
        "{fast:?}"
    );
    // The defaults, spelled as in the config too.
    let plain = line("plain");
    assert!(
        plain.contains(" round_robin ") && plain.contains(" http1 "),
        "{plain:?}"
    );
    for debug_name in ["LeastRequest", "H2c", "RoundRobin", "Http1"] {
        assert!(
            !out.stdout.contains(debug_name),
            "summary shows the Rust name {debug_name}:\n{}",
            out.stdout
        );
    }
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

/// The allocator settings weir chooses (mimalloc's verbose start-up report
/// lists them), and an operator's `MIMALLOC_*` variable taking precedence.
#[test]
fn allocator_defaults_apply_and_mimalloc_environment_overrides_them() {
    // Runs `weir version` with mimalloc's report on and the given variables
    // set (`None`: removed); returns the reported (purge_delay, eager_commit).
    let report = |purge: Option<&str>, commit: Option<&str>| {
        let mut cmd = weir();
        cmd.arg("version").env("MIMALLOC_VERBOSE", "1");
        for (name, value) in [
            ("MIMALLOC_PURGE_DELAY", purge),
            ("MIMALLOC_EAGER_COMMIT", commit),
        ] {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let out = run(cmd);
        assert_eq!(out.code(), 0, "{}", out.stderr);
        // The version still goes to stdout alone.
        assert_eq!(
            out.stdout.trim(),
            format!("weir {}", env!("CARGO_PKG_VERSION"))
        );
        let option = |name: &str| {
            let prefix = format!("mimalloc: option '{name}': ");
            out.stderr
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in:\n{}", out.stderr))
        };
        (option("purge_delay"), option("eager_commit"))
    };
    assert_eq!(report(None, None), ("1".to_owned(), "0".to_owned()));
    assert_eq!(
        report(Some("7"), Some("1")),
        ("7".to_owned(), "1".to_owned())
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

    let ready = ready_on_a_new_connection(&gw, admin);
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

    send_signal(&gw, "TERM");
    let signalled = Instant::now();

    // During the drain: the admin listener still accepts new connections and
    // /ready says 503 on them (a probe must see "not ready", not a refused
    // connection), while the public listener refuses new connections and
    // the slow request is still being served.
    let draining = eventually(Duration::from_secs(5), || {
        let r = ready_on_a_new_connection(&gw, admin);
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
    // Still up once the public listener has closed.
    let ready = ready_on_a_new_connection(&gw, admin);
    assert_eq!(ready.status, 503, "mid-drain: {ready:?}");
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the upstream was released; log:\n{}",
        gw.log()
    );
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

#[test]
fn sighup_reloads_the_file_and_sigterm_still_exits_zero() {
    // One thread: weir installs its signal handlers before that thread
    // serves anything, so a served request proves they are in place.
    let text = "\
runtime:
  threads: 1
  shutdown_grace: 5s
listeners:
  - name: public
    address: 127.0.0.1:0
routes:
  - name: hi
    direct_response: { status: 200, body: \"hi\\n\" }
";
    let file = TempConfig::new("sighup", text);
    let mut gw = Gateway::start(file.path());
    let public = gw.wait_for_address("listener", |l| {
        l.contains("listening") && l.contains("public")
    });
    let get_hi = |gw: &Gateway| {
        let mut client = RawClient::connect(public, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", gw.log()));
        let resp = client
            .get("/")
            .unwrap_or_else(|e| panic!("GET /: {e}; log:\n{}", gw.log()));
        client.close();
        resp
    };
    assert_eq!(get_hi(&gw).status, 200);

    send_signal(&gw, "HUP");
    let logged = eventually(Duration::from_secs(10), || {
        if gw.log().contains("SIGHUP received") {
            return Some(true);
        }
        // Killed by the signal: stop waiting for a line that cannot come.
        gw.child.0.try_wait().ok().flatten().map(|_| false)
    });
    assert_eq!(
        logged,
        Some(true),
        "no \"SIGHUP received\" warning (exit status {:?}); log:\n{}",
        gw.child.0.try_wait().ok().flatten(),
        gw.log()
    );
    let resp = get_hi(&gw);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "hi\n");
    assert!(
        gw.child.0.try_wait().expect("try_wait").is_none(),
        "weir exited after SIGHUP; log:\n{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("shutdown signal received"),
        "SIGHUP started a shutdown; log:\n{}",
        gw.log()
    );

    // A changed file is picked up (by the watcher or the next SIGHUP).
    std::fs::write(file.path(), text.replace("hi\\n", "hello\\n")).expect("rewrite config");
    send_signal(&gw, "HUP");
    let reloaded = eventually(Duration::from_secs(10), || {
        let resp = get_hi(&gw);
        (resp.body == "hello\n").then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the new body never appeared; log:\n{}",
        gw.log()
    );
    // The log line follows the swap: poll for it.
    let logged = eventually(Duration::from_secs(10), || {
        gw.log().contains("configuration reloaded").then_some(())
    });
    assert!(logged.is_some(), "log:\n{}", gw.log());

    send_signal(&gw, "TERM");
    let status = gw
        .child
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("weir did not exit after SIGTERM; log:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
}
