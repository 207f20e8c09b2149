//! The sliding window of recent model steps, fed at the plant's sample rate.
//!
//! A model step spans `decimation` samples: its V is the last sample's V,
//! its I the mean applied current over the step (matching the plant's
//! convention that a sample carries the current that led into it). The ring
//! is preallocated; `push` and `snapshot` never allocate, so the control
//! loop can own it.

/// Ring of the last `t_in` model steps.
#[derive(Clone, Debug)]
pub struct WindowRing {
    decimation: usize,
    v: Vec<f32>,
    i: Vec<f32>,
    head: usize,
    len: usize,
    /// Steps seen before a snapshot is taken (≤ the capacity).
    ready: usize,
    acc_i: f64,
    acc_n: usize,
}

impl WindowRing {
    /// `decimation`: samples per model step (≥ 1); `t_in`: steps kept.
    pub fn new(t_in: usize, decimation: usize) -> WindowRing {
        assert!(t_in >= 1 && decimation >= 1);
        WindowRing {
            decimation,
            v: vec![0.0; t_in],
            i: vec![0.0; t_in],
            head: 0,
            len: 0,
            ready: t_in,
            acc_i: 0.0,
            acc_n: 0,
        }
    }

    /// Snapshots from `steps` steps seen on, before the ring is full (the
    /// running model's window, in a ring sized for a longer one as well:
    /// the model `control.guard.revert` goes back to). The steps not yet
    /// seen read as 0, oldest.
    pub fn ready_at(mut self, steps: usize) -> WindowRing {
        self.ready = steps.clamp(1, self.v.len());
        self
    }

    /// Samples per model step for a model step `dt_ms` and a sample period,
    /// if the step is a whole number of samples.
    pub fn decimation_for(dt_ms: f64, sample_period_ms: f64) -> Option<usize> {
        let r = dt_ms / sample_period_ms;
        let n = r.round();
        (n >= 1.0 && (r - n).abs() < 1e-6 * r.max(1.0)).then_some(n as usize)
    }

    /// Feed one sample; returns true when it completed a model step.
    #[inline]
    pub fn push(&mut self, v_mv: f64, i_applied: f64) -> bool {
        self.acc_i += i_applied;
        self.acc_n += 1;
        if self.acc_n < self.decimation {
            return false;
        }
        let cap = self.v.len();
        self.v[self.head] = v_mv as f32;
        self.i[self.head] = (self.acc_i / self.acc_n as f64) as f32;
        self.head = (self.head + 1) % cap;
        self.len = (self.len + 1).min(cap);
        self.acc_i = 0.0;
        self.acc_n = 0;
        true
    }

    /// True once `t_in` steps (or those of [`WindowRing::ready_at`]) have
    /// been seen.
    pub fn is_full(&self) -> bool {
        self.len >= self.ready
    }

    /// Steps seen since the ring was made or last cleared, up to its
    /// capacity: a model reading more than these would read steps from
    /// before an interruption (or zeros), not this stretch of the cell.
    pub fn seen(&self) -> usize {
        self.len
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.acc_i = 0.0;
        self.acc_n = 0;
    }

    /// Copy the window, oldest first, into `v` and `i` (each `t_in` long).
    /// Returns false (and copies nothing) until the window is full.
    pub fn snapshot(&self, v: &mut [f32], i: &mut [f32]) -> bool {
        if !self.is_full() {
            return false;
        }
        let cap = self.v.len();
        let (older, newer) = (self.head, cap - self.head);
        v[..newer].copy_from_slice(&self.v[older..]);
        v[newer..].copy_from_slice(&self.v[..older]);
        i[..newer].copy_from_slice(&self.i[older..]);
        i[newer..].copy_from_slice(&self.i[..older]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimates_and_keeps_the_newest_steps_in_order() {
        let mut w = WindowRing::new(3, 2);
        let mut v = [0.0; 3];
        let mut i = [0.0; 3];
        for k in 0..9 {
            w.push(k as f64, (k % 2) as f64);
        }
        // Steps end at samples 1, 3, 5, 7: the last three are 3, 5, 7.
        assert!(w.snapshot(&mut v, &mut i));
        assert_eq!(v, [3.0, 5.0, 7.0]);
        assert_eq!(i, [0.5, 0.5, 0.5]);
        let mut fresh = WindowRing::new(3, 1);
        fresh.push(1.0, 0.0);
        assert!(!fresh.snapshot(&mut v, &mut i));
        // Ready at 2 of 3: the step not yet seen reads as 0, oldest.
        let mut early = WindowRing::new(3, 1).ready_at(2);
        early.push(1.0, 1.0);
        assert!(!early.snapshot(&mut v, &mut i));
        early.push(2.0, 1.0);
        assert!(early.snapshot(&mut v, &mut i));
        assert_eq!((v, i), ([0.0, 1.0, 2.0], [0.0, 1.0, 1.0]));
        // After a clear the older slots hold the time before it: `seen`
        // says how many steps are this stretch's own.
        for k in 3..6 {
            early.push(f64::from(k), 0.0);
        }
        assert_eq!(early.seen(), 3);
        early.clear();
        early.push(9.0, 0.0);
        early.push(10.0, 0.0);
        assert_eq!(early.seen(), 2);
        assert!(early.snapshot(&mut v, &mut i));
        assert_eq!(v[1..], [9.0, 10.0]);
    }

    #[test]
    fn decimation_must_be_whole() {
        assert_eq!(WindowRing::decimation_for(0.5, 0.1), Some(5));
        assert_eq!(WindowRing::decimation_for(0.1, 0.1), Some(1));
        assert_eq!(WindowRing::decimation_for(0.25, 0.1), None);
        assert_eq!(WindowRing::decimation_for(0.05, 0.1), None);
    }
}
