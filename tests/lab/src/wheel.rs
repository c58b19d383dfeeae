//! A hashed timing wheel for the emulator's delayed answers: O(1) insertion, and one
//! wake-up for whatever is due, however many answers are in flight. Items further out
//! than the wheel's span wait in an overflow heap until they come within it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub struct Wheel<T> {
    tick_ns: u64,
    slots: Vec<Vec<(u64, u64, T)>>,
    /// The first tick not yet drained.
    cursor: u64,
    overflow: BinaryHeap<Reverse<(u64, u64)>>,
    overflow_items: std::collections::HashMap<u64, T>,
    seq: u64,
    len: usize,
}

impl<T> Wheel<T> {
    /// `slots` × `tick_ns` is the span; `now_ns` is where the clock starts.
    pub fn new(tick_ns: u64, slots: usize, now_ns: u64) -> Self {
        Wheel {
            tick_ns: tick_ns.max(1),
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            cursor: now_ns / tick_ns.max(1),
            overflow: BinaryHeap::new(),
            overflow_items: std::collections::HashMap::new(),
            seq: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn span_ticks(&self) -> u64 {
        self.slots.len() as u64
    }

    pub fn insert(&mut self, due_ns: u64, item: T) {
        self.seq += 1;
        self.len += 1;
        let tick = (due_ns / self.tick_ns).max(self.cursor);
        if tick >= self.cursor + self.span_ticks() {
            self.overflow.push(Reverse((due_ns, self.seq)));
            self.overflow_items.insert(self.seq, item);
        } else {
            let n = self.slots.len() as u64;
            self.slots[(tick % n) as usize].push((due_ns, self.seq, item));
        }
    }

    /// Everything due at or before `now_ns`, earliest first.
    pub fn poll(&mut self, now_ns: u64) -> Vec<T> {
        let mut due: Vec<(u64, u64, T)> = Vec::new();
        let now_tick = now_ns / self.tick_ns;
        let n = self.slots.len() as u64;
        // Walk at most one turn: past that, every slot has been visited.
        let last = now_tick.min(self.cursor + n - 1);
        while self.cursor <= last {
            let slot = &mut self.slots[(self.cursor % n) as usize];
            if self.cursor < now_tick {
                due.append(slot);
            } else {
                // The current tick: only what is due by now; the rest stays.
                let mut keep = Vec::new();
                for e in slot.drain(..) {
                    if e.0 <= now_ns {
                        due.push(e);
                    } else {
                        keep.push(e);
                    }
                }
                *slot = keep;
                break;
            }
            self.cursor += 1;
        }
        if now_tick > last {
            self.cursor = now_tick;
        }
        // Pull overflow items that are now within the span (or already due).
        while let Some(&Reverse((at, seq))) = self.overflow.peek() {
            if at / self.tick_ns >= self.cursor + n {
                break;
            }
            self.overflow.pop();
            if let Some(item) = self.overflow_items.remove(&seq) {
                if at <= now_ns {
                    due.push((at, seq, item));
                } else {
                    let tick = (at / self.tick_ns).max(self.cursor);
                    self.slots[(tick % n) as usize].push((at, seq, item));
                }
            }
        }
        self.len -= due.len();
        due.sort_by_key(|e| (e.0, e.1));
        due.into_iter().map(|e| e.2).collect()
    }

    /// The earliest due instant, if anything is waiting.
    pub fn next_due(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len() as u64;
        for t in self.cursor..self.cursor + n {
            let slot = &self.slots[(t % n) as usize];
            if let Some(m) = slot.iter().map(|e| e.0).min() {
                return Some(m);
            }
        }
        self.overflow.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_items_in_order_at_their_time() {
        let mut w = Wheel::new(50_000, 64, 0);
        for (due, v) in [
            (130_000, 'c'),
            (10_000, 'a'),
            (60_000, 'b'),
            (10_000_000, 'z'),
        ] {
            w.insert(due, v);
        }
        assert_eq!(w.len(), 4);
        assert_eq!(w.next_due(), Some(10_000));
        assert_eq!(w.poll(9_999), Vec::<char>::new());
        assert_eq!(w.poll(60_000), vec!['a', 'b']);
        assert_eq!(w.next_due(), Some(130_000));
        assert_eq!(w.poll(200_000), vec!['c']);
        // 'z' lies beyond the span (64 × 50 µs): it waits in the overflow.
        assert_eq!(w.next_due(), Some(10_000_000));
        assert_eq!(w.poll(9_999_999), Vec::<char>::new());
        assert_eq!(w.poll(10_000_000), vec!['z']);
        assert!(w.is_empty());
    }

    #[test]
    fn a_late_poll_and_past_due_inserts_lose_nothing() {
        let mut w = Wheel::new(1_000, 8, 0);
        for i in 0..100u64 {
            w.insert(i * 700, i);
        }
        w.insert(5, 1000); // already due
        let got = w.poll(1_000_000);
        assert_eq!(got.len(), 101);
        assert!(w.is_empty());
        w.insert(0, 7); // in the past relative to the cursor
        assert_eq!(w.poll(1_000_001), vec![7]);
    }
}
