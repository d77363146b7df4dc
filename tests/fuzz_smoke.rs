//! The fuzz targets in `fuzz/` as bounded smoke runs on the stable
//! toolchain: each replays its seed corpus (`fuzz/corpus/<target>/`), the
//! regression inputs below, then mutated seeds from a fixed-seed generator,
//! bounded in count and time. A panic fails the test; the input is printed
//! so that it can become a regression case. Coverage-guided runs need
//! nightly: `cd fuzz && cargo +nightly fuzz run -s none request_head`.

use std::path::Path;
use std::time::{Duration, Instant};

use weir::proxy::fuzzing::{self, HeadTarget};

/// Mutated inputs per target.
const ITERATIONS: usize = 20_000;
/// Wall-clock bound per target (a debug build on a shared machine).
const TIME: Duration = Duration::from_secs(10);

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// One random edit of `input`, or a splice with another seed.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] = &[
        b"\n",
        b":",
        b" ",
        b"\t",
        b"\r",
        b"\0",
        b",",
        b"[",
        b"]",
        b"@",
        b"%",
        b"*",
        b"-",
        b"\xff",
        b"chunked",
        b"host:",
        b"connection:",
        b"content-length:",
        b"transfer-encoding:",
        b"traceparent:00-",
        b"grpc-timeout:",
        b"x-request-timeout:",
        b"99999999999999999999",
        b"{",
        b"}",
        b"- ",
        b"&a",
        b"*a",
        b"!!",
        b"'",
        b"\"",
    ];
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=out.len());
        match rng.u8(..6) {
            0 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] = rng.u8(..);
            }
            1 if !out.is_empty() => {
                let end = (at + rng.usize(..16)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let piece = INTERESTING[rng.usize(..INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 if !out.is_empty() => {
                // Repeat a slice: long lines, many headers.
                let start = rng.usize(..out.len());
                let end = (start + rng.usize(1..64)).min(out.len());
                let piece = out[start..end].to_vec();
                for _ in 0..rng.usize(1..8) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let cut = rng.usize(..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn smoke(target: &str, regressions: &[&[u8]], run: impl Fn(&[u8])) {
    let seeds = seeds(target);
    let check = |input: &[u8]| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(input)));
        if outcome.is_err() {
            panic!("{target} panicked on {input:?}");
        }
    };
    for input in seeds
        .iter()
        .map(Vec::as_slice)
        .chain(regressions.iter().copied())
    {
        check(input);
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let start = Instant::now();
    let mut done = 0;
    while done < ITERATIONS && start.elapsed() < TIME {
        let base = &seeds[rng.usize(..seeds.len())];
        check(&mutate(&mut rng, base, &seeds));
        done += 1;
    }
    eprintln!("{target}: {done} mutated inputs in {:?}", start.elapsed());
}

#[test]
fn request_head_target() {
    let target = HeadTarget::new();
    let regressions: &[&[u8]] = &[
        b"",
        b"\x01",
        b"\x01GET *\nhost:a",
        b"\x01GET foo\nhost:a",
        b"\x02GET http://u@a/\nhost:b",
        b"\x01GET /\nhost:[",
        b"\x01GET /\nhost:[::1]:",
        b"\x01GET /\ntransfer-encoding:,\nconnection:,,,",
        b"\x01GET /\ntraceparent:00-00000000000000000000000000000000-0000000000000000-00",
        b"\x01GET /\ngrpc-timeout:99999999H",
        b"\x01GET /\nx-request-timeout:18446744073709551616",
    ];
    smoke("request_head", regressions, |data| {
        target.run(data);
    });
}

#[test]
fn config_target() {
    let regressions: &[&[u8]] = &[b"", b"\xff", b"routes: [", b"&a [*a]", b"listeners: ~"];
    smoke("config", regressions, |data| {
        fuzzing::config(data);
    });
}
