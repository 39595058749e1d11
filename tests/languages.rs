//! Whole stacks in what production hosts really run, without frame
//! pointers: a Rust release binary, a C++ program whose leak path is
//! inlined, and Debian's own `python3`; each chain complete and in order,
//! bytes exact, names demangled, inlined frames shown, and the same stacks
//! frame for frame from the kernel's table-driven unwinder (`--unwind
//! dwarf`) and the userspace unwinder of copied stacks (`--unwind
//! stack-copy`).

use std::process::Command;

use integration_tests::*;
use serde_json::Value;

/// One leak site of `tests/workloads/rust_nofp.rs`: its chain of
/// `#[inline(never)]` functions from the allocating one outwards, and what
/// stays outstanding there.
struct RustSite {
    chain: &'static [&'static str],
    bytes: u64,
    count: u64,
}

/// KEEP IN SYNC with tests/workloads/rust_nofp.rs.
const RUST_SITES: &[RustSite] = &[
    RustSite {
        chain: &[
            "rust_nofp::inner_a",
            "rust_nofp::middle_a",
            "rust_nofp::outer_a",
            "rust_nofp::run_all",
            "rust_nofp::main",
        ],
        bytes: 5 * 1111,
        count: 5,
    },
    RustSite {
        chain: &[
            "rust_nofp::inner_b",
            "rust_nofp::deeper_b",
            "rust_nofp::middle_b",
            "rust_nofp::outer_b",
            "rust_nofp::run_all",
            "rust_nofp::main",
        ],
        bytes: 3 * 2222,
        count: 3,
    },
    // Over-aligned: through `posix_memalign`, called from a real
    // `__rdl_alloc` frame, which is left out like `malloc`.
    RustSite {
        chain: &[
            "rust_nofp::inner_c",
            "rust_nofp::outer_c",
            "rust_nofp::run_all",
            "rust_nofp::main",
        ],
        bytes: 2 * 3392,
        count: 2,
    },
];

/// Where every process's stack ends, above `main`: glibc's start code.
const C_START: &[&str] = &["__libc_start_call_main", "__libc_start_main_impl", "_start"];

/// The stacks of `report` with a frame named `function`.
fn stacks_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    all_stacks(report)
        .into_iter()
        .filter(|stack| frame_functions(stack).contains(&function))
        .collect()
}

/// The function that called the allocator: the first frame not inlined.
fn first_called_function(stack: &Value) -> Option<&str> {
    frames(stack)
        .iter()
        .find(|frame| frame["inlined"].as_bool() == Some(false))?["function"]
        .as_str()
}

/// (bytes, count) summed over `stacks`.
fn outstanding(stacks: &[&Value]) -> (u64, u64) {
    stacks.iter().fold((0, 0), |(bytes, count), stack| {
        (
            bytes + as_u64(stack, "bytes"),
            count + as_u64(stack, "count"),
        )
    })
}

/// Built with `rustc -C opt-level=3 -C force-frame-pointers=no`, every leak
/// site's stack holds its whole chain in order up to `main`, below only the
/// standard library's allocation code inlined into the allocating function
/// (Rust's `__rust_alloc` and `__rdl_alloc` jump to `malloc`, leaving no
/// frame, and a real `__rdl_alloc` frame, for an over-aligned type, is left
/// out like `malloc`); every name is demangled and the bytes are exact.
#[test]
fn rust_release_build_unwinds_whole_chains_to_main() {
    require_root();
    let (ready, report) = trace_command(Command::new(rust_nofp_bin()), &["--unwind", "auto"]);
    assert!(
        ready.contains("DWARF unwinding"),
        "auto should pick DWARF for a Rust build without frame pointers: {ready}"
    );
    assert_eq!(as_u64(&report["totals"], "lost_events"), 0);
    for site in RUST_SITES {
        let stacks: Vec<&Value> = all_stacks(&report)
            .into_iter()
            .filter(|stack| first_called_function(stack) == Some(site.chain[0]))
            .collect();
        assert_eq!(
            outstanding(&stacks),
            (site.bytes, site.count),
            "outstanding under {}:\n{}",
            site.chain[0],
            summarize_report(&report)
        );
        for stack in stacks {
            let frames = frames(stack);
            let functions = frame_functions(stack);
            let at = functions.iter().position(|f| *f == site.chain[0]).unwrap();
            for inlined in &frames[..at] {
                assert_eq!(inlined["inlined"].as_bool(), Some(true), "{inlined}");
                let name = inlined["function"].as_str().unwrap_or("?");
                assert!(
                    name.starts_with("alloc::") || name.starts_with("<"),
                    "not the standard library's allocation code: {name}"
                );
            }
            assert!(
                functions[at..].starts_with(site.chain),
                "stack of {} is not the whole chain {:?}: {functions:?}",
                site.chain[0],
                site.chain
            );
            assert!(
                functions.ends_with(&[&["std::rt::lang_start_internal", "main"], C_START].concat()),
                "the stack does not reach main through Rust's runtime: {functions:?}"
            );
            for name in &functions {
                assert!(
                    !name.starts_with("_ZN") && !name.starts_with("_R") && *name != "?",
                    "frame not named or not demangled: {name} in {functions:?}"
                );
            }
        }
    }
}

/// One frame of the C++ chain: its name, whether it was inlined, and the
/// marker on the line of its own call (or allocation).
struct CppFrame {
    function: &'static str,
    inlined: bool,
    marker: &'static str,
}

/// KEEP IN SYNC with tests/workloads/cpp_inline.cpp.
const CPP_CHAIN: &[CppFrame] = &[
    CppFrame {
        function: "store::Crate<(unsigned int)1536>* store::make_crate<store::Crate<(unsigned int)1536> >(int)",
        inlined: true,
        marker: "LINE:new",
    },
    CppFrame {
        function: "store::Shelf::restock(int)",
        inlined: true,
        marker: "LINE:make_crate",
    },
    CppFrame {
        function: "store::Shelf::stock(int)",
        inlined: false,
        marker: "LINE:restock",
    },
    CppFrame {
        function: "fill(int)",
        inlined: false,
        marker: "LINE:stock",
    },
    CppFrame {
        function: "main",
        inlined: false,
        marker: "LINE:fill",
    },
];

/// A C++ program built with `g++ -O2` (no frame pointers) allocating with
/// `new` inside a function template inlined into an inline member function
/// inlined into its caller: the whole chain to `main`, the inlined frames
/// shown in order, marked inlined, each at the line of its own call, and
/// libstdc++'s `operator new` left out like `malloc`.
#[test]
fn cpp_inlined_frames_stay_in_order_on_a_whole_chain() {
    require_root();
    let (ready, report) = trace_command(Command::new(cpp_inline_bin()), &["--unwind", "auto"]);
    assert!(ready.contains("DWARF unwinding"), "{ready}");
    let stacks = stacks_through(&report, "store::Shelf::stock(int)");
    assert_eq!(
        outstanding(&stacks),
        (4 * 1536, 4),
        "outstanding under Shelf::stock:\n{}",
        summarize_report(&report)
    );
    for stack in stacks {
        let frames = frames(stack);
        let functions = frame_functions(stack);
        assert_eq!(
            functions,
            [
                CPP_CHAIN.iter().map(|f| f.function).collect::<Vec<_>>(),
                C_START.to_vec()
            ]
            .concat(),
            "{stack}"
        );
        for (frame, expected) in frames.iter().zip(CPP_CHAIN) {
            assert_eq!(
                frame["inlined"].as_bool(),
                Some(expected.inlined),
                "{frame}"
            );
            assert_eq!(
                frame["line"].as_u64(),
                Some(marker_line("cpp_inline.cpp", expected.marker)),
                "{frame}"
            );
            assert!(
                frame["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("cpp_inline.cpp")),
                "{frame}"
            );
        }
    }
}

/// The named frames of the stack of every `bytearray(N)` of
/// tests/workloads/py_growth.py in Debian's python3.11 (bookworm), leaf
/// first; the frames between them are static functions the stripped
/// interpreter names only by address (`bytearray___init__`,
/// `run_eval_code_obj`, `run_mod`, `pyrun_file`). Its `main` is `jmp
/// Py_BytesMain` (a tail call: it leaves no frame), so `Py_BytesMain` is
/// called straight from glibc's start code.
const PYTHON_CHAIN: &[&str] = &[
    "PyByteArray_Resize",
    "_PyObject_MakeTpCall",
    "_PyEval_EvalFrameDefault",
    "PyEval_EvalCode",
    "_PyRun_SimpleFileObject",
    "_PyRun_AnyFileObject",
    "Py_RunMain",
    "Py_BytesMain",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "_start",
];

/// KEEP IN SYNC with BLOCKS and SIZE in tests/workloads/py_growth.py
/// (`bytearray(N)` allocates N + 1 bytes).
const PYTHON_BLOCKS: u64 = 8;
const PYTHON_BLOCK_BYTES: u64 = 123_457 + 1;

/// Debian's python3 (built -O2 without frame pointers) with
/// `PYTHONMALLOC=malloc`: every `bytearray` the script keeps is seen, with
/// exact bytes, on a stack that runs through the interpreter's main loop
/// (`_PyEval_EvalFrameDefault`) to `Py_BytesMain` and glibc's start code.
#[test]
fn debian_python_stacks_reach_the_eval_loop_and_main() {
    require_root();
    let (ready, report) = trace_command(python_growth_command(), &["--unwind", "auto"]);
    assert!(ready.contains("DWARF unwinding"), "{ready}");
    let stacks: Vec<&Value> = all_stacks(&report)
        .into_iter()
        .filter(|stack| leaf_function(stack) == Some(PYTHON_CHAIN[0]))
        .collect();
    assert_eq!(
        outstanding(&stacks),
        (PYTHON_BLOCKS * PYTHON_BLOCK_BYTES, PYTHON_BLOCKS),
        "outstanding under {}:\n{}",
        PYTHON_CHAIN[0],
        summarize_report(&report)
    );
    for stack in stacks {
        let named: Vec<&str> = frames(stack)
            .iter()
            .filter_map(|frame| frame["function"].as_str())
            .collect();
        assert_eq!(named, PYTHON_CHAIN, "{stack}");
        for frame in frames(stack).iter().filter(|f| f["function"].is_null()) {
            assert!(
                frame["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("/usr/bin/python3.11+0x")),
                "an unnamed frame outside the interpreter: {frame}"
            );
        }
    }
}

/// The kernel's table-driven unwinder and the userspace unwinder of copied
/// stacks find the same stacks, frame for frame, with the same bytes, in
/// `command`'s process; at least `at_least` of them.
fn assert_unwinders_agree(command: impl Fn() -> Command, at_least: usize) {
    let kernel = unwound_stacks(command(), "dwarf");
    let copied = unwound_stacks(command(), "stack-copy");
    assert!(kernel.len() >= at_least, "{kernel:#?}");
    assert_eq!(kernel, copied);
}

#[test]
fn rust_stacks_agree_between_kernel_and_stack_copy_unwinders() {
    require_root();
    assert_unwinders_agree(|| Command::new(rust_nofp_bin()), RUST_SITES.len());
}

#[test]
fn cpp_stacks_agree_between_kernel_and_stack_copy_unwinders() {
    require_root();
    assert_unwinders_agree(|| Command::new(cpp_inline_bin()), 1);
}

#[test]
fn python_stacks_agree_between_kernel_and_stack_copy_unwinders() {
    require_root();
    assert_unwinders_agree(python_growth_command, 1);
}
