//! Passing file descriptors over Unix-domain sockets: `sendmsg`/`recvmsg` with `SCM_RIGHTS`
//! (std's `*_with_ancillary` is unstable). The public methods are `UnixStream::{send_fds,
//! recv_fds}` and `UnixDatagram::{send_fds, recv_fds}`; these are the single attempts their
//! retry loops make.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The kernel's limit on descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Room for a control message of `n` descriptors, as `u64`s so that it is aligned for
/// `cmsghdr`.
fn control_buf(n: usize) -> Vec<u64> {
    // `n <= MAX_FDS`, so the byte count fits a `u32`.
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) } as usize;
    vec![0u64; bytes.div_ceil(size_of::<u64>())]
}

/// One `sendmsg(MSG_NOSIGNAL)` of `buf` with `fds` in an `SCM_RIGHTS` message (none when
/// `fds` is empty).
pub(crate) fn send_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message (at most 253)",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = control_buf(fds.len());
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = (control.len() * size_of::<u64>()) as _;
        // SAFETY: `msg_control` points at `msg_controllen` bytes, aligned for cmsghdr and large
        // enough (CMSG_SPACE) for one header and `fds.len()` descriptors, so CMSG_FIRSTHDR is
        // non-null and its header and CMSG_DATA's `fds.len()` descriptors lie inside `control`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points at `iov` (valid for reads of `buf.len()` bytes) and `control`,
    // which all outlive the call; `sock` is a borrowed descriptor.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `recvmsg(MSG_CMSG_CLOEXEC)` into `buf`, appending the descriptors that came with the
/// data to `fds` (room for at most `max_fds`). A truncated control message (`MSG_CTRUNC`:
/// more descriptors than room, or the process out of descriptors) closes every descriptor that
/// did arrive, appends none, and is an error.
pub(crate) fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = control_buf(max_fds.min(MAX_FDS));
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * size_of::<u64>()) as _;
    // SAFETY: `msg` points at `iov` (valid for writes of `buf.len()` bytes) and `control`
    // (valid for writes of `msg_controllen` bytes), which all outlive the call; `sock` is a
    // borrowed descriptor.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = Vec::new();
    // SAFETY: after a successful recvmsg, `msg`'s control fields describe the headers the
    // kernel wrote into `control`, and CMSG_FIRSTHDR/CMSG_NXTHDR stay inside them (returning
    // null at the end). Each SCM_RIGHTS message's data holds
    // `(cmsg_len - CMSG_LEN(0)) / size_of::<RawFd>()` descriptors that the kernel has just
    // installed in this process and that nothing else owns: each becomes an `OwnedFd` once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..len / size_of::<RawFd>() {
                    got.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Dropping `got` closes what arrived.
        drop(got);
        return Err(io::Error::other(
            "file descriptors were lost (MSG_CTRUNC: too many for one receive, or none free)",
        ));
    }
    fds.append(&mut got);
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut p = [0; 2];
        // SAFETY: `p` has room for the two descriptors pipe2 writes.
        let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0);
        // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
    }

    /// A control message truncated by too little room (`MSG_CTRUNC`) is an error and leaks
    /// nothing: the descriptor that arrived is closed, so once the sender closes its own copy of
    /// the pipe's write end, the read end sees EOF at once (a leaked copy would keep it open).
    #[test]
    fn truncated_control_message_closes_what_arrived() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = pipe();
        // Three copies: room for one descriptor is, after alignment, room for two.
        let copies = [w.try_clone().unwrap(), w.try_clone().unwrap(), w];
        let borrowed: Vec<_> = copies.iter().map(|c| c.as_fd()).collect();
        assert_eq!(send_fds(a.as_fd(), b"x", &borrowed).unwrap(), 1);
        drop(borrowed);
        drop(copies);
        let mut fds = Vec::new();
        let e = recv_fds(b.as_fd(), &mut [0u8; 4], &mut fds, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(fds.is_empty());
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is valid for a 1-byte write; `r` is open.
        let n = unsafe { libc::read(r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "a write end leaked: {}", io::Error::last_os_error());
    }

    /// More than `SCM_MAX_FD` descriptors is `InvalidInput`, not a panic or a kernel EINVAL.
    #[test]
    fn too_many_fds_is_invalid_input() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fds = vec![a.as_fd(); MAX_FDS + 1];
        let e = send_fds(a.as_fd(), b"x", &fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
