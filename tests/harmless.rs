//! Never harmful: whatever happens to the tracer, the target keeps running
//! at full speed with no probe left in it.

use std::{fs, io::Read as _, io::Seek as _, io::SeekFrom, time::Duration};

use integration_tests::*;

/// Median nanoseconds per malloc+free pair of three measurements.
fn measure(w: &mut Workload) -> f64 {
    let mut samples: Vec<f64> = (0..3)
        .map(|_| {
            w.send("measure");
            let line = w.expect_line("ns ", Duration::from_secs(10));
            line["ns ".len()..].trim().parse().expect("ns <number>")
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[1]
}

/// The target's executable mappings of its libc, compared byte for byte
/// with the file: a uprobe is an `int3` the kernel wrote into the target's
/// copy of the page, so any probe left behind shows up here.
fn libc_code_matches_the_file(pid: u32) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut checked = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms), Some(offset), Some(path)) =
            (fields.first(), fields.get(1), fields.get(2), fields.get(5))
        else {
            continue;
        };
        if !perms.contains('x') || !path.ends_with("/libc.so.6") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = u64::from_str_radix(offset, 16).unwrap() as usize;
        let mut in_memory = vec![0u8; (end - start) as usize];
        mem.seek(SeekFrom::Start(start)).unwrap();
        mem.read_exact(&mut in_memory).expect("read target memory");
        let file = fs::read(format!("/proc/{pid}/root{path}")).expect("read libc");
        let in_file = &file[offset..(offset + in_memory.len()).min(file.len())];
        if in_memory[..in_file.len()] != *in_file {
            return false;
        }
        checked += 1;
    }
    assert!(checked > 0, "no executable libc mapping in pid {pid}");
    true
}

#[test]
fn a_child_the_target_forks_while_traced_is_rid_of_the_probes_it_inherits() {
    require_root();
    let dir = temp_dir();
    let report = dir.path().join("report.json");
    let mut w = Workload::spawn_bin(&churn_meter_bin(), &[]);
    let tracer = Tracer::spawn(w.pid, &["--report".as_ref(), report.as_os_str()], None);
    w.send("fork");
    let line = w.expect_line("child ", Duration::from_secs(10));
    let child: u32 = line["child ".len()..].trim().parse().expect("child <pid>");
    // The child's copy of the target's memory came with the breakpoints;
    // the tracer removes them once it sees the fork.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !libc_code_matches_the_file(child) {
        assert!(
            std::time::Instant::now() < deadline,
            "the forked child still has the target's breakpoints"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !libc_code_matches_the_file(w.pid),
        "the target itself must still be probed"
    );
    tracer.stop(libc::SIGINT).assert_success();
    assert!(libc_code_matches_the_file(w.pid));
}

#[test]
fn sigkill_of_the_tracer_leaves_the_target_untouched_and_at_full_speed() {
    require_root();
    let mut w = Workload::spawn_bin(&churn_meter_bin(), &[]);
    let untraced = measure(&mut w);
    assert!(
        libc_code_matches_the_file(w.pid),
        "libc modified before tracing"
    );

    let tracer = Tracer::spawn(w.pid, &["--interval", "1h", "--report", "/dev/null"], None);
    let traced = measure(&mut w);
    // The check below can fail: with the tracer attached, the probes are
    // breakpoints in the target's libc.
    assert!(
        !libc_code_matches_the_file(w.pid),
        "no probe visible in the target's libc while traced"
    );
    let tracer_pid = tracer.pid();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(tracer_pid as i32, libc::SIGKILL) };
    let out = tracer.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL)
    );

    assert!(
        libc_code_matches_the_file(w.pid),
        "a probe was left in the target's libc after the tracer was killed"
    );
    let after = measure(&mut w);
    println!(
        "ns per malloc+free: untraced {untraced:.1}, traced {traced:.1}, after SIGKILL {after:.1}"
    );
    assert!(
        traced > 20.0 * untraced,
        "tracing should have cost a trap per call ({traced:.1} vs {untraced:.1} ns)"
    );
    // Generous: a 2-core VM shared with other tests jitters; a probe left
    // behind would cost ~100x.
    assert!(
        after < 3.0 * untraced + 20.0,
        "target slower after the tracer died: {after:.1} vs {untraced:.1} ns per pair"
    );
    assert!(w.is_alive());
}

#[test]
fn a_second_sigint_ends_the_tracer_at_once_and_still_leaves_no_probe() {
    require_root();
    let w = Workload::spawn_bin(&churn_meter_bin(), &[]);
    let dir = temp_dir();
    let report = dir.path().join("r.json");
    let tracer = Tracer::spawn(w.pid, &[std::path::Path::new("--report"), &report], None);
    let pid = tracer.pid() as i32;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGINT) };
    // The first SIGINT starts an orderly stop (detaching takes a while);
    // the second one must not wait for it.
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = tracer.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGINT),
        "the second SIGINT should have ended alloctrace ({})\n{}",
        out.status,
        out.stderr
    );
    assert!(!report.exists(), "an interrupted stop wrote a report");
    assert!(
        libc_code_matches_the_file(w.pid),
        "a probe was left in the target after the second SIGINT"
    );
}
