//! HTTP/2 floods (reliability guide §4.2): rapid reset (CVE-2023-44487),
//! CONTINUATION without end, SETTINGS and PING floods (CVE-2019-9515,
//! CVE-2019-9512: closed once the control-frame budget is spent, with
//! GOAWAY(ENHANCE_YOUR_CALM) when the client reads), and streams beyond
//! SETTINGS_MAX_CONCURRENT_STREAMS, each from a raw client bounded in frames
//! and time. Each asserts what ends the attack (GOAWAY, a close, or the
//! server no longer reading), that weir's memory (the resident set of this
//! process, weir runs in it) stays within a bound, and that another client
//! is served during and after the flood.

mod parsing_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parsing_support::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// No flood may run longer than this.
const FLOOD_TIME: Duration = Duration::from_secs(5);
/// How much the process may grow during one flood.
const RSS_BOUND_KIB: u64 = 50 * 1024;
/// A write that has not gone through in this long means weir stopped
/// reading the connection.
const STALL: Duration = Duration::from_secs(1);

const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

const CONFIG: &str = "listeners:
  - name: main
    address: 127.0.0.1:0
    protocols: [http1, h2c]
admin:
  address: 127.0.0.1:0
routes:
  - name: all
    upstream: up
upstreams:
  - name: up
    targets:
      - address: \"{up}\"
";

/// The floods run one at a time: the resident set is the process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upstream requests other than the bystanders'.
fn flood_requests(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.uri.path() != "/beside")
        .count()
}

async fn start() -> (Upstream, TestGateway) {
    let up = Upstream::echo().await;
    let gw = TestGateway::start(&fill(CONFIG, &[("up", &up.addr())])).await;
    (up, gw)
}

/// How a flood ended.
#[derive(Debug, Default)]
struct Ended {
    /// Rounds of frames written.
    rounds: usize,
    /// GOAWAY error code received, if any.
    goaway: Option<u32>,
    /// weir closed or reset the connection.
    closed: bool,
    /// A write made no progress for `STALL`: weir stopped reading.
    stalled: bool,
    /// RST_STREAM(REFUSED_STREAM) frames received.
    refused: usize,
    elapsed: Duration,
}

/// Writes `setup`, then `round(i)` for i = 0.. until `rounds`, the flood
/// time, a close, a stall or (when `read`) a GOAWAY. When `read` is false
/// nothing weir sends is read, as in the control-frame floods.
async fn flood(
    addr: SocketAddr,
    setup: Vec<u8>,
    rounds: usize,
    read: bool,
    mut round: impl FnMut(usize) -> Vec<u8>,
) -> Ended {
    let sock = TcpStream::connect(addr).await.expect("connect");
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let start = Instant::now();
    let deadline = start + FLOOD_TIME;
    let (tx, mut rx) = tokio::sync::watch::channel((None::<u32>, false, 0usize));
    let reader = tokio::spawn(async move {
        if !read {
            // Keep the read half alive, unread, until the flood ends.
            tokio::time::sleep(FLOOD_TIME + STALL).await;
            return rd;
        }
        let mut frames = FrameReader::new();
        let mut refused = 0;
        loop {
            match frames.next(&mut rd, deadline + STALL).await {
                Some(f) if f.kind == frame::GOAWAY => {
                    let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                    let _ = tx.send((Some(code), false, refused));
                }
                Some(f) if f.kind == frame::RST_STREAM => {
                    let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                    if code == REFUSED_STREAM {
                        refused += 1;
                        let _ = tx.send((None, false, refused));
                    }
                }
                Some(_) => {}
                None => {
                    let goaway = tx.borrow().0;
                    let _ = tx.send((goaway, true, refused));
                    return rd;
                }
            }
        }
    });
    let mut ended = Ended::default();
    match tokio::time::timeout(STALL, wr.write_all(&setup)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => ended.closed = true,
        Err(_) => ended.stalled = true,
    }
    while !ended.closed && !ended.stalled && ended.rounds < rounds && Instant::now() < deadline {
        let (goaway, closed, _) = *rx.borrow_and_update();
        if goaway.is_some() || closed {
            break;
        }
        let bytes = round(ended.rounds);
        match tokio::time::timeout(STALL, wr.write_all(&bytes)).await {
            Ok(Ok(())) => ended.rounds += 1,
            Ok(Err(_)) => ended.closed = true,
            Err(_) => ended.stalled = true,
        }
    }
    ended.elapsed = start.elapsed();
    if read {
        // Give weir's answer to the last frames a moment to arrive and,
        // after a GOAWAY, the close that follows it: the flood loop may
        // have stopped on the GOAWAY before the reader saw the end.
        let _ = tokio::time::timeout(STALL, async {
            while !rx.borrow_and_update().1 {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let (goaway, closed, refused) = *rx.borrow();
        ended.goaway = goaway;
        ended.closed |= closed;
        ended.refused = refused;
    }
    reader.abort();
    drop(wr);
    eprintln!("flood ended: {ended:?}");
    ended
}

/// A request on its own connection is answered while a flood runs.
async fn bystander(addr: SocketAddr) {
    let resp = within(
        IO_TIMEOUT,
        "a request beside the flood",
        get(addr, "/beside"),
    )
    .await;
    assert_eq!(resp.status, 200);
}

fn get_headers(stream: u32, end_stream: bool) -> Vec<u8> {
    let block = hpack_block(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/flood"),
        (b":authority", b"a"),
    ]);
    let flags = frame::END_HEADERS | if end_stream { frame::END_STREAM } else { 0 };
    h2_frame(frame::HEADERS, flags, stream, &block)
}

fn check_rss(before: u64, what: &str) {
    let after = rss_kib();
    eprintln!("{what}: resident set {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < RSS_BOUND_KIB,
        "{what}: resident set grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let (up, gw) = start().await;
    let rss = rss_kib();
    let side = tokio::spawn(bystander(gw.addr()));
    let ended = flood(gw.addr(), h2_start(), 10_000, true, |i| {
        let stream = 1 + 2 * i as u32;
        let mut v = get_headers(stream, true);
        v.extend(h2_frame(
            frame::RST_STREAM,
            0,
            stream,
            &CANCEL.to_be_bytes(),
        ));
        v
    })
    .await;
    side.await.unwrap();
    assert_eq!(
        ended.goaway,
        Some(ENHANCE_YOUR_CALM),
        "rapid reset not cut off: {ended:?}"
    );
    assert!(ended.elapsed < FLOOD_TIME, "{ended:?}");
    // Streams that were accepted before their reset may have started an
    // upstream request; the reset loop as a whole may not fan out.
    assert!(
        flood_requests(&up) < 1000,
        "{} upstream requests from {} resets",
        flood_requests(&up),
        ended.rounds
    );
    check_rss(rss, "rapid reset");
    bystander(gw.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let (up, gw) = start().await;
    let rss = rss_kib();
    let side = tokio::spawn(bystander(gw.addr()));
    // A header block that never ends: HEADERS without END_HEADERS, then
    // 16 KiB CONTINUATION frames of fresh literal fields.
    let mut setup = h2_start();
    setup.extend(h2_frame(
        frame::HEADERS,
        frame::END_STREAM,
        1,
        &hpack_block(&[(b":method", b"GET"), (b":path", b"/")]),
    ));
    let value = vec![b'v'; 16 * 1024 - 16];
    let ended = flood(gw.addr(), setup, 8 * 1024, true, |_| {
        h2_frame(
            frame::CONTINUATION,
            0,
            1,
            &hpack_block(&[(b"x-flood", &value)]),
        )
    })
    .await;
    side.await.unwrap();
    assert!(
        ended.goaway.is_some() || ended.closed,
        "CONTINUATION flood not cut off: {ended:?}"
    );
    // At most the header-list limit (plus a frame) is ever buffered.
    assert!(ended.rounds * 16 < 20 * 1024, "{ended:?}");
    assert_eq!(flood_requests(&up), 0);
    check_rss(rss, "CONTINUATION flood");
    bystander(gw.addr()).await;
}

/// Control frames that each ask for an answer, 256 to a round. When `read`
/// is false the answers are never read: weir could only stop reading
/// (backpressure); it closes the connection once the control-frame budget
/// (a few hundred frames up front) is spent. When the client reads, weir
/// says GOAWAY(ENHANCE_YOUR_CALM) first.
async fn control_flood(kind: u8, payload: &'static [u8], read: bool, what: &str) {
    let _serial = SERIAL.lock().await;
    let (_up, gw) = start().await;
    let rss = rss_kib();
    let side = tokio::spawn(bystander(gw.addr()));
    let batch: Vec<u8> = (0..256)
        .flat_map(|_| h2_frame(kind, 0, 0, payload))
        .collect();
    let ended = flood(gw.addr(), h2_start(), 4096, read, |_| batch.clone()).await;
    side.await.unwrap();
    if read {
        assert_eq!(
            ended.goaway,
            Some(ENHANCE_YOUR_CALM),
            "{what}: no GOAWAY(ENHANCE_YOUR_CALM): {ended:?}"
        );
    }
    assert!(
        ended.closed && !ended.stalled,
        "{what}: the connection was not closed after {} frames: {ended:?}",
        ended.rounds * 256
    );
    // Cut off at once (what the client wrote meanwhile went into socket
    // buffers), long before the flood's own end.
    assert!(ended.elapsed < STALL, "{what}: {ended:?}");
    gw.metric_reaches(
        "weir_downstream_rejected_total",
        &[("reason", "h2_control_flood")],
        1.0,
    )
    .await;
    check_rss(rss, what);
    bystander(gw.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_closes_the_connection() {
    control_flood(frame::SETTINGS, b"", false, "SETTINGS flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_closes_the_connection() {
    control_flood(frame::PING, b"01234567", false, "PING flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_read_by_the_client_gets_enhance_your_calm() {
    control_flood(frame::SETTINGS, b"", true, "SETTINGS flood, answers read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_read_by_the_client_gets_enhance_your_calm() {
    control_flood(frame::PING, b"01234567", true, "PING flood, answers read").await;
}

/// A client that pings along with its requests (keep-alives, bandwidth
/// probes) is not cut off: the budget grows with the streams it opens.
/// 90 requests with 7 PINGs each and a SETTINGS every tenth (639 control
/// frames) are more than the budget's first 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_in_proportion_to_requests_are_within_the_budget() {
    let _serial = SERIAL.lock().await;
    let (up, gw) = start().await;
    let ended = flood(gw.addr(), h2_start(), 90, true, |i| {
        let mut v = get_headers(1 + 2 * i as u32, true);
        for _ in 0..7 {
            v.extend(h2_frame(frame::PING, 0, 0, b"01234567"));
        }
        if i % 10 == 0 {
            v.extend(h2_frame(frame::SETTINGS, 0, 0, b""));
        }
        v
    })
    .await;
    assert_eq!(ended.rounds, 90, "{ended:?}");
    assert_eq!(ended.goaway, None, "{ended:?}");
    assert!(!ended.closed, "{ended:?}");
    eventually(IO_TIMEOUT, "every request upstream", || async {
        flood_requests(&up) == 90
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "weir_downstream_rejected_total",
            &[("reason", "h2_control_flood")]
        ),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused() {
    let _serial = SERIAL.lock().await;
    let (up, gw) = start().await;
    let rss = rss_kib();
    // Requests whose bodies never come: each stream stays open.
    let ended = flood(gw.addr(), h2_start(), 1000, true, |i| {
        get_headers(1 + 2 * i as u32, false)
    })
    .await;
    bystander(gw.addr()).await;
    assert!(ended.refused > 0, "no stream refused: {ended:?}");
    assert!(
        flood_requests(&up) <= 1000 - ended.refused,
        "{} upstream requests, {} refused",
        flood_requests(&up),
        ended.refused
    );
    check_rss(rss, "streams beyond the limit");
}
