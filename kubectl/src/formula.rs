//! The replicas the HPA KEDA made asks for: `desired = ceil(value / target)` for an external
//! metric with an average-value target (what KEDA's external-push trigger gets), kept within the
//! autoscaler's `[minReplicas, maxReplicas]`. The HPA leaves its replicas alone while the ratio to
//! them is within its tolerance (10 %), and KEDA itself takes a workload between zero and one; the
//! view shows the HPA's own current and desired beside this.

/// `ceil(value / target)` within `[min, max]`; `None` for a value or target that makes no sense
/// (negative, not finite, a target of zero).
pub fn desired_replicas(value: f64, target: f64, min: i32, max: i32) -> Option<i32> {
    if !value.is_finite() || !target.is_finite() || value < 0.0 || target <= 0.0 || min > max {
        return None;
    }
    let wanted = (value / target).ceil();
    // Within i32 by the clamp: a huge ratio is `max`.
    #[allow(clippy::cast_possible_truncation)]
    let wanted = wanted.min(f64::from(i32::MAX)) as i32;
    Some(wanted.clamp(min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_formula_rounds_up_and_keeps_within_bounds() {
        assert_eq!(desired_replicas(5.2, 2.0, 1, 4), Some(3));
        assert_eq!(desired_replicas(6.0, 2.0, 1, 4), Some(3));
        assert_eq!(desired_replicas(0.0, 2.0, 1, 4), Some(1));
        assert_eq!(desired_replicas(0.0, 2.0, 0, 4), Some(0));
        assert_eq!(desired_replicas(100.0, 2.0, 1, 4), Some(4));
        assert_eq!(desired_replicas(0.1, 10.0, 0, 4), Some(1));
        assert_eq!(desired_replicas(1e300, 1e-3, 0, 7), Some(7));
    }

    #[test]
    fn nonsense_gives_no_answer() {
        assert_eq!(desired_replicas(f64::NAN, 2.0, 1, 4), None);
        assert_eq!(desired_replicas(1.0, 0.0, 1, 4), None);
        assert_eq!(desired_replicas(-1.0, 2.0, 1, 4), None);
        assert_eq!(desired_replicas(1.0, 2.0, 5, 4), None);
    }

    proptest! {
        #[test]
        fn desired_is_within_bounds_and_enough_for_the_value(
            value in 0.0f64..1e6, target in 0.001f64..1e4, min in 0i32..50, extra in 0i32..50,
        ) {
            let max = min + extra;
            let d = desired_replicas(value, target, min, max).unwrap_or(-1);
            prop_assert!((min..=max).contains(&d));
            // Unless held at max, the replicas carry the value at the target each.
            if d < max {
                prop_assert!(f64::from(d) * target >= value * (1.0 - 1e-12));
            }
            // One fewer would not, unless held at min.
            if d > min {
                prop_assert!(f64::from(d - 1) * target < value);
            }
        }

        #[test]
        fn more_value_never_asks_for_fewer_replicas(
            a in 0.0f64..1e5, b in 0.0f64..1e5, target in 0.001f64..100.0,
        ) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(desired_replicas(lo, target, 0, 1000) <= desired_replicas(hi, target, 0, 1000));
        }
    }
}
