//! Kubernetes quantities (`2500m`, `10m` seconds, `3k`, `1.5`, `2Ki`, `1e3`) as numbers: the
//! external metrics API and the SMI API write their figures this way.

/// The value of a quantity, `None` if it is not one.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| Some((text.strip_suffix(suffix)?, *scale)))
        .unwrap_or((text, 1.0));
    // A number a quantity allows: digits, one point, a sign, an exponent (`1e3`); never `inf`.
    let plain = |c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E');
    if number.is_empty() || !number.chars().all(plain) {
        return None;
    }
    let value = number.parse::<f64>().ok()? * scale;
    value.is_finite().then_some(value)
}

/// Longest first, so `Ki` is not read as `i` after `K`; `E` alone (exa) only after the exponent
/// forms have been ruled out by the digit check.
const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1_048_576.0),
    ("Gi", 1_073_741_824.0),
    ("Ti", 1_099_511_627_776.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        for (text, value) in [
            ("2500m", 2.5),
            ("10m", 0.01),
            ("400u", 0.0004),
            ("3", 3.0),
            ("1.5", 1.5),
            ("3k", 3000.0),
            ("2Ki", 2048.0),
            ("1e3", 1000.0),
            ("0", 0.0),
        ] {
            let got = parse(text).unwrap_or(f64::NAN);
            assert!((got - value).abs() < 1e-12, "{text}: {got}");
        }
        for bad in ["", "m", "abc", "inf", "NaN", "1x"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
