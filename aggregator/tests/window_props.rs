//! The window maths against a plain reference computation, on random reports (`proptest`): the
//! ring's windows equal the overlap-weighted sums of the samples, and burst mode answers what a
//! scan of the whole history says it should.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use inflight_aggregator::window::{Burst, Ring, Sample};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Report {
    start_ms: i64,
    length_ms: u32,
    concurrency: f64,
    requests: f64,
}

fn report() -> impl Strategy<Value = Report> {
    // Anywhere in the last 70 s (some older than a 60 s ring keeps), up to 1 s after now.
    (
        -70_000i64..1000,
        1u32..5000,
        0.0f64..1000.0,
        0.0f64..10_000.0,
    )
        .prop_map(|(offset, length_ms, concurrency, requests)| Report {
            start_ms: NOW + offset - i64::from(length_ms),
            length_ms,
            concurrency,
            requests,
        })
}

/// The plain computation: each report's concurrency × the milliseconds of it inside the window,
/// and its requests in proportion, over the window's length.
fn reference(reports: &[Report], start_ms: i64, end_ms: i64) -> (f64, f64) {
    let (mut conc_ms, mut requests) = (0.0, 0.0);
    for r in reports {
        let end = r.start_ms + i64::from(r.length_ms);
        let overlap = (end.min(end_ms) - r.start_ms.max(start_ms)).max(0) as f64;
        conc_ms += r.concurrency * overlap;
        requests += r.requests * overlap / f64::from(r.length_ms);
    }
    let span = (end_ms - start_ms) as f64;
    (conc_ms / span, requests * 1000.0 / span)
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn windows_equal_the_overlap_weighted_sums(
        reports in proptest::collection::vec(report(), 0..40),
        window_s in 1i64..=60,
        end_back_s in 0i64..=1,
        since_back_s in 0i64..=80,
    ) {
        let mut ring = Ring::new(60);
        for r in &reports {
            ring.add(Sample {
                start_ms: r.start_ms,
                length_ms: r.length_ms,
                concurrency: r.concurrency,
                held: 0.0,
                requests: r.requests,
                arrived: 0.0,
            }, NOW);
        }
        // Windows end at whole seconds, at most one behind now, as the registry reads them.
        let end = NOW.div_euclid(1000) * 1000 - end_back_s * 1000;
        let since = end - since_back_s * 1000;
        let start = (end - window_s * 1000).max(since);
        let got = ring.window(end, window_s * 1000, since);
        if start >= end {
            prop_assert_eq!(got.concurrency, 0.0);
        } else {
            let (conc, rate) = reference(&reports, start, end);
            prop_assert!(near(got.concurrency, conc), "{} vs {}", got.concurrency, conc);
            prop_assert!(near(got.request_rate, rate), "{} vs {}", got.request_rate, rate);
        }
    }

    #[test]
    fn burst_mode_answers_what_the_history_says(
        steps in proptest::collection::vec((0.0f64..20.0, 0.0f64..40.0, 100i64..4000), 1..80),
    ) {
        let window = 10_000;
        let mut b = Burst::default();
        let mut t = 0;
        let mut history: Vec<(i64, f64, f64)> = Vec::new();
        for (stable, burst, dt) in steps {
            t += dt;
            history.push((t, stable, burst));
            let got = b.answer(stable, burst, window, t);
            // The reference: burst mode holds at t if the condition held at some earlier step
            // less than a window ago and every gap between conditions since the mode began is
            // shorter than a window; it answers the highest burst value since the mode began.
            let cond = |&(_, s, x): &(i64, f64, f64)| x > 0.0 && x >= 2.0 * s;
            let mut mode_start: Option<usize> = None;
            let mut last_cond: Option<i64> = None;
            for (i, h) in history.iter().enumerate() {
                if last_cond.is_some_and(|c| h.0 - c >= window) && !cond(h) {
                    mode_start = None;
                    last_cond = None;
                }
                if cond(h) {
                    mode_start.get_or_insert(i);
                    last_cond = Some(h.0);
                }
            }
            let want = match mode_start {
                Some(i) => history[i..].iter().map(|h| h.2).fold(0.0, f64::max),
                None => stable,
            };
            prop_assert!(near(got, want), "at {t}: {got} vs {want}; {history:?}");
        }
    }
}
