//! The relay over in-memory streams: what each peer receives, and when a
//! close frame of weir's own goes out.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use super::*;

/// A masked client frame (key 1,2,3,4) or an unmasked server frame.
fn frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    f.push(if masked { 0x80 } else { 0 } | payload.len() as u8);
    if masked {
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ (i as u8 % 4 + 1)),
        );
    } else {
        f.extend_from_slice(payload);
    }
    f
}

struct Peers {
    client: DuplexStream,
    upstream: DuplexStream,
    shutdown: Option<oneshot::Sender<()>>,
}

fn relay() -> (Relay<DuplexStream, DuplexStream>, Peers) {
    let (client, client_side) = tokio::io::duplex(64 * 1024);
    let (upstream, upstream_side) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = Box::pin(async move {
        let _ = rx.await;
    });
    let relay = Relay::new(client_side, upstream_side, shutdown);
    let peers = Peers {
        client,
        upstream,
        shutdown: Some(tx),
    };
    (relay, peers)
}

async fn read_exact(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("read in time")
        .expect("read");
    buf
}

/// A close frame's code, from an unmasked or masked frame.
fn close_code(f: &[u8]) -> u16 {
    assert_eq!(f[0], 0x88, "not a close frame: {f:?}");
    if f[1] & 0x80 != 0 {
        let key = &f[2..6];
        u16::from_be_bytes([f[6] ^ key[0], f[7] ^ key[1]])
    } else {
        u16::from_be_bytes([f[2], f[3]])
    }
}

#[tokio::test]
async fn copies_both_ways_and_ends_when_both_sides_close() {
    let (relay, mut p) = relay();
    let task = tokio::spawn(relay);
    let hello = frame(0x1, true, b"hello", true);
    p.client.write_all(&hello).await.unwrap();
    assert_eq!(read_exact(&mut p.upstream, hello.len()).await, hello);
    let reply = frame(0x1, true, b"hi", false);
    p.upstream.write_all(&reply).await.unwrap();
    assert_eq!(read_exact(&mut p.client, reply.len()).await, reply);

    // The close handshake passes as sent, then each end of stream is
    // passed on as a shutdown of the other side's write half.
    let close = frame(0x8, true, &1000u16.to_be_bytes(), true);
    p.client.write_all(&close).await.unwrap();
    assert_eq!(read_exact(&mut p.upstream, close.len()).await, close);
    let answer = frame(0x8, true, &1000u16.to_be_bytes(), false);
    p.upstream.write_all(&answer).await.unwrap();
    p.upstream.shutdown().await.unwrap();
    assert_eq!(read_exact(&mut p.client, answer.len()).await, answer);
    let mut rest = Vec::new();
    p.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    p.client.shutdown().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("relay ended")
        .unwrap();
    assert_eq!(end.unwrap(), Reason::Closed);
}

#[tokio::test]
async fn a_shutdown_close_waits_for_the_frame_in_flight() {
    let (relay, mut p) = relay();
    let task = tokio::spawn(relay);
    // Half a masked frame from the client is on its way upstream.
    let big = frame(0x2, true, &[7u8; 100], true);
    p.client.write_all(&big[..40]).await.unwrap();
    assert_eq!(read_exact(&mut p.upstream, 40).await, &big[..40]);

    p.shutdown.take().unwrap().send(()).unwrap();
    // Towards the client nothing was in flight: its close comes at once,
    // unmasked.
    let to_client = read_exact(&mut p.client, 2).await;
    let len = to_client[1] as usize;
    assert_eq!(to_client[1] & 0x80, 0, "frames to a client are not masked");
    let to_client = [to_client, read_exact(&mut p.client, len).await].concat();
    assert_eq!(close_code(&to_client), 1001);

    // Towards the upstream the frame is finished first, then the masked
    // close follows; what the client sends after the frame is dropped.
    let mut rest = big[40..].to_vec();
    rest.extend(frame(0x1, true, b"late", true));
    p.client.write_all(&rest).await.unwrap();
    assert_eq!(
        read_exact(&mut p.upstream, big.len() - 40).await,
        &big[40..]
    );
    let head = read_exact(&mut p.upstream, 2).await;
    assert_eq!(head[1] & 0x80, 0x80, "frames to a server are masked");
    let len = (head[1] & 0x7f) as usize;
    let to_upstream = [head, read_exact(&mut p.upstream, 4 + len).await].concat();
    assert_eq!(close_code(&to_upstream), 1001);

    // Both peers answer the close; the relay then shuts both down.
    let client_answer = frame(0x8, true, &1001u16.to_be_bytes(), true);
    p.client.write_all(&client_answer).await.unwrap();
    let upstream_answer = frame(0x8, true, &1001u16.to_be_bytes(), false);
    p.upstream.write_all(&upstream_answer).await.unwrap();
    let mut tail = Vec::new();
    p.upstream.read_to_end(&mut tail).await.unwrap();
    assert!(tail.is_empty(), "the client's answer is not forwarded");
    p.client.read_to_end(&mut tail).await.unwrap();
    assert!(tail.is_empty(), "the upstream's answer is not forwarded");
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("relay ended")
        .unwrap();
    assert_eq!(end.unwrap(), Reason::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_is_closed_after_its_idle_timeout() {
    let (mut relay, mut p) = relay();
    relay.idle = Some(Idle::new(Duration::from_secs(30)));
    let task = tokio::spawn(relay);
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Traffic (a ping) restarts the silence.
    let ping = frame(0x9, true, b"", true);
    p.client.write_all(&ping).await.unwrap();
    assert_eq!(read_exact(&mut p.upstream, ping.len()).await, ping);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!task.is_finished());
    tokio::time::sleep(Duration::from_secs(11)).await;
    let to_client = read_exact(&mut p.client, 2).await;
    let len = to_client[1] as usize;
    let to_client = [to_client, read_exact(&mut p.client, len).await].concat();
    assert_eq!(close_code(&to_client), 1001);
    let head = read_exact(&mut p.upstream, 2).await;
    let len = (head[1] & 0x7f) as usize;
    let to_upstream = [head, read_exact(&mut p.upstream, 4 + len).await].concat();
    assert_eq!(close_code(&to_upstream), 1001);
    // Peers that never answer: the close timeout ends the tunnel.
    tokio::time::sleep(CLOSE_TIMEOUT + Duration::from_millis(10)).await;
    let end = task.await.unwrap();
    assert_eq!(end.unwrap(), Reason::Idle);
}

#[tokio::test]
async fn no_second_close_goes_to_a_side_that_already_got_one() {
    let (relay, mut p) = relay();
    let task = tokio::spawn(relay);
    // The upstream has started the close handshake itself.
    let close = frame(0x8, true, &1000u16.to_be_bytes(), false);
    p.upstream.write_all(&close).await.unwrap();
    assert_eq!(read_exact(&mut p.client, close.len()).await, close);
    p.shutdown.take().unwrap().send(()).unwrap();
    // Only the upstream gets weir's close; the client's own answer is
    // dropped, and both are then shut down.
    let head = read_exact(&mut p.upstream, 2).await;
    let len = (head[1] & 0x7f) as usize;
    let to_upstream = [head, read_exact(&mut p.upstream, 4 + len).await].concat();
    assert_eq!(close_code(&to_upstream), 1001);
    p.client
        .write_all(&frame(0x8, true, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    p.upstream.shutdown().await.unwrap();
    let mut tail = Vec::new();
    p.client.read_to_end(&mut tail).await.unwrap();
    assert!(tail.is_empty(), "the client got a second close: {tail:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("relay ended")
        .unwrap();
    assert_eq!(end.unwrap(), Reason::Shutdown);
}
