//! Notices subscribers whose client closed or reset its connection at once,
//! rather than at their next heartbeat: one epoll set over every stream
//! socket, watched by one thread. Never reads from or writes to a socket.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The epoll set of open streams.
pub struct Hangups {
    epoll: OwnedFd,
}

impl Hangups {
    pub fn new() -> io::Result<Hangups> {
        // SAFETY: epoll_create1 returns a new fd we own, or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor nobody else owns.
        Ok(Hangups {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Reports `key` once when the peer of `stream` closes its side or the
    /// connection fails. The kernel forgets the socket when it is closed.
    /// A failure here only means the heartbeat notices the hang-up instead.
    pub fn watch(&self, stream: &TcpStream, key: u64) {
        let mut ev = libc::epoll_event {
            // HUP and ERR are always reported; ONESHOT so a level-triggered
            // hang-up is reported once, not until the stream thread closes.
            events: (libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: key,
        };
        // SAFETY: both fds are valid for the duration of the call and `ev`
        // is a struct we own.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                &mut ev,
            )
        };
        if rc != 0 {
            log::debug!("epoll_ctl: {}", io::Error::last_os_error());
        }
    }

    /// Calls `hang_up(key)` for every watched stream whose peer went away;
    /// runs for the life of the process.
    pub fn run(&self, hang_up: impl Fn(u64)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` is a buffer of 64 entries we own.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("epoll_wait: {e}; hang-ups are noticed by heartbeats only");
                    return;
                }
                continue;
            }
            for ev in &events[..n as usize] {
                let key = ev.u64;
                hang_up(key);
            }
        }
    }
}
