//! `recvmmsg(2)` / `sendmmsg(2)` over one preallocated batch of datagram buffers, and the
//! socket options the kernel echo server sets. All of the crate's socket `unsafe` is here.
//!
//! The batch owns its buffers, `iovec`s, source addresses and `mmsghdr`s in heap `Vec`s that
//! are sized once and never grow, so the raw pointers between them (set up once in
//! [`Batch::new`]) stay valid when the `Batch` itself moves. Echoing is done in place: the
//! received `msg_name` becomes the destination and `iov_len` is cut to the received length
//! for the send, then restored.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

/// Largest datagram the batch takes (an Ethernet MTU's worth).
const BUF_LEN: usize = 2048;

/// A batch of datagram slots for recvmmsg/sendmmsg.
pub struct Batch {
    bufs: Vec<[u8; BUF_LEN]>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point only into this struct's own heap
// buffers; moving the struct to another thread moves the ownership of all of them together.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch of `n` slots (n >= 1).
    pub fn new(n: usize) -> Batch {
        let n = n.max(1);
        let mut b = Batch {
            bufs: vec![[0u8; BUF_LEN]; n],
            iovs: Vec::with_capacity(n),
            // SAFETY: sockaddr_storage is plain integers; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { mem::zeroed() }; n],
            hdrs: Vec::with_capacity(n),
        };
        for i in 0..n {
            b.iovs.push(libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            });
        }
        for i in 0..n {
            // SAFETY: mmsghdr is plain integers and pointers; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = ptr::from_mut(&mut b.addrs[i]).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = ptr::from_mut(&mut b.iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }

    /// Slots in the batch.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.hdrs.len()
    }

    /// `recvmmsg(fd, .., MSG_WAITFORONE)`: blocks (up to the socket's SO_RCVTIMEO) for the
    /// first datagram, then takes what is queued, up to the batch size. Returns the count;
    /// `WouldBlock`/`TimedOut` when the timeout passed with nothing.
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_len = 0;
        }
        // SAFETY: every header points at its own iovec (BUF_LEN writable bytes) and
        // sockaddr_storage, all owned by `self` and alive for the call; `vlen` is the number
        // of headers; the timeout pointer is NULL (SO_RCVTIMEO bounds the wait).
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The payload of slot `i` after [`Batch::recv`].
    #[cfg(test)]
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.bufs[i][..(self.hdrs[i].msg_len as usize).min(BUF_LEN)]
    }

    /// Sends the first `n` received datagrams back to their sources (`sendmmsg`), retrying
    /// once for the ones a partial send left. Returns how many went out.
    pub fn echo(&mut self, fd: BorrowedFd<'_>, n: usize) -> io::Result<usize> {
        let n = n.min(self.hdrs.len());
        for i in 0..n {
            self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        let mut sent = 0;
        let mut result = Ok(());
        for _ in 0..2 {
            if sent == n {
                break;
            }
            // SAFETY: headers `sent..n` point at their iovecs (cut to the received length,
            // within the buffers) and at the source addresses recvmmsg filled in (with
            // `msg_namelen` set by it), all owned by `self` and alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(sent),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
            sent += rc as usize;
        }
        for iov in &mut self.iovs[..n] {
            iov.iov_len = BUF_LEN;
        }
        match result {
            Err(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}

/// Sets SO_RCVBUFFORCE (root; beyond net.core.rmem_max) or, failing that, SO_RCVBUF.
pub fn set_rcvbuf(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `v` is a readable c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                ptr::from_ref(&v).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// Loopback round trip through recvmmsg + sendmmsg, unprivileged.
    #[test]
    fn batch_echoes_datagrams_back_to_their_sources() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        for i in 0..3u8 {
            client.send(&[i; 5]).unwrap();
        }
        let mut batch = Batch::new(8);
        let mut got = 0;
        while got < 3 {
            let n = batch.recv(server.as_fd()).unwrap();
            for i in 0..n {
                assert_eq!(batch.payload(i).len(), 5);
            }
            assert_eq!(batch.echo(server.as_fd(), n).unwrap(), n);
            got += n;
        }
        let mut buf = [0u8; 16];
        let mut seen = Vec::new();
        for _ in 0..3 {
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(n, 5);
            seen.push(buf[0]);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(batch.len(), 8);
    }
}
