//! A ring of time slots, the one both the scaler's per-second buckets ([`crate::window`]) and the
//! SMI API's 10-second slots ([`crate::traffic`]) are made of. Each slot knows which slot of time
//! it holds, so a slot reused for a later time reads as lost for the earlier one; a write older
//! than the ring keeps, or later than now plus [`MAX_SKEW_MS`], is refused rather than taking the
//! place of a slot still kept.

use crate::validate::MAX_SKEW_MS;

/// `len` consecutive slots of `slot_ms`, ending with the one `now` is in.
#[derive(Debug, Clone)]
pub struct TimeRing<B> {
    slot_ms: i64,
    /// (slot number: time / `slot_ms`, or `i64::MIN` when never written; its contents).
    slots: Box<[(i64, B)]>,
}

/// What a slot of time reads as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Read<'a, B> {
    Held(&'a B),
    /// Nothing was written for it (its slot is empty or holds an older time).
    Empty,
    /// Its slot was taken by a later time: unknown, not zero.
    Lost,
}

impl<B: Copy + Default> TimeRing<B> {
    pub fn new(slot_ms: i64, len: usize) -> Self {
        Self {
            slot_ms: slot_ms.max(1),
            slots: vec![(i64::MIN, B::default()); len.max(1)].into_boxed_slice(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot number of a time.
    pub fn number(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.slot_ms)
    }

    fn index(&self, n: i64) -> usize {
        let len = i64::try_from(self.slots.len()).unwrap_or(i64::MAX);
        usize::try_from(n.rem_euclid(len)).unwrap_or(0)
    }

    /// The oldest slot number kept at `now_ms`.
    pub fn oldest(&self, now_ms: i64) -> i64 {
        let len = i64::try_from(self.slots.len()).unwrap_or(i64::MAX);
        self.number(now_ms).saturating_sub(len - 1)
    }

    /// Slot number `n` to add to (cleared if it held an earlier time), or `None` when `n` is
    /// older than the ring keeps at `now_ms` or later than `now_ms` plus [`MAX_SKEW_MS`].
    pub fn write(&mut self, n: i64, now_ms: i64) -> Option<&mut B> {
        if n < self.oldest(now_ms) || n > self.number(now_ms.saturating_add(MAX_SKEW_MS)) {
            return None;
        }
        let i = self.index(n);
        let slot = &mut self.slots[i];
        if slot.0 > n {
            return None;
        }
        if slot.0 != n {
            *slot = (n, B::default());
        }
        Some(&mut slot.1)
    }

    pub fn read(&self, n: i64) -> Read<'_, B> {
        let (held, b) = &self.slots[self.index(n)];
        match (*held).cmp(&n) {
            std::cmp::Ordering::Equal => Read::Held(b),
            std::cmp::Ordering::Less => Read::Empty,
            std::cmp::Ordering::Greater => Read::Lost,
        }
    }

    /// Every slot written, with its slot number.
    pub fn held(&self) -> impl Iterator<Item = (i64, &B)> {
        self.slots
            .iter()
            .filter(|(n, _)| *n != i64::MIN)
            .map(|(n, b)| (*n, b))
    }

    /// The same ring with `len` slots, keeping what it holds.
    pub fn resized(&self, len: usize) -> Self {
        let mut bigger = Self::new(self.slot_ms, len);
        for (n, b) in self.held() {
            let i = bigger.index(n);
            if bigger.slots[i].0 < n {
                bigger.slots[i] = (n, *b);
            }
        }
        bigger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_know_their_time() {
        let mut r: TimeRing<u32> = TimeRing::new(1000, 3);
        *r.write(10, 10_000).unwrap() += 1;
        *r.write(9, 10_000).unwrap() += 2;
        assert_eq!(r.read(10), Read::Held(&1));
        assert_eq!(r.read(7), Read::Lost, "slot 7's place holds 10");
        assert_eq!(r.read(8), Read::Empty);
        assert!(r.write(7, 10_000).is_none(), "older than kept");
        assert!(r.write(12, 10_000).is_none(), "later than now + 1 s");
        *r.write(11, 10_000).unwrap() += 4;
        assert_eq!(r.read(8), Read::Lost);
        let big = r.resized(10);
        assert_eq!(
            (big.read(9), big.read(10), big.read(11)),
            (Read::Held(&2), Read::Held(&1), Read::Held(&4))
        );
    }
}
