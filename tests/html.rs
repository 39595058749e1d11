//! The HTML report (`--html`, `alloctrace html`), loaded from a file URL in
//! a real headless Chromium: drawn without errors, with the numbers of the
//! JSON report of the same run, zooming on a click, and showing names from
//! a traced process's perf map as text, never running them.
//!
//! Screenshots are kept under `target/html-report/`.

use std::{collections::BTreeMap, path::Path, process::Command};

use integration_tests::{browser::Browser, *};
use serde_json::{Value, json};

/// `growth leak STEPS run`: 60 steps of 50 ms, a 3 s leak of 4 KiB a step
/// beside an 8 MiB cache (see tests/analysis.rs).
const STEPS: u64 = 60;
const LEAK_SIZE: u64 = 4096;
const CACHE_BYTES: u64 = 128 * 65536;

/// KEEP IN SYNC with tests/workloads/jit_names.c.
const JIT_NAMES: [(&str, u64); 2] = [
    ("<img src=x onerror=window.__pwned=1>", 8 * 3000),
    ("</script><script>window.__pwned=2</script><!--", 8 * 5000),
];

fn screenshot_path(name: &str) -> std::path::PathBuf {
    target_dir().join("html-report").join(name)
}

/// Loads `page`, checks it rendered without a console error, and returns
/// the browser.
fn open(page: &Path) -> Browser {
    let mut browser = Browser::launch(1300, 900);
    browser.open_file(page);
    let rendered = browser.eval("document.body.dataset.rendered");
    let errors = browser.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert_eq!(rendered, json!("true"), "the page did not finish drawing");
    // The flamegraphs draw on the next animation frame.
    browser.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))");
    browser
}

/// `(elapsed_s, bytes)` of the points of chart series `key`.
fn chart_points(browser: &mut Browser, key: &str) -> Vec<(f64, u64)> {
    let points = browser.eval(&format!(
        "[...document.querySelectorAll('circle.pt[data-series=\"{key}\"]')]
            .map(c => [Number(c.dataset.t), Number(c.dataset.bytes)])"
    ));
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
        .collect()
}

fn columns(series: &Value, values: &str) -> Vec<(f64, u64)> {
    let times = series["elapsed_s"].as_array().unwrap();
    let values = series[values].as_array().unwrap();
    assert_eq!(times.len(), values.len(), "{series}");
    times
        .iter()
        .zip(values)
        .map(|(t, v)| (t.as_f64().unwrap(), v.as_u64().unwrap()))
        .collect()
}

/// The drawn frame of the first (outstanding bytes) flamegraph whose
/// tooltip starts with `name`: its bytes and whether it is dimmed.
fn flame_frame(browser: &mut Browser, name: &str) -> Value {
    let name = json!(name).to_string();
    browser.eval(&format!(
        "(() => {{ const box = document.querySelector('.flame');
             const d = [...box.children].find(d => !d.classList.contains('dim')
                 && d.title.split('\\n')[0].split(' (')[0] === {name});
             return d ? {{bytes: Number(d.dataset.bytes), text: d.textContent,
                          width: d.getBoundingClientRect().width,
                          box: box.getBoundingClientRect().width}} : null; }})()"
    ))
}

fn status(browser: &mut Browser) -> String {
    browser
        .eval("document.querySelector('.fg-status').textContent")
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn html_report_of_a_run_draws_its_numbers_and_zooms_into_a_clicked_frame() {
    require_root();
    let dir = temp_dir();
    let page = dir.path().join("report.html");
    let snapshots = dir.path().join("snaps");
    let (out, report) = launch(
        &[
            "--interval",
            "500ms",
            "--html",
            page.to_str().unwrap(),
            "--snapshot-every",
            "1s",
            "--snapshot-dir",
            snapshots.to_str().unwrap(),
        ],
        &[
            growth_bin().to_str().unwrap(),
            "leak",
            &STEPS.to_string(),
            "run",
        ],
    );
    out.assert_success();
    let process = &processes(&report)[0];
    let timeline = &process["timeline"];
    let suspects = report["suspects"].as_array().unwrap();
    assert_eq!(leaf_function(&suspects[0]), Some("leak_site"), "{report}");

    let mut browser = open(&page);
    // Memory over time: every tick of the timeline, at its exact bytes.
    assert_eq!(
        chart_points(&mut browser, "total"),
        columns(timeline, "outstanding_bytes")
    );
    let leak_series = &timeline["stacks"][0];
    assert_eq!(leak_series["suspect"], json!(0));
    assert_eq!(
        chart_points(&mut browser, "suspect-0"),
        columns(leak_series, "bytes")
    );
    assert_eq!(
        columns(leak_series, "bytes").last().unwrap().1,
        STEPS * LEAK_SIZE
    );

    // The flamegraph: the whole width is what is outstanding, and each
    // site's frame holds that site's bytes.
    let total = browser.eval("Number(document.querySelector('.flame').dataset.total)");
    assert_eq!(total, process["totals"]["outstanding_bytes"]);
    let leak = flame_frame(&mut browser, "leak_site");
    assert_eq!(leak["bytes"], json!(STEPS * LEAK_SIZE), "{leak}");
    assert_eq!(
        flame_frame(&mut browser, "cache_site")["bytes"],
        json!(CACHE_BYTES)
    );
    assert!(leak["width"].as_f64().unwrap() < leak["box"].as_f64().unwrap() / 4.0);
    // The second flamegraph: bytes allocated over the run, from the hot
    // spots.
    let allocated: u64 = report["hot_spots"]
        .as_array()
        .unwrap_or_else(|| panic!("no hot_spots: {report}"))
        .iter()
        .map(|spot| as_u64(spot, "allocated_bytes"))
        .sum();
    assert_eq!(allocated, as_u64(&process["totals"], "allocated_bytes"));
    let drawn = browser.eval("Number(document.querySelectorAll('.flame')[1].dataset.total)");
    assert_eq!(drawn, json!(allocated));

    // Clicking the leak's frame zooms into it: it spans the graph, and the
    // cache beside it is gone.
    browser.click(".flame div[title^='leak_site']");
    let zoomed = flame_frame(&mut browser, "leak_site");
    assert!(
        zoomed["width"].as_f64().unwrap() >= zoomed["box"].as_f64().unwrap() - 2.0,
        "{zoomed}"
    );
    assert_eq!(zoomed["text"], json!("leak_site"));
    assert_eq!(flame_frame(&mut browser, "cache_site"), Value::Null);
    assert!(status(&mut browser).starts_with("zoomed into leak_site"));
    browser.screenshot(&screenshot_path("growth-zoomed.png"));

    // Reset, then search: the status sums the matching frames.
    browser.click(".fg-bar button");
    assert!(flame_frame(&mut browser, "cache_site").is_object());
    browser.eval(
        "(() => { const s = document.querySelector('.fg-bar input'); s.value = 'cache_';
                  s.dispatchEvent(new Event('input')); })()",
    );
    assert!(
        status(&mut browser).starts_with("matched 8.0 MiB"),
        "{}",
        status(&mut browser)
    );
    browser.eval(
        "(() => { const s = document.querySelector('.fg-bar input'); s.value = '';
                  s.dispatchEvent(new Event('input')); })()",
    );
    browser.screenshot(&screenshot_path("growth.png"));
    assert!(browser.errors().is_empty());

    // `alloctrace html` renders the saved report, its timeline lengthened
    // by the snapshots: every snapshot's total at its time.
    let rendered = dir.path().join("rendered.html");
    let report_path = dir.path().join("saved.json");
    std::fs::write(&report_path, report.to_string()).unwrap();
    let out = run_to_completion(
        {
            let mut cmd = Command::new(alloctrace_bin());
            cmd.arg("html")
                .arg(&report_path)
                .arg("--snapshots")
                .arg(&snapshots)
                .arg("-o")
                .arg(&rendered);
            cmd
        },
        std::time::Duration::from_secs(30),
    );
    out.assert_success();
    let mut expected: BTreeMap<i64, u64> = columns(timeline, "outstanding_bytes")
        .into_iter()
        .map(|(t, b)| ((t * 1000.0).round() as i64, b))
        .collect();
    let snapshot_files = dir_entries(&snapshots);
    assert!(snapshot_files.len() >= 2, "{snapshot_files:?}");
    for name in &snapshot_files {
        let snapshot = read_json(&snapshots.join(name));
        let t = (as_f64(&snapshot, "duration_s") * 1000.0).round() as i64;
        let bytes = as_u64(&snapshot["totals"], "outstanding_bytes");
        expected.entry(t).or_insert(bytes);
    }
    let mut browser = open(&rendered);
    let drawn: BTreeMap<i64, u64> = chart_points(&mut browser, "total")
        .into_iter()
        .map(|(t, b)| ((t * 1000.0).round() as i64, b))
        .collect();
    assert_eq!(drawn, expected);
    let text = browser.eval("document.querySelector('.sub').textContent");
    assert!(
        text.as_str()
            .unwrap()
            .contains(&format!("{} snapshots", snapshot_files.len())),
        "{text}"
    );
}

#[test]
fn names_from_a_perf_map_are_shown_as_text_and_never_run() {
    require_root();
    let dir = temp_dir();
    let page = dir.path().join("jit.html");
    let bin = compile_c("jit_names.c", "jit_names", WORKLOAD_CFLAGS);
    let (out, report) = launch(
        &["--interval", "500ms", "--html", page.to_str().unwrap()],
        &[bin.to_str().unwrap()],
    );
    out.assert_success();
    // The names did come from the perf map, markup and all.
    for (name, bytes) in JIT_NAMES {
        let named: u64 = all_stacks(&report)
            .into_iter()
            .filter(|s| frame_functions(s).contains(&name))
            .map(|s| as_u64(s, "bytes"))
            .sum();
        assert_eq!(named, bytes, "{name}: {report}");
    }

    let mut browser = open(&page);
    browser.screenshot(&screenshot_path("jit-names.png"));
    assert_eq!(browser.eval("typeof window.__pwned"), json!("undefined"));
    assert_eq!(browser.eval("document.images.length"), json!(0));
    assert_eq!(browser.eval("document.scripts.length"), json!(2));
    for (name, bytes) in JIT_NAMES {
        let frame = flame_frame(&mut browser, name);
        assert_eq!(frame["bytes"], json!(bytes), "{name}: {frame}");
        assert_eq!(frame["text"], json!(name), "drawn as its text");
    }
    let text = browser.eval("document.body.innerText");
    assert!(text.as_str().unwrap().contains(JIT_NAMES[0].0));
    assert!(browser.errors().is_empty(), "{:#?}", browser.errors());
}

#[test]
fn host_wide_page_ranks_processes_by_growth_and_opens_each_one() {
    require_root();
    let dir = temp_dir();
    let page = dir.path().join("all.html");
    let report_path = dir.path().join("all.json");
    // A name of its own: other tests (and other checkouts' tests on a shared
    // machine) run `growth` too.
    let growth = compile_c("growth.c", "html_growth", WORKLOAD_CFLAGS);
    let tracer = Tracer::spawn_all(&[
        "--comm",
        "html_growth",
        "--interval",
        "500ms",
        "--html",
        page.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
    ]);
    // Stopped while both still run: the leak grows, the other only churns.
    let mut leak = Workload::spawn_bin(&growth, &["leak", "200"]);
    let mut clean = Workload::spawn_bin(&growth, &["clean", "200"]);
    leak.go();
    clean.go();
    std::thread::sleep(std::time::Duration::from_secs(3));
    tracer.stop(libc::SIGINT).assert_success();
    let report = read_json(&report_path);
    let mut by_growth: Vec<&Value> = processes(&report).iter().collect();
    by_growth.sort_by(|a, b| {
        as_f64(b, "growth_bytes_per_s").total_cmp(&as_f64(a, "growth_bytes_per_s"))
    });
    let pids: Vec<u64> = by_growth.iter().map(|p| as_u64(p, "pid")).collect();
    assert_eq!(pids, [leak.pid as u64, clean.pid as u64], "{report}");

    let mut browser = open(&page);
    let rows = browser
        .eval("[...document.querySelectorAll('tr[data-pid]')].map(r => Number(r.dataset.pid))");
    assert_eq!(rows, json!(pids), "the page ranks as the report does");
    for process in by_growth.iter().rev() {
        let pid = as_u64(process, "pid");
        browser.click(&format!("tr[data-pid='{pid}']"));
        browser.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))");
        assert_eq!(
            chart_points(&mut browser, "total"),
            columns(&process["timeline"], "outstanding_bytes"),
            "pid {pid}"
        );
        let total = browser.eval("Number(document.querySelector('.flame').dataset.total)");
        assert_eq!(total, process["totals"]["outstanding_bytes"], "pid {pid}");
    }
    browser.screenshot(&screenshot_path("host-wide.png"));
    assert!(browser.errors().is_empty(), "{:#?}", browser.errors());
}
