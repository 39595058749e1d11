//! The HTML report: one self-contained page (`--html`, `alloctrace html`)
//! with memory over time, flamegraphs of outstanding and allocated bytes,
//! the suspects with their evidence, and in host-wide mode the processes
//! ranked by growth.
//!
//! The page is rendered from the JSON report as a `serde_json::Value`, not
//! from [`Report`], so a saved report of any version renders, and keys this
//! module does not know yet (newer evidence, say) still reach the page,
//! which shows what it finds. Frames are stored once ([`compact`]), so
//! 100k stacks make a page of megabytes, not hundreds. Everything the page
//! needs is inside it: the
//! script and style from `page.js`/`page.css` (written for this page; no
//! vendored code), and the report as JSON in a `<script type=
//! "application/json">` element.
//!
//! Names in the report come from files traced processes control (symbol
//! tables, perf maps, paths), so:
//! * the JSON is embedded with `<`, `>` and `&` escaped as `\u003c`...,
//!   so no name can close the element (`</script>`) or open a comment;
//! * the script puts data into the page only as text (`textContent`,
//!   `setAttribute` on attributes that are not URLs or handlers), never as
//!   markup;
//! * a Content-Security-Policy allows only the page's own script (by nonce)
//!   and style: no network, no inline handlers, even if markup got in.

mod compact;
mod snapshots;

use std::{hash::BuildHasher, io::Write};

use anyhow::Context as _;

pub use snapshots::{merge_snapshots, read_snapshots};

use super::Report;

const TEMPLATE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// Writes the page for `report`.
pub fn write_html(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let value = serde_json::to_value(report).context("cannot encode the report")?;
    render(value, 0, out)
}

/// Writes the page for a report read as JSON; `snapshots` is how many
/// snapshots were merged into it (shown on the page).
pub fn render(
    mut report: serde_json::Value,
    snapshots: usize,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut table = compact::FrameTable::default();
    table.compact(&mut report);
    let (strings, frames) = table.into_tables();
    let data = serde_json::json!({
        "strings": strings,
        "frames": frames,
        "report": report,
        "snapshots": snapshots,
        "generator": concat!("alloctrace ", env!("CARGO_PKG_VERSION")),
    });
    let data = embeddable_json(&data)?;
    let nonce = nonce();
    let page = TEMPLATE
        .replace("{{NONCE}}", &nonce)
        .replace("{{STYLE}}", STYLE)
        .replace("{{SCRIPT}}", SCRIPT)
        // Last: the data may contain any of the markers above.
        .replace("{{DATA}}", &data);
    out.write_all(page.as_bytes())?;
    Ok(())
}

/// JSON that can sit inside a `<script>` element: `<`, `>` and `&` only
/// occur inside JSON strings, where their `\u` escapes mean the same.
fn embeddable_json(value: &serde_json::Value) -> anyhow::Result<String> {
    let json = serde_json::to_string(value)?;
    let mut escaped = String::with_capacity(json.len() + json.len() / 64);
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            // Line separators end a line in older JavaScript parsers.
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    Ok(escaped)
}

/// A fresh value per page for the CSP's script nonce.
fn nonce() -> String {
    let random = std::collections::hash_map::RandomState::new();
    format!(
        "{:016x}{:016x}",
        random.hash_one(std::process::id()),
        random.hash_one(std::time::SystemTime::now())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(report: serde_json::Value) -> String {
        let mut out = Vec::new();
        render(report, 0, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn names_cannot_close_the_data_element_or_open_a_comment() {
        let hostile = "</script><script>alert(1)</script><!-- & \u{2028}";
        let page = page_of(serde_json::json!({"processes": [{"comm": hostile}]}));
        assert!(!page.contains(hostile));
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
        assert!(!page.contains("<!--"));
        let start = page.find("application/json").unwrap();
        let json = &page[page[start..].find('>').unwrap() + start + 1..];
        let json = &json[..json.find("</script>").unwrap()];
        let data: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(data["report"]["processes"][0]["comm"], hostile);
    }

    #[test]
    fn markers_in_the_data_are_not_expanded() {
        let page = page_of(serde_json::json!({"comm": "{{SCRIPT}} {{NONCE}}"}));
        assert!(page.contains("{{SCRIPT}} {{NONCE}}"));
        assert_eq!(page.matches("'use strict'").count(), 1);
    }

    #[test]
    fn the_page_allows_no_network_and_only_its_own_script() {
        let page = page_of(serde_json::json!({}));
        let csp_start = page.find("Content-Security-Policy").unwrap();
        let csp = &page[csp_start..csp_start + page[csp_start..].find('>').unwrap()];
        assert!(csp.contains("default-src 'none'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        let nonce = &csp[csp.find("'nonce-").unwrap() + 7..];
        let nonce = &nonce[..nonce.find('\'').unwrap()];
        assert_eq!(nonce.len(), 32);
        assert!(page.contains(&format!("<script nonce=\"{nonce}\">")));
    }
}
