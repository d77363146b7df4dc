//! Load balancing across real upstreams, counted by what each upstream
//! received.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

fn two_targets(policy: &str, w1: u32, w2: u32) -> String {
    format!(
        "routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    load_balancing: {policy}
    targets:
      - {{ address: \"{{up}}\", weight: {w1} }}
      - {{ address: \"{{up2}}\", weight: {w2} }}
"
    )
}

/// Sends 400 requests on one connection through an upstream with two
/// targets weighted 1:3 under `policy`; returns how many each target got.
async fn split_of_400(policy: &str) -> (usize, usize) {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gw = TestGateway::with(
        &two_targets(policy, 1, 3),
        &[("up", &a.addr()), ("up2", &b.addr())],
    )
    .await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..400 {
        assert_eq!(c.get(&format!("/{i}")).await.status, 200);
    }
    (a.request_count(), b.request_count())
}

#[tokio::test]
async fn round_robin_follows_weights_exactly() {
    assert_eq!(split_of_400("round_robin").await, (100, 300));
}

#[tokio::test]
async fn random_roughly_follows_weights() {
    let (na, nb) = split_of_400("random").await;
    assert_eq!(na + nb, 400);
    // Expected 100/300, sd ~8.7: these bounds are > 5 sd away.
    assert!((55..=145).contains(&na), "weights 1:3 gave {na}:{nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_target_when_one_is_slow() {
    // `slow` holds every request for far longer than the test; `fast`
    // answers at once. Requests are started one at a time, each after the
    // previous one was either answered (fast) or is hanging at `slow`, so
    // `slow` accumulates in-flight requests while `fast` has none. Power of
    // two choices then picks `slow` only when both draws are `slow` (1 in
    // 4); round robin or random would give it half.
    let slow = Upstream::http1()
        .latency(Duration::from_secs(30))
        .spawn()
        .await;
    let fast = Upstream::echo().await;
    let gw = TestGateway::with(
        &two_targets("least_request", 1, 1),
        &[("up", &slow.addr()), ("up2", &fast.addr())],
    )
    .await;
    let addr = gw.addr();
    const N: usize = 200;
    let mut hanging = Vec::new();
    for i in 0..N {
        let before = slow.request_count();
        let task = tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            c.get(&format!("/{i}")).await
        });
        let mut task = Some(task);
        eventually(IO_TIMEOUT, "the request to reach a target", || {
            let done = task.as_ref().is_some_and(|t| t.is_finished());
            let at_slow = slow.request_count() > before;
            async move { done || at_slow }
        })
        .await;
        if slow.request_count() > before {
            hanging.push(task.take().unwrap());
        } else {
            let resp = task.take().unwrap().await.unwrap();
            assert_eq!(resp.status, 200);
        }
    }
    let (ns, nf) = (slow.request_count(), fast.request_count());
    assert_eq!(ns + nf, N);
    // Expected ~N/4 (sd ~6); random or round robin would give ~N/2.
    eprintln!("slow {ns} fast {nf}");
    assert!(ns < N * 2 / 5, "slow target got {ns} of {N} requests");
    for t in hanging {
        t.abort();
    }
}

#[tokio::test]
async fn consistent_hash_keeps_users_on_one_target_and_spreads_them() {
    let ups = [
        Upstream::echo().await,
        Upstream::echo().await,
        Upstream::echo().await,
    ];
    let gw = TestGateway::with(
        "routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    load_balancing: consistent_hash
    hash_on: header:x-user-id
    targets:
      - address: \"{up}\"
      - address: \"{up2}\"
      - address: \"{up3}\"
",
        &[
            ("up", &ups[0].addr()),
            ("up2", &ups[1].addr()),
            ("up3", &ups[2].addr()),
        ],
    )
    .await;
    let mut c = H1Client::connect(gw.addr()).await;
    let mut users_per_target = [0; 3];
    for user in 0..30 {
        let mut target = None;
        for _ in 0..4 {
            let before: Vec<usize> = ups.iter().map(Upstream::request_count).collect();
            let resp = c
                .request(
                    req(Method::GET, "/")
                        .header("x-user-id", format!("user-{user}"))
                        .body(empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(resp.status, 200);
            let served = (0..3)
                .find(|&i| ups[i].request_count() > before[i])
                .expect("some target served it");
            match target {
                None => target = Some(served),
                Some(t) => assert_eq!(t, served, "user-{user} moved between targets"),
            }
        }
        users_per_target[target.unwrap()] += 1;
    }
    assert!(
        users_per_target.iter().all(|&n| n >= 3),
        "30 users spread as {users_per_target:?}"
    );
}

#[tokio::test]
async fn consistent_hash_on_client_ip_keeps_each_peer_on_one_target() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gw = TestGateway::with(
        "routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    load_balancing: consistent_hash
    hash_on: client_ip
    targets:
      - address: \"{up}\"
      - address: \"{up2}\"
",
        &[("up", &a.addr()), ("up2", &b.addr())],
    )
    .await;
    let mut peers_per_target = [0; 2];
    for i in 2..22u8 {
        let peer = std::net::IpAddr::from([127, 0, 0, i]);
        let mut target = None;
        // Two connections from the same address, two requests on each.
        for _ in 0..2 {
            let mut c = H1Client::connect_from(gw.addr(), peer).await;
            for _ in 0..2 {
                let before = (a.request_count(), b.request_count());
                let resp = c
                    .request(req(Method::GET, "/").body(empty()).unwrap())
                    .await;
                assert_eq!(resp.status, 200);
                let served = usize::from(b.request_count() > before.1);
                match target {
                    None => target = Some(served),
                    Some(t) => assert_eq!(t, served, "{peer} moved between targets"),
                }
            }
        }
        peers_per_target[target.unwrap()] += 1;
    }
    // Every peer on one target would mean the address was not the key.
    assert!(
        peers_per_target.iter().all(|&n| n > 0),
        "20 peers spread as {peers_per_target:?}"
    );
}

#[tokio::test]
async fn unresolvable_target_is_skipped() {
    let up = Upstream::echo().await;
    let gw = TestGateway::with(
        "routes:
  - name: all
    upstream: pool
upstreams:
  - name: pool
    targets:
      - address: nonexistent.invalid:80
      - address: \"{up}\"
",
        &[("up", &up.addr())],
    )
    .await;
    let mut c = H1Client::connect(gw.addr()).await;
    for i in 0..10 {
        let resp = c.get(&format!("/{i}")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(up.request_count(), 10);
}
