//! Just enough WebSocket framing (RFC 6455 5.2) to know where frames begin
//! and end in a byte stream, so tether can put its own close frame between
//! two frames and never after a close frame of either side. Payloads are
//! skipped, never copied or unmasked; nothing is validated (a frame tether
//! does not understand still passes untouched: the endpoints judge it).

#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    saw_close: bool,
}

impl FrameTracker {
    /// Account for `data`, the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            i += self.step(&data[i..]);
        }
    }

    /// Account for bytes of `data` up to the end of the current frame.
    /// `Some(k)`: the first `k` bytes finish it (0 when already between
    /// frames); `None`: all of `data` belongs to the frame, which goes on.
    pub fn boundary_in(&mut self, data: &[u8]) -> Option<usize> {
        if self.at_boundary() {
            return Some(0);
        }
        let mut i = 0;
        while i < data.len() {
            i += self.step(&data[i..]);
            if self.at_boundary() {
                return Some(i);
            }
        }
        None
    }

    /// Consume the start of `data` (never empty): payload bytes of the
    /// current frame, or one header byte. Returns how many were consumed.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.remaining > 0 {
            let take = self.remaining.min(data.len() as u64);
            self.remaining -= take;
            return take as usize;
        }
        self.hdr[self.hdr_len] = data[0];
        self.hdr_len += 1;
        if self.hdr_len < 2 {
            return 1;
        }
        let len7 = self.hdr[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        if self.hdr_len < 2 + ext + mask {
            return 1;
        }
        self.remaining = match ext {
            2 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.hdr[2..10]);
                u64::from_be_bytes(b)
            }
            _ => u64::from(len7),
        };
        if self.hdr[0] & 0x0f == 0x8 {
            self.saw_close = true;
        }
        self.hdr_len = 0;
        1
    }

    /// Between two frames: a frame of ours would not corrupt the stream.
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }

    /// A close frame went by: nothing of tether's may follow it.
    pub fn saw_close(&self) -> bool {
        self.saw_close
    }
}

/// A server-to-client close frame (unmasked) with `code` and no reason.
pub fn close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame, with a masking key when `masked` (payload left as is: the
    /// tracker never looks at it).
    fn masked_frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = frame(opcode, len);
        if masked {
            f[1] |= 0x80;
            let at = f.len() - len;
            f.splice(at..at, [1, 2, 3, 4]);
        }
        f
    }

    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(len as u8),
            126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn boundaries_across_arbitrary_splits() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(0x1, len));
        }
        for split in [1, 2, 3, 7, 100, 4096] {
            let mut t = FrameTracker::default();
            for chunk in stream.chunks(split) {
                t.feed(chunk);
            }
            assert!(t.at_boundary() && !t.saw_close(), "split {split}");
        }
        let mut t = FrameTracker::default();
        t.feed(&stream[..stream.len() - 1]);
        assert!(!t.at_boundary(), "one byte short of the last frame");
    }

    #[test]
    fn masked_frames_and_close() {
        let mut t = FrameTracker::default();
        t.feed(&[0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert!(t.at_boundary() && !t.saw_close());
        t.feed(&frame(0x8, 2));
        assert!(t.at_boundary() && t.saw_close());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]
        /// Any bytes (frames or not), cut anywhere: the tracker ends in the
        /// same state, and finds the same boundaries, as when fed at once.
        #[test]
        fn same_boundaries_at_every_split(
            frames in proptest::collection::vec((0u8..16, 0usize..300, proptest::bool::ANY), 0..20),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..50),
            cuts in proptest::collection::vec(1usize..200, 1..30),
        ) {
            let mut stream = Vec::new();
            for (op, len, masked) in frames {
                stream.extend(masked_frame(op, len, masked));
            }
            stream.extend(junk);
            let mut whole = FrameTracker::default();
            let ends = boundaries(&mut whole, &[&stream]);
            let mut pieces = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                pieces.push(&stream[at..at + n]);
                at += n;
                i += 1;
            }
            let mut split = FrameTracker::default();
            proptest::prop_assert_eq!(boundaries(&mut split, &pieces), ends);
            proptest::prop_assert_eq!(split.at_boundary(), whole.at_boundary());
            proptest::prop_assert_eq!(split.saw_close(), whole.saw_close());
        }
    }

    /// Every offset at which a frame ends, feeding `pieces` in order.
    fn boundaries(t: &mut FrameTracker, pieces: &[&[u8]]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut base = 0;
        for p in pieces {
            let mut at = 0;
            while at < p.len() {
                if t.at_boundary() {
                    // step past the boundary so the next frame's end is found
                    t.feed(&p[at..at + 1]);
                    at += 1;
                    if t.at_boundary() {
                        out.push(base + at);
                    }
                    continue;
                }
                match t.boundary_in(&p[at..]) {
                    Some(k) => {
                        at += k;
                        out.push(base + at);
                    }
                    None => at = p.len(),
                }
            }
            base += p.len();
        }
        out
    }

    #[test]
    fn boundary_in_stops_at_the_end_of_the_frame_in_flight() {
        let mut t = FrameTracker::default();
        let first = frame(0x2, 300);
        let mut stream = first.clone();
        stream.extend(frame(0x1, 10));
        t.feed(&stream[..50]);
        assert_eq!(t.boundary_in(&stream[50..]), Some(first.len() - 50));
        assert_eq!(t.boundary_in(&stream[first.len()..]), Some(0));
        // a header split over two reads
        let mut t = FrameTracker::default();
        let big = frame(0x2, 70_000);
        t.feed(&big[..1]);
        assert_eq!(t.boundary_in(&big[1..5]), None);
        assert_eq!(t.boundary_in(&big[5..]), Some(big.len() - 5));
        // an empty frame ends with its header
        let mut t = FrameTracker::default();
        t.feed(&[0x89]);
        assert_eq!(t.boundary_in(&[0x00, 0x81]), Some(1));
    }
}
