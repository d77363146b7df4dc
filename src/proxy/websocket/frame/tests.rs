use super::*;

/// A frame as a peer would send it: FIN set, `opcode`, `len` payload bytes,
/// masked when `masked`.
fn frame(opcode: u8, fin: bool, len: usize, masked: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match len {
        0..=125 => f.push(mask_bit | len as u8),
        126..=0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&[1, 2, 3, 4]);
    }
    // Payload bytes that look like headers, to catch a tracker that peeks.
    f.extend(std::iter::repeat_n(0x88, len));
    f
}

#[test]
fn follows_every_length_encoding_masked_or_not() {
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        for masked in [false, true] {
            let f = frame(0x2, true, len, masked);
            let mut t = FrameTracker::new();
            t.advance(&f[..f.len() - 1]).unwrap();
            if f.len() > 1 {
                assert!(!t.at_boundary(), "len {len} masked {masked}: ended early");
            }
            t.advance(&f[f.len() - 1..]).unwrap();
            assert!(t.at_boundary(), "len {len} masked {masked}: not at the end");
            assert!(!t.close_seen());
        }
    }
}

#[test]
fn one_byte_at_a_time_finds_the_same_boundaries() {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for (op, len) in [(0x1, 5), (0x9, 0), (0x2, 300), (0xA, 3), (0x2, 70_000)] {
        stream.extend(frame(op, true, len, true));
        ends.push(stream.len());
    }
    let mut t = FrameTracker::new();
    let mut seen = Vec::new();
    for (i, b) in stream.iter().enumerate() {
        t.advance(std::slice::from_ref(b)).unwrap();
        if t.at_boundary() {
            seen.push(i + 1);
        }
    }
    assert_eq!(seen, ends);
}

#[test]
fn stops_at_the_end_of_the_current_frame() {
    let first = frame(0x1, true, 10, false);
    let second = frame(0x1, true, 4, false);
    let stream = [first.clone(), second].concat();
    let mut t = FrameTracker::new();
    t.advance(&stream[..3]).unwrap();
    let n = t.advance_to_boundary(&stream[3..]).unwrap();
    assert_eq!(3 + n, first.len());
    assert!(t.at_boundary());
    // At a boundary nothing more is taken.
    assert_eq!(t.advance_to_boundary(&stream[first.len()..]).unwrap(), 0);
}

#[test]
fn a_header_split_across_reads_is_completed_before_stopping() {
    let f = frame(0x2, true, 200, true);
    let mut t = FrameTracker::new();
    t.advance(&f[..3]).unwrap();
    assert_eq!(t.advance_to_boundary(&f[3..5]).unwrap(), 2);
    assert!(!t.at_boundary());
    assert_eq!(t.advance_to_boundary(&f[5..]).unwrap(), f.len() - 5);
    assert!(t.at_boundary());
}

#[test]
fn an_empty_frame_ends_with_its_header() {
    let stream = [frame(0x9, true, 0, true), frame(0x1, true, 2, true)].concat();
    let mut t = FrameTracker::new();
    t.advance(&stream[..1]).unwrap();
    assert_eq!(t.advance_to_boundary(&stream[1..]).unwrap(), 5);
    assert!(t.at_boundary());
}

#[test]
fn fragments_and_interleaved_control_frames_are_separate_frames() {
    let parts = [
        frame(0x1, false, 100, true),
        frame(0x9, true, 4, true),
        frame(0x0, false, 100, true),
        frame(0x0, true, 1, true),
    ];
    let mut t = FrameTracker::new();
    for p in &parts {
        assert!(t.at_boundary());
        t.advance(p).unwrap();
    }
    assert!(t.at_boundary());
    assert!(!t.close_seen());
}

#[test]
fn notices_a_close_frame_header() {
    let close = close_frame(1000, "bye", Some([9, 8, 7, 6]));
    let mut t = FrameTracker::new();
    t.advance(&frame(0x1, true, 3, true)).unwrap();
    assert!(!t.close_seen());
    // The header of a masked frame: 2 bytes and the key.
    t.advance(&close[..5]).unwrap();
    assert!(!t.close_seen());
    t.advance(&close[5..6]).unwrap();
    assert!(t.close_seen());
    t.advance(&close[6..]).unwrap();
    assert!(t.at_boundary());
}

#[test]
fn a_length_with_the_top_bit_set_breaks_tracking() {
    let mut f = vec![0x82, 127];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    let mut t = FrameTracker::new();
    assert_eq!(t.advance(&f), Err(FrameError));
    assert_eq!(t.advance(&[0x81, 0]), Err(FrameError));
}

#[test]
fn close_frames_are_masked_only_towards_a_server() {
    let to_client = close_frame(GOING_AWAY, "shutting down", None);
    assert_eq!(to_client[0], 0x88);
    assert_eq!(to_client[1] as usize, 2 + "shutting down".len());
    assert_eq!(&to_client[2..4], &GOING_AWAY.to_be_bytes());
    assert_eq!(&to_client[4..], b"shutting down");

    let key = [0xA1, 0xB2, 0xC3, 0xD4];
    let to_server = close_frame(GOING_AWAY, "shutting down", Some(key));
    assert_eq!(to_server[0], 0x88);
    assert_eq!(to_server[1], 0x80 | to_client[1]);
    assert_eq!(&to_server[2..6], &key);
    let unmasked: Vec<u8> = to_server[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(unmasked, &to_client[2..]);
}

#[test]
fn a_long_reason_is_cut_to_fit_a_control_frame_on_a_char_boundary() {
    let reason = "é".repeat(100);
    let f = close_frame(GOING_AWAY, &reason, None);
    let len = f[1] as usize;
    assert!(len <= 125);
    assert!(std::str::from_utf8(&f[4..]).is_ok());
    let mut t = FrameTracker::new();
    t.advance(&f).unwrap();
    assert!(t.at_boundary() && t.close_seen());
}
