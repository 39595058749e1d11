//! The guardian: a small process that owns the uprobe_multi links, so that
//! they are always released by a live, single-threaded task, whatever
//! happens to alloctrace.
//!
//! Why: closing a uprobe link takes the breakpoints out of every process
//! that has them, which writes into their memory, which the kernel refuses
//! to do from a task with a `SIGKILL` pending (`-EINTR`). It then gives up
//! on the probe for good: dmesg says `uprobe: alloctrace:PID failed to
//! unregister, leaking uprobe`, and until the probed file is gone (a reboot,
//! for libc) another tool that wants a probe at the same place with a USDT
//! semaphore is refused (`ref_ctr_offset mismatch`). Killing alloctrace,
//! whose threads exit one by one with that `SIGKILL` pending, did this in 5
//! of 12 runs here that sent `SIGKILL` within half a second of `SIGINT`.
//!
//! So alloctrace never holds a link itself: it passes the program and the
//! probed file (as descriptors, over a `SOCK_SEQPACKET` socket pair) to the
//! guardian, which creates the link and keeps it: a uprobe_multi link, or
//! on kernels without them a perf-event uprobe (`super::perf_link`), which
//! a dying task fails to remove the same way. Detaching asks it to
//! close them and waits for its answer; if alloctrace dies instead, at any
//! moment, the guardian reads end-of-file and closes them itself. The
//! guardian is alloctrace's own executable run with [`COMMAND`], in its own
//! process group (a terminal's Ctrl-C or a `kill` of alloctrace's group
//! does not reach it), ignoring the signals that stop a tracer. Even a
//! `SIGKILL` of the guardian releases cleanly: its one thread takes the
//! signal off its pending set before it exits.

use std::{
    fs::File,
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

use super::{
    multi::{LinkTarget, create_link},
    perf_link::create_perf_link,
};

/// The hidden first argument that makes `alloctrace` a guardian, serving
/// the socket on its standard input.
pub const COMMAND: &str = "guardian-of-uprobe-links";

/// Request kinds (the first byte of a request).
const LINK: u8 = 1;
const RELEASE: u8 = 2;

/// A link request: kind, return probe flag, [`LinkKind`], 1 byte of
/// padding, pid, offset; the program and the file come as descriptors.
const LINK_REQUEST_LEN: usize = 16;

/// How the guardian attaches a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A uprobe_multi link (the program loaded for one, `super::multi`).
    UprobeMulti = 0,
    /// A perf-event uprobe (the program as aya loads it).
    PerfEvent = 1,
}

/// The guardian, seen from alloctrace.
pub struct Guardian {
    /// `None` once closed, in `drop`.
    socket: Option<OwnedFd>,
    child: Child,
}

impl Guardian {
    /// Starts the guardian.
    pub fn start() -> anyhow::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("creating the guardian's socket")?;
        let child = Command::new("/proc/self/exe")
            .arg(COMMAND)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the guardian process")?;
        Ok(Self {
            socket: Some(ours),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the guardian attach `program` at `target` (a `kind` link), and
    /// keep it until [`Guardian::release`] or alloctrace's end.
    pub fn link(
        &self,
        program: BorrowedFd<'_>,
        target: &LinkTarget<'_>,
        kind: LinkKind,
    ) -> io::Result<()> {
        let file = File::open(target.file)?;
        let mut request = [0u8; LINK_REQUEST_LEN];
        request[0] = LINK;
        request[1] = u8::from(target.returns);
        request[2] = kind as u8;
        request[4..8].copy_from_slice(&target.pid.to_ne_bytes());
        request[8..16].copy_from_slice(&target.offset.to_ne_bytes());
        let fds = [program, file.as_fd()];
        self.call(&request, &fds)
    }

    /// Has the guardian close every link (removing the probes), and waits
    /// until it has.
    pub fn release(&self) -> io::Result<()> {
        self.call(&[RELEASE], &[])
    }

    /// Sends one request and returns the guardian's answer (0 or an errno).
    fn call(&self, request: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let socket = self.socket.as_ref().expect("open until dropped");
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        sendmsg(
            socket,
            &[IoSlice::new(request)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        let mut answer = [0u8; 4];
        let mut none = RecvAncillaryBuffer::default();
        let received = recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut answer)],
            &mut none,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if received.bytes != answer.len() {
            return Err(io::Error::other("the guardian process is gone"));
        }
        match i32::from_ne_bytes(answer) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Closing our end makes it release whatever it still holds and exit.
        self.socket = None;
        let _ = self.child.wait();
    }
}

/// The guardian's life: serves alloctrace on `socket` until it closes its
/// end (or dies), then closes every link it holds.
pub fn serve(socket: OwnedFd) {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: setting a signal's disposition to "ignore" runs no code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let mut links: Vec<OwnedFd> = Vec::new();
    // Any failure to read a request or to answer it means alloctrace is
    // gone: the links are closed when `links` is dropped, on return.
    while let Some((request, fds)) = next_request(&socket) {
        let answer = match (request[0], fds.as_slice()) {
            (LINK, [program, file]) => {
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let target = LinkTarget {
                    file: Path::new(&path),
                    offset: u64::from_ne_bytes(request[8..16].try_into().expect("8 bytes")),
                    pid: u32::from_ne_bytes(request[4..8].try_into().expect("4 bytes")),
                    returns: request[1] != 0,
                };
                let created = if request[2] == LinkKind::PerfEvent as u8 {
                    create_perf_link(program.as_fd(), &target)
                } else {
                    create_link(program.as_fd(), &target)
                };
                match created {
                    Ok(link) => {
                        links.push(link);
                        0
                    }
                    Err(error) => error.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            (RELEASE, []) => {
                links.clear();
                0
            }
            _ => libc::EPROTO,
        };
        drop(fds);
        let answered = sendmsg(
            &socket,
            &[IoSlice::new(&answer.to_ne_bytes())],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        );
        if answered.is_err() {
            break;
        }
    }
    drop(links);
}

/// The next request and the descriptors that came with it; `None` at
/// end-of-file or on an error.
fn next_request(socket: &OwnedFd) -> Option<([u8; LINK_REQUEST_LEN], Vec<OwnedFd>)> {
    let mut request = [0u8; LINK_REQUEST_LEN];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut request)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .ok()?;
    if received.bytes == 0 {
        return None;
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Some((request, fds))
}
