//! A headless Chromium driven over the DevTools protocol, for the tests of
//! the HTML report: load a page, evaluate script in it, click at a point,
//! collect console errors and take a screenshot.
//!
//! The protocol runs over `--remote-debugging-pipe` (Chromium reads
//! NUL-terminated JSON commands on fd 3 and writes replies and events on
//! fd 4): no port, no websocket, nothing another process can connect to.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

/// Replies and page loads take longer than this only when something hangs.
const TIMEOUT: Duration = Duration::from_secs(60);

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    session: String,
    next_id: u64,
    /// Events received so far (console messages, exceptions, loads).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts Chromium with a fresh profile, a `width`×`height` viewport,
    /// and one page attached.
    pub fn launch(width: u32, height: u32) -> Self {
        assert!(
            Path::new(CHROMIUM).exists(),
            "the HTML report's tests need {CHROMIUM} (apt-get install chromium; `cargo xtask setup` does it)"
        );
        let profile = tempfile::tempdir().expect("temp dir");
        let (command_read, command_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let (child_in, child_out) = (command_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            &format!("--window-size={width},{height}"),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe fcntl and
        // dup2 run. They put the pipes where Chromium expects them, through
        // copies above fd 10 first: a pipe may itself be fd 3 or 4, and
        // dup2 onto itself would neither move it out of the other's way nor
        // clear its close-on-exec flag.
        unsafe {
            cmd.pre_exec(move || {
                let high_in = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let high_out = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("cannot start chromium");
        drop((command_read, reply_write));
        let (sender, messages) = channel();
        let replies = File::from(reply_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|byte| *byte == 0);
                if let Ok(value) = serde_json::from_slice(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: File::from(command_write),
            messages,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends a command to the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("chromium went away sending {method}: {e}"));
        let reply = self.wait_for(method, |m| m["id"] == json!(id));
        if let Some(error) = reply.get("error") {
            panic!("{method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// Reads messages until one matches, keeping events.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) if matches(&message) => return message,
                Ok(message) => {
                    if message.get("method").is_some() {
                        self.events.push(message);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("chromium: no {what} within {TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited waiting for {what}"),
            }
        }
    }

    /// Loads `path` from a file URL and waits for its load event; returns
    /// the time from the request to the load event.
    pub fn open_file(&mut self, path: &Path) -> Duration {
        let url = format!("file://{}", path.canonicalize().unwrap().display());
        let started = Instant::now();
        self.events
            .retain(|e| e["method"] != json!("Page.loadEventFired"));
        self.call("Page.navigate", json!({"url": url}));
        let fired = |m: &Value| m["method"] == json!("Page.loadEventFired");
        if !self.events.iter().any(fired) {
            self.wait_for("load event", fired);
        }
        started.elapsed()
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value; a thrown exception fails the test.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Clicks with the mouse at the centre of the first element matching
    /// `selector` (after scrolling it into view), as a user would.
    pub fn click(&mut self, selector: &str) {
        let selector_json = json!(selector).to_string();
        let centre = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector_json});
                 if (!e) return null;
                 e.scrollIntoView({{block: 'center'}});
                 const r = e.getBoundingClientRect();
                 return [r.left + Math.min(r.width / 2, 10), r.top + r.height / 2]; }})()"
        ));
        let (Some(x), Some(y)) = (centre[0].as_f64(), centre[1].as_f64()) else {
            panic!("nothing matches {selector}");
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Console errors, uncaught exceptions and error log entries so far.
    pub fn errors(&mut self) -> Vec<String> {
        // A round trip, so that events sent before now have arrived.
        self.eval("0");
        self.events
            .iter()
            .filter_map(|event| {
                let params = &event["params"];
                match event["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(params["exceptionDetails"].to_string()),
                    "Runtime.consoleAPICalled"
                        if matches!(params["type"].as_str(), Some("error" | "assert")) =>
                    {
                        Some(params["args"].to_string())
                    }
                    "Log.entryAdded" if params["entry"]["level"] == json!("error") => {
                        Some(params["entry"].to_string())
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Writes a PNG of the whole page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                            "scale": 1}}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
