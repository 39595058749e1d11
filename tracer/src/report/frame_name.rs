//! How stacks of different reports are matched: by their frames' names,
//! never by address (ASLR and rebuilds move addresses). `diff` and the HTML
//! report's snapshots both match stacks this way.

use serde::Deserialize;

/// A saved report's frame, as far as matching goes.
#[derive(Debug, Deserialize)]
pub struct FrameName {
    function: Option<String>,
    module: Option<String>,
}

impl FrameName {
    /// The frame's name across runs: no address, no offset.
    pub fn key(&self) -> String {
        match (&self.function, &self.module) {
            (Some(function), _) => function.clone(),
            (None, Some(module)) => {
                let path = module
                    .rsplit_once("+0x")
                    .map_or(module.as_str(), |(path, _)| path);
                format!("[{path}]")
            }
            (None, None) => "[unknown]".to_owned(),
        }
    }
}
