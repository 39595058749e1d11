//! Symbols from separate debug files: a binary stripped of its debug info
//! and symbols, without a debug link, is named from the debug file that a
//! debuginfod-style cache (`$DEBUGINFOD_CACHE_PATH/<build-id>/debuginfo`)
//! holds for its build id.

use std::path::Path;
use std::process::Command;

use integration_tests::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_id(binary: &Path) -> String {
    let notes = run(Command::new("readelf").arg("-n").arg(binary));
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build id:\n{notes}", binary.display()))
        .trim()
        .to_owned()
}

#[test]
fn stripped_binary_is_named_from_a_debuginfod_cache() {
    require_root();
    let dir = temp_dir();
    let full = deep_nofp_bin();
    let stripped = dir.path().join("deep_nofp_stripped");
    let cache = dir.path().join("debuginfod");
    let debug_file = cache.join(build_id(&full)).join("debuginfo");
    std::fs::create_dir_all(debug_file.parent().unwrap()).unwrap();
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&debug_file));
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(&full)
        .arg(&stripped));

    let report_path = dir.path().join("report.json");
    let mut w = Workload::spawn_bin(&stripped, &[]);
    let mut cmd = tracer_command();
    cmd.env("DEBUGINFOD_CACHE_PATH", &cache)
        .args(["--pid", &w.pid.to_string(), "--unwind", "dwarf", "--report"])
        .arg(&report_path);
    let tracer = Tracer::spawn_command(cmd, w.pid);
    w.run();
    std::thread::sleep(SETTLE);
    tracer.stop(libc::SIGINT).assert_success();

    let report = read_json(&report_path);
    let stack = all_stacks(&report)
        .into_iter()
        .find(|s| leaf_function(s) == Some("deep_a4"))
        .unwrap_or_else(|| panic!("deep_a4 not named:\n{}", summarize_report(&report)));
    let leaf = &frames(stack)[0];
    assert!(
        leaf["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("deep_nofp.c")),
        "{leaf}"
    );
    assert!(
        leaf["module"]
            .as_str()
            .is_some_and(|m| m.ends_with("deep_nofp_stripped")),
        "the module is the mapped binary, not its debug file: {leaf}"
    );
    assert_eq!(
        frame_functions(stack)[..4],
        ["deep_a4", "deep_a3", "deep_a2", "deep_a1"]
    );
}
