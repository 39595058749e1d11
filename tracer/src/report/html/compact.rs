//! The report as the page embeds it: every stack's frames as indices into
//! one table of distinct frames, whose strings are indices into one table
//! of distinct strings.
//!
//! Stacks share most of their frames and frames their modules and files,
//! so this is what lets a big report open quickly. Measured on a synthetic
//! report of 100k stacks 8–17 frames deep: 345 MB of pretty JSON made a
//! 243 MB page when embedded as is, and a 12 MB one compacted. Addresses are
//! dropped (the page shows names, never addresses).
//!
//! Embedded form: `{"strings": [..], "frames": [[function, module, file,
//! line, inlined], ..], "report": ..}`, with `function`, `module` and
//! `file` indices into `strings` or null, and each `frames` array of the
//! report (in stacks, suspects, or any key added later) a list of indices
//! into `frames`. The page's script expands it back.
//!
//! The page lists at most [`TABLE_ROWS`] entries of any list of stacks and
//! draws the rest in flamegraphs only, so entries past that keep only
//! their frames, `pid` and numbers of bytes and blocks.

use std::collections::HashMap;

use serde_json::{Value, json};

#[derive(Default)]
pub struct FrameTable {
    strings: Vec<String>,
    string_ids: HashMap<String, usize>,
    frames: Vec<Value>,
    frame_ids: HashMap<FrameKey, usize>,
}

/// Rows of a stack list the page shows in a table (`MAX_ROWS` in
/// page.js).
pub const TABLE_ROWS: usize = 50;

type FrameKey = (
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<u64>,
    bool,
);

impl FrameTable {
    /// Replaces, anywhere in `value`, each `frames` array of frame objects
    /// with indices into this table.
    pub fn compact(&mut self, value: &mut Value) {
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    if index >= TABLE_ROWS && item["frames"].is_array() {
                        keep_flamegraph_keys(item);
                    }
                    self.compact(item);
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if key == "frames" && is_frame_list(item) {
                        let ids = item
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|frame| json!(self.frame_id(frame)))
                            .collect();
                        *item = Value::Array(ids);
                    } else {
                        self.compact(item);
                    }
                }
            }
            _ => {}
        }
    }

    /// `(strings, frames)`, for the page.
    pub fn into_tables(self) -> (Vec<String>, Vec<Value>) {
        (self.strings, self.frames)
    }

    fn frame_id(&mut self, frame: &Value) -> usize {
        let key = (
            self.string_id(&frame["function"]),
            self.string_id(&frame["module"]),
            self.string_id(&frame["file"]),
            frame["line"].as_u64(),
            frame["inlined"].as_bool().unwrap_or(false),
        );
        if let Some(&id) = self.frame_ids.get(&key) {
            return id;
        }
        let (function, module, file, line, inlined) = key;
        self.frames
            .push(json!([function, module, file, line, u8::from(inlined)]));
        self.frame_ids.insert(key, self.frames.len() - 1);
        self.frames.len() - 1
    }

    fn string_id(&mut self, value: &Value) -> Option<usize> {
        let text = value.as_str()?;
        if let Some(&id) = self.string_ids.get(text) {
            return Some(id);
        }
        self.strings.push(text.to_owned());
        self.string_ids
            .insert(text.to_owned(), self.strings.len() - 1);
        Some(self.strings.len() - 1)
    }
}

/// What a flamegraph needs of a stack beyond the table's rows.
fn keep_flamegraph_keys(stack: &mut Value) {
    if let Value::Object(map) = stack {
        map.retain(|key, value| {
            key == "frames"
                || key == "pid"
                || value.is_number() && (key.contains("bytes") || key.contains("count"))
        });
    }
}

/// A report's frames: objects (an empty list needs no compacting).
fn is_frame_list(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|frames| !frames.is_empty() && frames.iter().all(Value::is_object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_frames_and_strings_are_stored_once() {
        let frame = |function: &str, line: u64| {
            json!({"address": "0x1", "function": function, "module": "/bin/x",
                   "file": "x.c", "line": line, "inlined": false})
        };
        let mut report = json!({
            "processes": [{"stacks": [
                {"bytes": 1, "frames": [frame("leak", 3), frame("main", 9)]},
                {"bytes": 2, "frames": [frame("cache", 5), frame("main", 9)]}]}],
            "suspects": [{"frames": [frame("leak", 3), {"address": "0x2"}]}],
            "empty": {"frames": []},
        });
        let mut table = FrameTable::default();
        table.compact(&mut report);
        let (strings, frames) = table.into_tables();
        assert_eq!(report["processes"][0]["stacks"][0]["frames"], json!([0, 1]));
        assert_eq!(report["processes"][0]["stacks"][1]["frames"], json!([2, 1]));
        assert_eq!(report["suspects"][0]["frames"], json!([0, 3]));
        assert_eq!(report["empty"]["frames"], json!([]));
        assert_eq!(strings, ["leak", "/bin/x", "x.c", "main", "cache"]);
        assert_eq!(frames[1], json!([3, 1, 2, 9, 0]));
        assert_eq!(frames[3], json!([null, null, null, null, 0]));
    }

    #[test]
    fn stacks_past_the_table_keep_what_a_flamegraph_needs() {
        let stack = json!({"pid": 1, "bytes": 5, "count": 1, "allocated_bytes": 9,
                           "oldest_age_s": 1.5, "approximate": false,
                           "age_bytes": {"older": 5}, "frames": []});
        let mut list = Value::Array(vec![stack.clone(); TABLE_ROWS + 1]);
        FrameTable::default().compact(&mut list);
        assert_eq!(list[TABLE_ROWS - 1], stack);
        assert_eq!(
            list[TABLE_ROWS],
            json!({"pid": 1, "bytes": 5, "count": 1, "allocated_bytes": 9, "frames": []})
        );
    }
}
