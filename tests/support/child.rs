//! Plumbing for the child processes the tests start: a pipe read line by
//! line on its own thread, a bounded wait, a signal. Private to the support
//! crate: [`crate::Workload`] and [`crate::Tracer`] are its faces.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Reads a child pipe line by line on a thread: lines go to a channel and
/// are also accumulated (raw) for error messages / final output.
pub(crate) struct LineReader {
    rx: Receiver<String>,
    all: Arc<Mutex<String>>,
    handle: Option<JoinHandle<()>>,
}

impl LineReader {
    pub(crate) fn new<R: Read + Send + 'static>(r: R) -> Self {
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let all2 = Arc::clone(&all);
        let handle = std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf).into_owned();
                        all2.lock().unwrap().push_str(&s);
                        let _ = tx.send(s.trim_end_matches(['\n', '\r']).to_string());
                    }
                }
            }
        });
        LineReader {
            rx,
            all,
            handle: Some(handle),
        }
    }

    pub(crate) fn collected(&self) -> String {
        self.all.lock().unwrap().clone()
    }

    /// Waits for a line satisfying `pred`. `Err` carries why it failed.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(format!("timeout after {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err("stream closed (EOF)".into()),
            }
        }
    }

    /// Joins the reader thread (after the child exited) and returns everything.
    pub(crate) fn finish(mut self, timeout: Duration) -> String {
        if let Some(h) = self.handle.take() {
            let deadline = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.collected()
    }
}

pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    }
}

pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child we own (not yet reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}
