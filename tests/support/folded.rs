//! Reading the folded-stack (`--folded`) and flamegraph (`--flamegraph`)
//! outputs.

/// Parses folded output (`outer;...;leaf BYTES`), panicking on malformed lines.
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (stack, n) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without ` BYTES`: {l:?}"));
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("folded line does not end with a byte count: {l:?}"));
            assert!(!stack.is_empty(), "folded line with an empty stack: {l:?}");
            (stack.split(';').map(str::to_string).collect(), n)
        })
        .collect()
}

/// Function name of a folded frame: tolerates a `module`` prefix and a
/// ` (file:line)` / `[...]` suffix.
pub fn folded_frame_function(frame: &str) -> &str {
    let f = frame.rsplit('`').next().unwrap_or(frame);
    let end = f.find([' ', '(', '[']).unwrap_or(f.len());
    &f[..end]
}

/// Sum of the bytes of folded lines whose last (leaf) frame is `site`.
pub fn folded_site_bytes(folded: &[(Vec<String>, u64)], site: &str) -> u64 {
    folded
        .iter()
        .filter(|(st, _)| st.last().map(|f| folded_frame_function(f)) == Some(site))
        .map(|(_, n)| n)
        .sum()
}

/// `<svg` ... `</svg>`.
pub fn assert_svg_wellformed(svg: &str) {
    assert!(
        svg.contains("<svg"),
        "no <svg element:\n{}",
        &svg[..svg.len().min(500)]
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "SVG does not end with </svg>: ...{}",
        &svg[svg.len().saturating_sub(300)..]
    );
}
