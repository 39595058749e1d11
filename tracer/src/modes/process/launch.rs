//! Launch mode: start a command held just before `execve`, so every probe is
//! in place before its first instruction, then let it run.
//!
//! The child is forked and blocks reading a pipe; the tracer attaches with
//! the child's pid (uprobes follow a process through `execve`, because the
//! kernel filters them by the task's current address space) and releases it
//! with one byte. A second, close-on-exec pipe reports whether `execve`
//! worked: it reads end-of-file exactly when the new program is in place.
//! `std::process::Command` cannot do this: its `spawn` waits for the exec.

use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// A command started by alloctrace.
pub struct Launched {
    pid: u32,
    exe: PathBuf,
    display: String,
    /// Write end of the pipe the child waits on; `None` once released.
    release: Option<OwnedFd>,
    /// Read end of the close-on-exec pipe carrying `execve`'s errno.
    exec_report: Option<OwnedFd>,
    reaped: bool,
}

impl Launched {
    /// Forks the child and leaves it waiting before `execve`.
    pub fn start(command: &[OsString]) -> anyhow::Result<Self> {
        let program = command
            .first()
            .ok_or_else(|| anyhow!("no command given after --"))?;
        let display = program.to_string_lossy().into_owned();
        let exe = which::which(program)
            .map_err(|_| anyhow!("cannot find command {display}"))?
            .canonicalize()
            .with_context(|| format!("resolving command {display}"))?;
        let path = c_string(exe.as_os_str().as_bytes())?;
        let argv: Vec<CString> = command
            .iter()
            .map(|arg| c_string(arg.as_bytes()))
            .collect::<anyhow::Result<_>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let (release_read, release_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        // SAFETY: the child only calls async-signal-safe functions (close,
        // read, write, execv, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above; never returns.
            unsafe {
                exec_when_released(
                    release_read.as_raw_fd(),
                    release_write.as_raw_fd(),
                    report_read.as_raw_fd(),
                    report_write.as_raw_fd(),
                    &path,
                    &argv_ptrs,
                )
            }
        }
        drop(release_read);
        drop(report_write);
        Ok(Self {
            pid: pid as u32,
            exe,
            display,
            release: Some(release_write),
            exec_report: Some(report_read),
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command's executable, resolved through `PATH`.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Lets the child `execve`, and returns once the new program is in
    /// place (or fails if it could not be executed).
    pub fn release(&mut self) -> anyhow::Result<()> {
        let release = self.release.take().context("command released twice")?;
        write_all(&release, &[1]).context("releasing the command")?;
        drop(release);
        let report = self.exec_report.take().context("command released twice")?;
        let mut errno = [0u8; 4];
        match read_full(&report, &mut errno) {
            0 => Ok(()),
            _ => {
                self.reap();
                let error = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                bail!("cannot execute {}: {error}", self.display)
            }
        }
    }

    /// Waits for the command to exit and returns the exit status a shell
    /// would report: its code, or 128 + the signal that killed it.
    pub fn wait(&mut self) -> anyhow::Result<u8> {
        let mut status = 0;
        // SAFETY: waitpid writes the status through the pointer it is given.
        let result = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
        if result < 0 {
            return Err(std::io::Error::last_os_error()).context("waiting for the command");
        }
        self.reaped = true;
        Ok(if libc::WIFSIGNALED(status) {
            128u8.saturating_add(libc::WTERMSIG(status) as u8)
        } else {
            libc::WEXITSTATUS(status) as u8
        })
    }

    /// Sends `signal` to the command, if it is still ours to signal.
    pub fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }

    fn reap(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            let _ = self.wait();
        }
    }
}

impl Drop for Launched {
    /// A command that was never released must not run untraced: it is
    /// killed, never let go, when tracing could not start.
    fn drop(&mut self) {
        if self.release.is_some() {
            self.reap();
        }
    }
}

/// The child's side: wait for the release byte, then exec. Never returns.
///
/// # Safety
/// Must run in the child right after `fork`, with valid descriptors and
/// NUL-terminated arrays prepared before the fork.
unsafe fn exec_when_released(
    release_read: i32,
    release_write: i32,
    report_read: i32,
    report_write: i32,
    path: &CString,
    argv: &[*const libc::c_char],
) -> ! {
    // SAFETY: plain system calls on descriptors this process owns, and on
    // buffers that live for the whole function.
    unsafe {
        libc::close(release_write);
        libc::close(report_read);
        let mut byte = 0u8;
        // End of file means the tracer went away before attaching: the
        // command must not run untraced behind the user's back.
        if libc::read(release_read, (&raw mut byte).cast(), 1) != 1 {
            libc::_exit(127);
        }
        libc::close(release_read);
        libc::execv(path.as_ptr(), argv.as_ptr());
        let errno = *libc::__errno_location();
        libc::write(report_write, (&raw const errno).cast(), 4);
        libc::_exit(127)
    }
}

fn c_string(bytes: &[u8]) -> anyhow::Result<CString> {
    CString::new(bytes).map_err(|_| anyhow!("command arguments cannot contain NUL bytes"))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: writes from a live buffer of the given length.
    let written = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if written == bytes.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads until `buffer` is full or end of file; returns the bytes read.
fn read_full(fd: &OwnedFd, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        // SAFETY: reads into the unfilled tail of a live buffer.
        let read = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buffer[filled..].as_mut_ptr().cast(),
                buffer.len() - filled,
            )
        };
        match read {
            n if n > 0 => filled += n as usize,
            n if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    filled
}
