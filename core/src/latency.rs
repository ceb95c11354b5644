//! End-to-end latency as a histogram of fixed buckets, the shape a task reports it in: its
//! size does not grow with the rows a task writes (a status carrying one value per row outgrew
//! gRPC's message limit past about a million rows). Each bucket keeps its count and the sum of
//! its values, so the driver's Prometheus histogram, with the same bounds, gets the same bucket
//! counts and the same sum as if it had seen every value ([`LatencyHistogram::replay`]).

/// Upper bounds of the buckets, in seconds; one more bucket above the last (`+Inf`).
pub const LATENCY_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// Per bucket (the `+Inf` one last): how many values, and their sum in seconds.
    buckets: Vec<(u64, f64)>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: vec![(0, 0.0); LATENCY_BUCKETS.len() + 1] }
    }
}

/// A histogram from the wire whose bucket lists have the wrong length.
#[derive(Debug, thiserror::Error)]
#[error("a latency histogram has {counts} counts and {sums} sums; {want} buckets expected")]
pub struct BucketMismatch {
    pub counts: usize,
    pub sums: usize,
    pub want: usize,
}

impl LatencyHistogram {
    pub fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BUCKETS.len());
        let (count, sum) = &mut self.buckets[i];
        *count += 1;
        *sum += seconds;
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for ((c, s), (oc, os)) in self.buckets.iter_mut().zip(&other.buckets) {
            *c += oc;
            *s += os;
        }
    }

    /// Values observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(c, _)| c).sum()
    }

    /// Calls `observe` with each bucket's mean, as many times as the bucket's count: a mean lies
    /// in its own bucket, so a histogram with the same bounds ends with the same counts and sum.
    pub fn replay(&self, mut observe: impl FnMut(f64)) {
        for &(count, sum) in self.buckets.iter().filter(|(c, _)| *c > 0) {
            let mean = sum / count as f64;
            (0..count).for_each(|_| observe(mean));
        }
    }

    /// Per bucket: counts and sums (for the wire).
    pub fn parts(&self) -> (Vec<u64>, Vec<f64>) {
        self.buckets.iter().copied().unzip()
    }

    pub fn from_parts(counts: Vec<u64>, sums: Vec<f64>) -> Result<LatencyHistogram, BucketMismatch> {
        let want = LATENCY_BUCKETS.len() + 1;
        if counts.is_empty() && sums.is_empty() {
            return Ok(LatencyHistogram::default());
        }
        if counts.len() != want || sums.len() != want {
            return Err(BucketMismatch { counts: counts.len(), sums: sums.len(), want });
        }
        Ok(LatencyHistogram { buckets: counts.into_iter().zip(sums).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_gives_the_same_buckets_and_sum_as_every_value() {
        let values: Vec<f64> = (0..5000).map(|i| (i as f64 * 0.37) % 400.0).collect();
        let mut h = LatencyHistogram::default();
        values.iter().for_each(|&v| h.observe(v));
        let mut whole = LatencyHistogram::default();
        whole.merge(&h);
        let mut replayed = LatencyHistogram::default();
        h.replay(|v| replayed.observe(v));
        let counts = |h: &LatencyHistogram| h.parts().0;
        assert_eq!(counts(&replayed), counts(&whole));
        let (a, b): (f64, f64) = (replayed.parts().1.iter().sum(), values.iter().sum());
        assert!((a - b).abs() < 1e-6 * b, "{a} vs {b}");
        assert_eq!(whole.count(), 5000);
        let (c, s) = whole.parts();
        assert_eq!(LatencyHistogram::from_parts(c, s).unwrap(), whole);
        assert!(LatencyHistogram::from_parts(vec![1], vec![0.5]).is_err());
    }
}
