//! The emulator's delayed answers, in order of their due instant.
//!
//! A binary heap rather than a timing wheel: the emulator asks "what is due next?" after
//! every packet it reads, so that answers falling due during a burst leave on time, and
//! the heap answers that in O(1) where the wheel had to scan its slots (up to its whole
//! span when little was pending). Insertion and removal are O(log n) for the few
//! thousand answers in flight per emulator thread.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

#[derive(Debug)]
struct Entry<T> {
    due_ns: u64,
    /// Insertion order: answers due at the same instant leave in the order they were made.
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.seq) == (other.due_ns, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_ns, self.seq).cmp(&(other.due_ns, other.seq))
    }
}

#[derive(Debug)]
pub struct DueQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        DueQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> DueQueue<T> {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn insert(&mut self, due_ns: u64, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due_ns,
            seq: self.seq,
            item,
        }));
    }

    /// The earliest due instant, if anything is waiting.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.due_ns)
    }

    /// The earliest item if it is due at or before `now_ns`, with its due instant.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(u64, T)> {
        if self.next_due()? > now_ns {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.due_ns, e.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut DueQueue<char>, now: u64) -> Vec<char> {
        std::iter::from_fn(|| q.pop_due(now).map(|(_, c)| c)).collect()
    }

    #[test]
    fn releases_items_in_order_at_their_time() {
        let mut q = DueQueue::default();
        for (due, v) in [
            (130_000, 'c'),
            (10_000, 'a'),
            (60_000, 'b'),
            (10_000_000, 'z'),
        ] {
            q.insert(due, v);
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_due(), Some(10_000));
        assert_eq!(drain(&mut q, 9_999), Vec::<char>::new());
        assert_eq!(drain(&mut q, 60_000), vec!['a', 'b']);
        assert_eq!(q.next_due(), Some(130_000));
        assert_eq!(drain(&mut q, 200_000), vec!['c']);
        assert_eq!(drain(&mut q, 9_999_999), Vec::<char>::new());
        assert_eq!(q.pop_due(10_000_000), Some((10_000_000, 'z')));
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn equal_instants_keep_insertion_order_and_past_items_leave_at_once() {
        let mut q = DueQueue::default();
        for (i, c) in ('a'..='j').enumerate() {
            q.insert(if i % 2 == 0 { 500 } else { 100 }, c);
        }
        q.insert(0, 'x'); // already due
        assert_eq!(
            drain(&mut q, 1_000),
            vec!['x', 'b', 'd', 'f', 'h', 'j', 'a', 'c', 'e', 'g', 'i']
        );
    }
}
