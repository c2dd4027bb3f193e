//! The handoff's framing: `u32` BE length, `u8` kind, body; descriptors ride
//! along in SCM_RIGHTS and are kept in arrival order.

use super::*;

/// A framed stream; its reads keep every descriptor that came with them.
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
    pub(super) fds: VecDeque<OwnedFd>,
    pub(super) gone: fn(&'static str) -> UpgradeError,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, gone: fn(&'static str) -> UpgradeError) -> Conn {
        let (buf, fds) = (Vec::new(), VecDeque::new());
        Conn {
            stream,
            buf,
            fds,
            gone,
        }
    }

    pub(super) fn failed(&self, e: io::Error, stage: &'static str) -> UpgradeError {
        use io::ErrorKind::*;
        match e.kind() {
            BrokenPipe | ConnectionReset | UnexpectedEof => (self.gone)(stage),
            InvalidData => protocol(stage, e.to_string()),
            _ => io_err(format!("upgrade rendezvous, {stage}"))(e),
        }
    }

    pub(super) async fn send(
        &self,
        kind: u8,
        body: &[u8],
        fds: &[RawFd],
        stage: &'static str,
    ) -> Result<(), UpgradeError> {
        let frame = [&(body.len() as u32 + 1).to_be_bytes()[..], &[kind], body].concat();
        let (raw, flags) = (self.stream.as_raw_fd(), MsgFlags::MSG_NOSIGNAL);
        let mut sent = 0;
        while sent < frame.len() {
            // The descriptors travel with the first byte that leaves.
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs = if sent == 0 && !fds.is_empty() {
                &rights[..]
            } else {
                &[]
            };
            let rest = [IoSlice::new(&frame[sent..])];
            let send = || Ok(sock::sendmsg::<()>(raw, &rest, cmsgs, flags, None)?);
            let n = self.stream.async_io(Interest::WRITABLE, send).await;
            sent += n.map_err(|e| self.failed(e, stage))?;
        }
        Ok(())
    }

    /// The next frame as (kind, body); `None` at a clean end of stream.
    pub(super) async fn recv(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some(head) = self.buf.first_chunk::<4>() {
                let len = u32::from_be_bytes(*head) as usize;
                if len == 0 || len > MAX_FRAME {
                    let e = format!("a frame of {len} bytes");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if self.buf.len() >= 4 + len {
                    let mut frame = self.buf.drain(..4 + len).skip(4);
                    return Ok(Some((frame.next().unwrap_or(0), frame.collect())));
                }
            }
            let (mut chunk, mut space) = ([0u8; 4096], nix::cmsg_space!([RawFd; SCM_MAX_FD]));
            let (raw, flags) = (self.stream.as_raw_fd(), MsgFlags::MSG_CMSG_CLOEXEC);
            let read = || {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = sock::recvmsg::<()>(raw, &mut iov, Some(&mut space), flags)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: SCM_RIGHTS just installed these descriptors in our
                        // table for this message; nothing else knows or owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                Ok((msg.bytes, fds))
            };
            let (n, fds) = self.stream.async_io(Interest::READABLE, read).await?;
            self.fds.extend(fds);
            match (n, self.buf.is_empty()) {
                (0, true) => return Ok(None),
                (0, false) => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, which must be of `kind` (`stage` names it in errors).
    pub(super) async fn expect(
        &mut self,
        kind: u8,
        stage: &'static str,
    ) -> Result<Vec<u8>, UpgradeError> {
        match self.recv().await {
            Ok(Some((k, body))) if k == kind => Ok(body),
            Ok(Some((REFUSED, why))) => Err(UpgradeError::PeerRefused(
                String::from_utf8_lossy(&why).into(),
            )),
            Ok(Some((k, _))) => Err(protocol(stage, format!("a frame of kind {k}"))),
            Ok(None) => Err((self.gone)(stage)),
            Err(e) => Err(self.failed(e, stage)),
        }
    }
}
