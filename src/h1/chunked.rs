//! Where a chunked body (RFC 9112 7.1) ends, found while its bytes pass
//! through untouched: tether relays the chunked framing as the peer wrote
//! it and only needs to know where the message stops. Chunk-size lines,
//! extensions and trailers are bounded, so a peer cannot make tether buffer
//! or scan without end; a trailer line must be a field line (`name:`), so
//! the peer behind tether never gets one its parser may read otherwise.

/// Longest chunk-size in hex digits (a 64-bit length).
const MAX_SIZE_DIGITS: u8 = 16;
/// Longest chunk extension (`;name=value...`) tether passes.
pub const MAX_EXTENSION: u32 = 4096;
/// Longest trailer section.
pub const MAX_TRAILERS: u32 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("chunk extension too long")]
    Extension,
    #[error("missing CRLF after chunk data")]
    DataEnd,
    #[error("malformed line ending in chunked framing")]
    LineEnding,
    #[error("trailer section too long")]
    Trailers,
    #[error("trailer line is not a field line")]
    TrailerLine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size,
    /// Whitespace or `;` extensions after the size, until CR.
    Ext,
    /// LF after the size line's CR.
    SizeLf,
    /// Chunk data still to pass.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line's field name.
    TrailerName,
    /// Inside a trailer line's value.
    Trailer,
    /// LF of a trailer line.
    TrailerLf,
    /// LF of the final empty line.
    LastLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    ext: u32,
    trailers: u32,
    /// Payload bytes (chunk data) seen, for accounting.
    pub payload: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            ext: 0,
            trailers: 0,
            payload: 0,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Account for the next bytes of the body. `Ok(Some(k))`: the body ends
    /// after the first `k` bytes of `data` (the rest belongs to what follows
    /// it); `Ok(None)`: all of `data` is body and more is to come.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ChunkError> {
        self.feed_with(data, |_| {})
    }

    /// [`Self::feed`], handing every piece of chunk data to `payload` (to
    /// relay a body without its chunked framing).
    pub fn feed_with(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Done {
                return Ok(Some(i));
            }
            if self.state == State::Data {
                let take = self.size.min((data.len() - i) as u64);
                payload(&data[i..i + take as usize]);
                self.size -= take;
                self.payload += take;
                i += take as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.byte(data[i])?;
            i += 1;
        }
        Ok(self.is_done().then_some(i))
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        self.state = match self.state {
            Size => match (hex(b), b) {
                (Some(v), _) => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(ChunkError::SizeTooLarge);
                    }
                    self.size = self.size << 4 | u64::from(v);
                    self.digits += 1;
                    Size
                }
                _ if self.digits == 0 => return Err(ChunkError::Size),
                (None, b'\r') => SizeLf,
                (None, b';' | b' ' | b'\t') => {
                    self.ext = 1;
                    Ext
                }
                _ => return Err(ChunkError::Size),
            },
            Ext => match b {
                b'\r' => SizeLf,
                b'\n' => return Err(ChunkError::LineEnding),
                _ => {
                    self.ext += 1;
                    if self.ext > MAX_EXTENSION {
                        return Err(ChunkError::Extension);
                    }
                    Ext
                }
            },
            SizeLf => match b {
                b'\n' if self.size == 0 => TrailerStart,
                b'\n' => {
                    self.digits = 0;
                    self.ext = 0;
                    Data
                }
                _ => return Err(ChunkError::LineEnding),
            },
            DataCr => match b {
                b'\r' => DataLf,
                _ => return Err(ChunkError::DataEnd),
            },
            DataLf => match b {
                b'\n' => {
                    self.size = 0;
                    Size
                }
                _ => return Err(ChunkError::DataEnd),
            },
            TrailerStart => match b {
                b'\r' => LastLf,
                b'\n' => return Err(ChunkError::LineEnding),
                _ if is_tchar(b) => {
                    self.count_trailer()?;
                    TrailerName
                }
                _ => return Err(ChunkError::TrailerLine),
            },
            TrailerName => {
                self.count_trailer()?;
                match b {
                    b':' => Trailer,
                    _ if is_tchar(b) => TrailerName,
                    _ => return Err(ChunkError::TrailerLine),
                }
            }
            Trailer => match b {
                b'\r' => TrailerLf,
                b'\n' => return Err(ChunkError::LineEnding),
                _ => {
                    self.count_trailer()?;
                    Trailer
                }
            },
            TrailerLf | LastLf => match (self.state, b) {
                (TrailerLf, b'\n') => TrailerStart,
                (_, b'\n') => Done,
                _ => return Err(ChunkError::LineEnding),
            },
            Data | Done => self.state,
        };
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::Trailers);
        }
        Ok(())
    }
}

/// RFC 9110 5.6.2 token characters (field names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        Chunked::default().feed(body)
    }

    #[test]
    fn finds_the_end_at_every_split() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(end_of(body), Ok(Some(end)));
        for split in 1..body.len() {
            let mut c = Chunked::default();
            let first = c.feed(&body[..split]).unwrap();
            let got = match first {
                Some(k) => k,
                None => split + c.feed(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(got, end, "split {split}");
        }
    }

    #[test]
    fn rejects_malformed_framing() {
        assert_eq!(end_of(b"x\r\n"), Err(ChunkError::Size));
        assert_eq!(end_of(b"5\nhello"), Err(ChunkError::Size));
        assert_eq!(end_of(b"5\r\nhelloX"), Err(ChunkError::DataEnd));
        assert_eq!(end_of(b"0\r\n\n"), Err(ChunkError::LineEnding));
        assert_eq!(
            end_of(b"11111111111111111\r\n"),
            Err(ChunkError::SizeTooLarge)
        );
        let long = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        assert_eq!(end_of(&long), Err(ChunkError::Extension));
        assert_eq!(end_of(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [
            &b"0\r\n0\r\n\r\n"[..],
            b"0\r\n: x\r\n\r\n",
            b"0\r\nX : 1\r\n\r\n",
            b"0\r\n x: 1\r\n\r\n",
        ] {
            assert_eq!(end_of(bad), Err(ChunkError::TrailerLine), "{bad:?}");
        }
        assert_eq!(end_of(b"0\r\nX-A:1\r\nB: \r\n\r\n"), Ok(Some(17)));
    }
}
