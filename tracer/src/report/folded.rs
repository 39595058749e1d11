//! Brendan Gregg's folded stack format: one line per stack, frames from the
//! outermost to the leaf joined by `;`, then a space and the weight (here,
//! outstanding bytes). This is also what the flamegraph is drawn from.

use super::{StackKind, StackReport};

/// The folded lines for `stacks`, in their order. When mapped memory (or
/// the kernel's) is among them, each line starts at a root frame naming its
/// kind, `[heap]`, `[mmap]` or `[kernel]`, so the flamegraph splits them at
/// its base.
pub fn folded_lines(stacks: &[StackReport]) -> Vec<String> {
    let by_kind = stacks.iter().any(|stack| stack.kind != StackKind::Heap);
    stacks
        .iter()
        .filter(|stack| stack.bytes > 0)
        .map(|stack| {
            let mut labels: Vec<String> = stack.frames.iter().map(|frame| frame.label()).collect();
            if by_kind {
                labels.push(kind_root(stack.kind).to_owned());
            }
            folded_line(&labels, stack.bytes)
        })
        .collect()
}

fn kind_root(kind: StackKind) -> &'static str {
    match kind {
        StackKind::Heap => "[heap]",
        StackKind::Mmap => "[mmap]",
        StackKind::Kernel => "[kernel]",
    }
}

/// The folded lines for `stacks` under one more root frame, e.g. the
/// `comm (pid)` of host-wide mode's combined flamegraph. Only `;` is
/// replaced in it: readers split the weight off at the last space.
pub fn folded_lines_under(root: &str, stacks: &[StackReport]) -> Vec<String> {
    let root = root.replace(';', ":");
    folded_lines(stacks)
        .into_iter()
        .map(|line| format!("{root};{line}"))
        .collect()
}

/// One folded line for a stack given by its frame labels, leaf first.
pub fn folded_line(leaf_first: &[String], weight: u64) -> String {
    let path: Vec<String> = if leaf_first.is_empty() {
        vec!["[no stack]".to_owned()]
    } else {
        leaf_first
            .iter()
            .rev()
            .map(|label| sanitize(label))
            .collect()
    };
    format!("{} {weight}", path.join(";"))
}

/// `;` separates frames and the last space the weight, so neither may appear
/// inside a frame name (C++ names contain spaces: `operator new`).
fn sanitize(label: &str) -> String {
    label.replace(';', ":").replace(' ', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_stack as stack;

    #[test]
    fn lines_run_from_the_outermost_frame_to_the_leaf() {
        let stacks = [
            stack(4096, &["leak", "handle", "main"]),
            stack(16, &["cache_put", "main"]),
        ];
        assert_eq!(
            folded_lines(&stacks),
            ["main;handle;leak 4096", "main;cache_put 16"]
        );
    }

    #[test]
    fn separators_inside_names_are_replaced() {
        let stacks = [stack(8, &["operator new(unsigned long)", "a;b"])];
        assert_eq!(folded_lines(&stacks), ["a:b;operator_new(unsigned_long) 8"]);
    }

    #[test]
    fn lines_can_hang_under_a_process_frame() {
        let stacks = [stack(4096, &["leak", "main"])];
        assert_eq!(
            folded_lines_under("leaky (42)", &stacks),
            ["leaky (42);main;leak 4096"]
        );
    }

    #[test]
    fn stacks_without_frames_are_kept_under_a_label() {
        assert_eq!(folded_lines(&[stack(32, &[])]), ["[no stack] 32"]);
    }
}
