//! `admin.auth_token_file`: every admin request but `/healthz` and `/ready`
//! needs the bearer token; `/config` shows the file's path, never the token.

mod support;

use http::Method;
use support::*;

const TOKEN: &str = "s3cr3t-t0ken-0123456789abcdef";

async fn gateway(token_file: &TempPath) -> TestGateway {
    TestGateway::start(&format!(
        "listeners: [{{ name: main, address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, auth_token_file: \"{}\" }}
routes: [{{ name: hi, direct_response: {{ status: 200, body: hi }} }}]
",
        token_file.as_str()
    ))
    .await
}

async fn admin(
    gw: &TestGateway,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> TestResponse {
    let mut r = req(method, path);
    if let Some(a) = authorization {
        r = r.header("authorization", a);
    }
    send(gw.admin(), r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn admin_requests_need_the_bearer_token() {
    let file = TempPath::new("admin-token");
    std::fs::write(&file.0, format!("{TOKEN}\n")).unwrap();
    let gw = gateway(&file).await;
    let good = format!("Bearer {TOKEN}");
    let wrong_case_scheme = format!("bearer {TOKEN}");
    for path in [
        "/metrics",
        "/config",
        "/routes",
        "/upstreams",
        "/status",
        "/nope",
    ] {
        for bad in [
            None,
            Some("Bearer wrong"),
            Some(&format!("Bearer {TOKEN}x")[..]),
            Some(TOKEN),
            Some("Basic dXNlcjpwYXNz"),
        ] {
            let resp = admin(&gw, Method::GET, path, bad).await;
            assert_eq!(resp.status, 401, "{path} with {bad:?}");
            assert_eq!(
                resp.header("www-authenticate"),
                Some("Bearer realm=\"weir-admin\"")
            );
        }
        let resp = admin(&gw, Method::GET, path, Some(&good)).await;
        assert_ne!(resp.status, 401, "{path}");
    }
    assert_eq!(
        admin(&gw, Method::GET, "/metrics", Some(&wrong_case_scheme))
            .await
            .status,
        200
    );
    // Operator actions too.
    let resp = admin(&gw, Method::POST, "/config/reload", None).await;
    assert_eq!(resp.status, 401);
    // Probes need none.
    assert_eq!(admin(&gw, Method::GET, "/healthz", None).await.status, 200);
    assert_eq!(admin(&gw, Method::GET, "/ready", None).await.status, 200);
    // The file's path is shown, never the token.
    let config = admin(&gw, Method::GET, "/config", Some(&good)).await;
    assert_eq!(config.status, 200);
    assert_eq!(
        config.json()["admin"]["auth_token_file"],
        file.as_str(),
        "{}",
        config.text()
    );
    assert!(!config.text().contains(TOKEN));
    for path in ["/status", "/routes", "/metrics"] {
        let resp = admin(&gw, Method::GET, path, Some(&good)).await;
        assert!(!resp.text().contains(TOKEN), "{path}");
    }
}

#[tokio::test]
async fn a_missing_or_empty_token_file_stops_the_start() {
    let file = TempPath::new("admin-token-empty");
    std::fs::write(&file.0, " \n").unwrap();
    let missing = TempPath::new("admin-token-missing");
    for (path, phrase) in [(&file, "no token"), (&missing, "No such file")] {
        let yaml = format!(
            "listeners: [{{ name: main, address: 127.0.0.1:0 }}]
admin: {{ address: 127.0.0.1:0, auth_token_file: \"{}\" }}
",
            path.as_str()
        );
        let config = weir::config::Config::from_yaml(&yaml).unwrap();
        let err = match weir::Gateway::start(config).await {
            Ok(_) => panic!("started with {}", path.as_str()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("admin.auth_token_file"), "{err}");
        assert!(err.contains(phrase), "{err}");
    }
}
