//! gRPC over TLS end to end: a tonic client speaks HTTP/2 over TLS (ALPN
//! `h2`) to weir's TLS listener, and weir to a gRPC server over TLS
//! (`protocol: h2` with `tls`): unary and streaming calls, trailers, and
//! weir's own errors as gRPC statuses.

mod grpc_support;
mod support;

use futures_util::StreamExt;
use grpc_support::*;
use support::tls::{client_config, server_config, Ca, CertDir};
use support::TestGateway;
use tonic::Code;

#[tokio::test]
async fn grpc_calls_pass_over_tls_on_both_sides() {
    let dir = CertDir::new("grpc-tls");
    let ca = Ca::new("weir test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key) = ca.server("edge", &["edge.test"]).write(&dir, "edge");
    let backend = ca.server("backend", &["echo.internal"]);
    let up = GrpcUpstream::spawn_tls(server_config(&backend, &[b"h2"])).await;
    let gw = TestGateway::start(&format!(
        "listeners:\n  - name: main\n    address: 127.0.0.1:0\n    \
         tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}\n\
         routes:\n  - name: echo\n    match: {{ grpc: {{ service: test.Echo }} }}\n    upstream: echo\n\
         upstreams:\n  - name: echo\n    protocol: h2\n    targets: [{{ address: \"{}\" }}]\n    \
         tls: {{ ca: {ca_file}, sni: echo.internal }}\n",
        up.addr()
    ))
    .await;
    let mut client =
        EchoClient::connect_tls(gw.addr(), "edge.test", client_config(&ca, None, &[b"h2"])).await;

    let reply = client.unary(msg(7, b"over tls")).await.expect("unary call");
    assert_eq!(reply.get_ref().payload, b"over tls");

    let mut request = msg(3, b"x");
    request.count = 3;
    let mut stream = client
        .server_stream(request)
        .await
        .expect("server stream")
        .into_inner();
    let mut got = 0;
    while let Some(item) = stream.next().await {
        item.expect("stream item");
        got += 1;
    }
    assert_eq!(got, 3, "every streamed reply arrives");

    // No route for this method: weir answers as gRPC, over TLS too.
    let missing = client
        .call_unary("/test.Other/Nope", tonic::Request::new(msg(1, b"")))
        .await
        .expect_err("no route");
    assert_eq!(missing.code(), Code::Unimplemented);
    assert!(up.seen().iter().all(|s| s.path != "/test.Other/Nope"));
}
