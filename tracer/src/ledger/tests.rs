//! The ledger's rules, one behaviour per test.

use super::*;
use tracer_ebpf::NO_STACK;

const MAIN: u32 = 100;
const SECOND: u64 = 1_000_000_000;
const OTHER: u32 = 101;

fn event(kind: EventKind, tid: u32, addr: u64, old_addr: u64, size: u64, stack: i32) -> Event {
    Event {
        kind: kind as u32,
        tid,
        pid: MAIN,
        stack_id: stack,
        size,
        addr,
        old_addr,
        timestamp_ns: 10 * SECOND,
        stack_hash: 0,
    }
}

fn alloc(addr: u64, size: u64, stack: i32) -> Event {
    event(EventKind::Alloc, MAIN, addr, 0, size, stack)
}

fn free(addr: u64) -> Event {
    event(EventKind::Free, MAIN, addr, 0, 0, NO_STACK)
}

fn realloc(tid: u32, old: u64, new: u64, size: u64, stack: i32) -> [Event; 2] {
    [
        event(EventKind::ReallocStart, tid, 0, old, size, NO_STACK),
        event(EventKind::ReallocEnd, tid, new, old, size, stack),
    ]
}

fn ledger_after(events: &[Event]) -> Ledger {
    let mut ledger = Ledger::new(Budget::new(u64::MAX), None);
    events.iter().for_each(|e| apply(&mut ledger, e));
    ledger
}

/// The tests name stacks by number in the event's `stack_id`; `NO_STACK`
/// is no stack.
fn stack_of(event: &Event) -> StackId {
    StackId::from(u32::try_from(event.stack_id).unwrap_or(0))
}

fn apply(ledger: &mut Ledger, event: &Event) {
    ledger.apply(event, stack_of(event));
}

fn usage(ledger: &Ledger) -> Vec<(u32, u64, u64)> {
    ledger
        .usage_by_stack(u64::MAX)
        .into_iter()
        .map(|u| (u.stack.get(), u.bytes, u.count))
        .collect()
}

#[test]
fn freed_blocks_leave_nothing_outstanding() {
    let ledger = ledger_after(&[alloc(0x10, 32, 1), alloc(0x20, 64, 1), free(0x10)]);
    assert_eq!(usage(&ledger), vec![(1, 64, 1)]);
    let totals = ledger.totals();
    assert_eq!((totals.allocs, totals.frees), (2, 1));
    assert_eq!(
        (totals.outstanding_bytes, totals.outstanding_count),
        (64, 1)
    );
}

#[test]
fn allocated_totals_count_every_allocation_per_stack_freed_or_not() {
    let [start, end] = realloc(MAIN, 0x10, 0x80, 500, 2);
    let ledger = ledger_after(&[
        alloc(0x10, 100, 1),
        free(0x10),
        alloc(0x10, 30, 1),
        start,
        end,
    ]);
    let allocated = ledger.allocated_by_stack();
    assert_eq!(
        allocated[&StackId::from(1)],
        Allocated {
            bytes: 130,
            count: 2,
            // The free came at once; the realloc's release is not a free.
            temporary_bytes: 100,
            temporary_count: 1,
            replaced_bytes: 0,
        }
    );
    assert_eq!(
        allocated[&StackId::from(2)],
        Allocated {
            bytes: 500,
            count: 1,
            ..Allocated::default()
        }
    );
    assert_eq!(ledger.totals().allocated_bytes, 630);
    let live: Vec<LiveBlock> = ledger.live_blocks().collect();
    assert_eq!(
        live,
        [LiveBlock {
            stack: StackId::from(2),
            size: 500,
            timestamp_ns: 10 * SECOND
        }]
    );
}

#[test]
fn frees_of_blocks_from_before_tracing_are_counted_apart() {
    let ledger = ledger_after(&[free(0x99), alloc(0x10, 8, 1)]);
    let totals = ledger.totals();
    assert_eq!((totals.frees, totals.preexisting_frees), (0, 1));
    assert_eq!(totals.outstanding_bytes, 8);
}

#[test]
fn realloc_that_moves_reattributes_the_block_to_the_realloc_stack() {
    let [start, end] = realloc(MAIN, 0x10, 0x80, 500, 2);
    let ledger = ledger_after(&[alloc(0x10, 100, 1), start, end]);
    assert_eq!(usage(&ledger), vec![(2, 500, 1)]);
    assert_eq!(ledger.totals().outstanding_count, 1);
}

#[test]
fn realloc_in_place_growth_and_shrink_keep_one_block_at_the_new_size() {
    let [s1, e1] = realloc(MAIN, 0x10, 0x10, 4096, 2);
    let [s2, e2] = realloc(MAIN, 0x10, 0x10, 24, 3);
    let ledger = ledger_after(&[alloc(0x10, 100, 1), s1, e1, s2, e2]);
    assert_eq!(usage(&ledger), vec![(3, 24, 1)]);
    assert_eq!(ledger.totals().outstanding_bytes, 24);
}

#[test]
fn realloc_of_null_is_an_allocation() {
    // The kernel sends no start for realloc(NULL, n).
    let end = event(EventKind::ReallocEnd, MAIN, 0x40, 0, 72, 5);
    let ledger = ledger_after(&[end]);
    assert_eq!(usage(&ledger), vec![(5, 72, 1)]);
    assert_eq!(ledger.totals().preexisting_frees, 0);
}

#[test]
fn realloc_to_zero_frees_the_block() {
    let [start, end] = realloc(MAIN, 0x10, 0, 0, NO_STACK);
    let ledger = ledger_after(&[alloc(0x10, 100, 1), start, end]);
    assert!(usage(&ledger).is_empty());
    assert_eq!(ledger.totals().frees, 1);
}

#[test]
fn failed_realloc_leaves_the_old_block_outstanding() {
    let [start, end] = realloc(MAIN, 0x10, 0, 1 << 40, NO_STACK);
    let ledger = ledger_after(&[alloc(0x10, 100, 1), start, end]);
    assert_eq!(usage(&ledger), vec![(1, 100, 1)]);
    assert_eq!(ledger.totals().outstanding_bytes, 100);
}

#[test]
fn address_released_by_realloc_can_be_reused_by_another_thread_before_realloc_returns() {
    // Thread MAIN moves 0x10 to 0x80; before its realloc returns, OTHER
    // is handed 0x10. The start event took 0x10 out of the ledger first.
    let [start, end] = realloc(MAIN, 0x10, 0x80, 200, 2);
    let reuse = event(EventKind::Alloc, OTHER, 0x10, 0, 16, 3);
    let ledger = ledger_after(&[alloc(0x10, 100, 1), start, reuse, end]);
    assert_eq!(usage(&ledger), vec![(2, 200, 1), (3, 16, 1)]);
    assert_eq!(ledger.overwritten(), 0);
    assert_eq!(ledger.totals().outstanding_bytes, 216);
}

#[test]
fn concurrent_reallocs_on_two_threads_are_kept_apart() {
    let [s1, e1] = realloc(MAIN, 0x10, 0x100, 300, 2);
    let [s2, e2] = realloc(OTHER, 0x20, 0x200, 400, 3);
    let ledger = ledger_after(&[alloc(0x10, 1, 1), alloc(0x20, 1, 1), s1, s2, e2, e1]);
    assert_eq!(usage(&ledger), vec![(3, 400, 1), (2, 300, 1)]);
}

#[test]
fn address_reuse_after_free_tracks_the_new_block() {
    let ledger = ledger_after(&[alloc(0x10, 8, 1), free(0x10), alloc(0x10, 16, 2)]);
    assert_eq!(usage(&ledger), vec![(2, 16, 1)]);
    assert_eq!(ledger.overwritten(), 0);
}

#[test]
fn allocation_over_a_live_block_is_flagged_and_replaces_it() {
    // Only possible when the free in between was lost.
    let ledger = ledger_after(&[alloc(0x10, 8, 1), alloc(0x10, 16, 2)]);
    assert_eq!(usage(&ledger), vec![(2, 16, 1)]);
    assert_eq!(ledger.overwritten(), 1);
    assert_eq!(ledger.totals().outstanding_bytes, 16);
}

#[test]
fn usage_leaves_out_blocks_younger_than_the_cutoff() {
    let mut young = alloc(0x20, 64, 2);
    young.timestamp_ns = 15 * SECOND;
    let ledger = ledger_after(&[alloc(0x10, 8, 1), young]);
    assert_eq!(
        ledger.usage_by_stack(12 * SECOND),
        vec![StackUsage {
            stack: StackId::from(1),
            bytes: 8,
            count: 1,
            oldest_ns: 10 * SECOND,
            approximate: false,
        }]
    );
}

#[test]
fn beyond_max_tracked_allocations_are_dropped_and_counted() {
    let mut ledger = Ledger::new(Budget::new(2), None);
    for e in [alloc(0x10, 8, 1), alloc(0x20, 8, 1), alloc(0x30, 100, 2)] {
        apply(&mut ledger, &e);
    }
    assert_eq!(usage(&ledger), vec![(1, 16, 2)]);
    let totals = ledger.totals();
    assert_eq!((totals.dropped_allocations, totals.dropped_bytes), (1, 100));
    // Room again after a free.
    apply(&mut ledger, &free(0x10));
    apply(&mut ledger, &alloc(0x30, 100, 2));
    assert_eq!(usage(&ledger), vec![(2, 100, 1), (1, 8, 1)]);
}

#[test]
fn stacks_with_blocks_live_at_a_loss_are_approximate() {
    let mut late = alloc(0x20, 64, 2);
    late.timestamp_ns = 20 * SECOND;
    let mut ledger = ledger_after(&[alloc(0x10, 8, 1)]);
    ledger.note_loss(15 * SECOND);
    apply(&mut ledger, &late);
    let approximate: Vec<(u32, bool)> = ledger
        .usage_by_stack(u64::MAX)
        .iter()
        .map(|u| (u.stack.get(), u.approximate))
        .collect();
    assert_eq!(approximate, vec![(2, false), (1, true)]);
}

#[test]
fn ledgers_sharing_a_budget_cap_their_blocks_together_and_give_them_back_when_dropped() {
    let budget = Budget::new(3);
    let mut first = Ledger::new(budget.clone(), None);
    let mut second = Ledger::new(budget.clone(), None);
    for e in [alloc(0x10, 8, 1), alloc(0x20, 8, 1)] {
        apply(&mut first, &e);
    }
    for e in [alloc(0x10, 8, 2), alloc(0x20, 8, 2)] {
        apply(&mut second, &e);
    }
    assert_eq!(budget.used(), 3);
    assert_eq!(second.totals().dropped_allocations, 1);
    drop(first);
    assert_eq!(budget.used(), 1);
    apply(&mut second, &alloc(0x30, 8, 2));
    assert_eq!(usage(&second), vec![(2, 16, 2)]);
}

fn peak_stacks(ledger: &Ledger) -> Vec<(u32, u64)> {
    let stacks = ledger.stacks_at_peak().into_iter();
    stacks.map(|(stack, bytes)| (stack.get(), bytes)).collect()
}

fn at(mut event: Event, ms: u64) -> Event {
    event.timestamp_ns = 10 * SECOND + ms * 1_000_000;
    event
}

#[test]
fn blocks_freed_within_the_temporary_time_are_temporary() {
    let limit_ms = TEMPORARY_NS / 1_000_000;
    let ledger = ledger_after(&[
        at(alloc(0x10, 8, 1), 0),
        at(alloc(0x20, 16, 1), 0),
        at(alloc(0x30, 32, 2), 0),
        at(free(0x10), limit_ms),
        at(free(0x20), limit_ms + 1),
        at(free(0x30), 1),
    ]);
    let allocated = ledger.allocated_by_stack();
    assert_eq!(
        (
            allocated[&StackId::from(1)].temporary_count,
            allocated[&StackId::from(1)].temporary_bytes
        ),
        (1, 8)
    );
    assert_eq!(
        (
            allocated[&StackId::from(2)].temporary_count,
            allocated[&StackId::from(2)].temporary_bytes
        ),
        (1, 32)
    );
}

#[test]
fn the_peak_is_the_largest_total_and_names_what_each_stack_held_then() {
    let [start, end] = realloc(MAIN, 0x40, 0x50, 10, 3);
    let ledger = ledger_after(&[
        at(alloc(0x10, 100, 1), 0),
        at(alloc(0x20, 50, 2), 1),
        // Peak: 100 (stack 1) + 50 (stack 2) + 30 (stack 3) = 180 at 2 ms.
        at(alloc(0x40, 30, 3), 2),
        at(free(0x10), 3),
        // Stack 2 grows past its peak share, but the total stays lower.
        at(alloc(0x30, 60, 2), 4),
        at(start, 5),
        at(end, 5),
    ]);
    let peak = ledger.peak();
    assert_eq!((peak.bytes, peak.count), (180, 3));
    assert_eq!(peak.at_ns, 10 * SECOND + 2_000_000);
    assert_eq!(peak_stacks(&ledger), [(1, 100), (2, 50), (3, 30)]);
    assert_eq!(ledger.totals().outstanding_bytes, 120);
}

#[test]
fn a_new_peak_replaces_the_stacks_held_at_the_old_one() {
    let ledger = ledger_after(&[
        at(alloc(0x10, 100, 1), 0),
        at(free(0x10), 1),
        at(alloc(0x20, 70, 2), 2),
        at(alloc(0x30, 70, 3), 3),
    ]);
    assert_eq!(ledger.peak().bytes, 140);
    assert_eq!(peak_stacks(&ledger), [(2, 70), (3, 70)]);
}

fn replaced(ledger: &Ledger, stack: u32) -> u64 {
    ledger.allocated_by_stack()[&StackId::from(stack)].replaced_bytes
}

#[test]
fn an_allocation_right_after_its_thread_freed_a_block_from_before_tracing_replaces_it() {
    let [start, end] = realloc(MAIN, 0x900, 0x40, 70, 4);
    let ledger = ledger_after(&[
        // 0x800 is from before tracing: the next allocation on this thread
        // replaces it; one on another thread, or after a known free, does not.
        free(0x800),
        alloc(0x10, 8, 1),
        alloc(0x20, 16, 1),
        free(0x810),
        event(EventKind::Alloc, OTHER, 0x30, 0, 32, 2),
        alloc(0x50, 64, 3),
        free(0x50),
        alloc(0x60, 128, 3),
        // A realloc of a block from before tracing replaces it.
        start,
        end,
    ]);
    assert_eq!(replaced(&ledger, 1), 8);
    assert_eq!(replaced(&ledger, 2), 0);
    assert_eq!(replaced(&ledger, 3), 64);
    assert_eq!(replaced(&ledger, 4), 70);
}

#[test]
fn a_stack_is_kept_while_it_holds_a_block_of_any_size_or_held_bytes_at_the_peak() {
    let [start, _] = realloc(OTHER, 0x30, 0x40, 8, 4);
    let mut ledger = ledger_after(&[
        alloc(0x10, 100, 1),
        free(0x10),
        alloc(0x20, 0, 2),
        alloc(0x30, 1, 4),
        start,
        alloc(0x50, 200, 3),
        free(0x50),
    ]);
    // Stack 1 held its 100 bytes at a peak, 200 bytes ago; stack 3 made
    // the current peak, then freed it.
    {
        let keeps = ledger.keeps_stacks();
        assert!(keeps(StackId::from(2)), "a block of 0 bytes");
        assert!(
            keeps(StackId::from(4)),
            "a block whose realloc is in flight"
        );
        assert!(keeps(StackId::from(3)), "bytes at the peak");
        assert!(!keeps(StackId::from(1)));
    }
    apply(&mut ledger, &alloc(0x60, 500, 5));
    let keeps = ledger.keeps_stacks();
    assert!(!keeps(StackId::from(3)), "a peak since, without it");
    assert!(keeps(StackId::from(5)));
}
