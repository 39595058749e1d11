//! Perf-event uprobes made by the guardian (`super::guardian`): the
//! fallback where the kernel has no uprobe_multi links (before 6.6, or
//! `--perf-event-uprobes`), attached as aya attaches them (a `uprobe` PMU
//! event, then a `BPF_PERF_EVENT` link, or the older ioctl), but created
//! and held by the guardian like the uprobe_multi links.
//!
//! Why not aya's own attach: closing a perf-event uprobe removes its
//! breakpoints the same way closing a uprobe_multi link does, and fails the
//! same way from a task with a `SIGKILL` pending (`leaking uprobe` in the
//! kernel log). aya keeps the event's descriptor in alloctrace and gives no
//! way to hand a duplicate to another process, so the guardian makes the
//! event itself from the program's descriptor and alloctrace never holds
//! one.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
};

use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, bpf_attach_type, bpf_cmd,
    perf_event_attr,
};

use super::multi::{LinkCreateAttr, LinkTarget, bpf_fd};

/// Where the kernel describes its `uprobe` PMU.
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

/// Creates a perf-event uprobe of `program` (loaded by aya as a uprobe or
/// uretprobe program) at `target`; the probe stays until the returned
/// descriptor is closed.
pub fn create_perf_link(program: BorrowedFd<'_>, target: &LinkTarget<'_>) -> io::Result<OwnedFd> {
    let event = open_uprobe_event(target)?;
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: bpf_attach_type::BPF_PERF_EVENT as u32,
        ..LinkCreateAttr::default()
    };
    // SAFETY: `attr` outlives the call and holds no pointer.
    match unsafe { bpf_fd(bpf_cmd::BPF_LINK_CREATE as i32, &attr) } {
        // The link holds the event.
        Ok(link) => Ok(link),
        // Before Linux 5.15: the program goes on the event itself.
        Err(_) => {
            perf_ioctl(&event, PERF_EVENT_IOC_SET_BPF, program.as_raw_fd())?;
            perf_ioctl(&event, PERF_EVENT_IOC_ENABLE, 0)?;
            Ok(event)
        }
    }
}

/// `perf_event_open` of a uprobe at `target`: in `target.pid` only, or (pid
/// 0) in every process, with the event on CPU 0 as aya opens it (the BPF
/// program runs on every CPU whatever the event's).
fn open_uprobe_event(target: &LinkTarget<'_>) -> io::Result<OwnedFd> {
    let path = CString::new(target.file.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: perf_event_attr is plain integers, for which zero is valid.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.size = size_of::<perf_event_attr>() as u32;
    attr.type_ = pmu_number("type")?;
    if target.returns {
        attr.config = 1 << pmu_number("format/retprobe")?;
    }
    attr.__bindgen_anon_3.config1 = path.as_ptr() as u64;
    attr.__bindgen_anon_4.config2 = target.offset;
    let (pid, cpu) = match target.pid {
        0 => (-1, 0),
        pid => (pid as i32, -1),
    };
    // SAFETY: `attr` and the path it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::from_ref(&attr),
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A number the `uprobe` PMU publishes: its `type`, or a format bit
/// (`format/retprobe` reads `config:0`).
fn pmu_number(file: &str) -> io::Result<u32> {
    let text = fs::read_to_string(format!("{UPROBE_PMU}/{file}"))?;
    let number = text.trim().rsplit(':').next().unwrap_or_default();
    number
        .parse()
        .map_err(|_| io::Error::other(format!("{UPROBE_PMU}/{file} reads {text:?}")))
}

fn perf_ioctl(event: &OwnedFd, request: u32, argument: i32) -> io::Result<()> {
    // SAFETY: both requests take an int argument and touch no memory of ours.
    let result = unsafe { libc::ioctl(event.as_raw_fd(), request as _, argument) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
