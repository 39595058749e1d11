//! The flamegraph (SVG) of outstanding bytes by stack, drawn by inferno from
//! the folded lines, root at the outermost frame.

use std::io::Write;

use anyhow::Context as _;
use inferno::flamegraph::{self, Options};

use super::{StackReport, folded::folded_lines};

pub fn write_flamegraph(
    stacks: &[StackReport],
    title: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let lines = folded_lines(stacks);
    let mut options = Options::default();
    options.title = title.to_owned();
    options.count_name = "bytes".to_owned();
    options.name_type = "Function:".to_owned();
    if lines.is_empty() {
        // inferno refuses empty input; an empty graph still says "nothing
        // outstanding" more clearly than a missing file.
        return write_empty(title, out);
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("drawing the flamegraph")
}

fn write_empty(title: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let title = title.replace('&', "&amp;").replace('<', "&lt;");
    write!(
        out,
        r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text><text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">no outstanding allocations</text></svg>"#
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::Frame;

    #[test]
    fn draws_every_stack_frame_by_name() {
        let frame = |name: &str| Frame {
            address: 0x10,
            function: Some(name.to_owned()),
            module: None,
            file: None,
            line: None,
            inlined: false,
        };
        let stacks = [StackReport {
            bytes: 1 << 20,
            count: 2,
            oldest_age_s: 1.0,
            approximate: false,
            frames: vec![frame("leaky_site"), frame("main")],
        }];
        let mut svg = Vec::new();
        write_flamegraph(&stacks, "test", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("leaky_site") && svg.contains("main"));
    }

    #[test]
    fn nothing_outstanding_still_writes_an_svg() {
        let mut svg = Vec::new();
        write_flamegraph(&[], "test", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("no outstanding allocations") && svg.ends_with("</svg>"));
    }
}
