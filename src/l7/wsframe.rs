//! Just enough WebSocket framing to know where frames begin and end in the
//! backend-to-client byte stream, so tether can add its own close frame
//! (1012 when a backend goes, 1001 on shutdown) without cutting a frame in
//! two, and never after the backend's own close frame. Payloads are skipped,
//! never copied or unmasked.

#[derive(Debug, Default)]
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
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - i) as u64);
                self.remaining -= take;
                i += take as usize;
                continue;
            }
            self.hdr[self.hdr_len] = data[i];
            self.hdr_len += 1;
            i += 1;
            if self.hdr_len < 2 {
                continue;
            }
            let len7 = self.hdr[1] & 0x7f;
            let masked = self.hdr[1] & 0x80 != 0;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let total = 2 + ext + if masked { 4 } else { 0 };
            if self.hdr_len < total {
                continue;
            }
            let len = match ext {
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
            self.remaining = len;
            self.hdr_len = 0;
        }
    }

    /// Between two frames: a frame of ours would not corrupt the stream.
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }

    /// The backend already sent its close frame: nothing more may follow.
    pub fn saw_close(&self) -> bool {
        self.saw_close
    }

    /// May tether send its own close frame now?
    pub fn may_close(&self) -> bool {
        self.at_boundary() && !self.saw_close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(t.may_close(), "split {split}");
        }
        let mut t = FrameTracker::default();
        t.feed(&stream[..stream.len() - 1]);
        assert!(!t.at_boundary(), "one byte short of the last frame");
    }

    #[test]
    fn masked_frames_and_close() {
        let mut t = FrameTracker::default();
        t.feed(&[0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert!(t.may_close());
        t.feed(&frame(0x8, 2));
        assert!(t.at_boundary() && t.saw_close() && !t.may_close());
    }
}
