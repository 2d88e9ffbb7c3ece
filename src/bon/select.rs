//! Selection: the candidate order by score that both the proxy and the evaluator use.

/// Candidate indices ordered best first: higher score first, ties to the lower index, NaN last.
pub fn rank(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() { f64::NEG_INFINITY } else { scores[i] }
    };
    // A stable sort on the descending score keeps equal scores in index order.
    order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_first_ties_to_lowest_index() {
        assert_eq!(rank(&[0.1, 0.9, 0.5]), vec![1, 2, 0]);
        assert_eq!(rank(&[2.0, 3.0, 3.0, 1.0]), vec![1, 2, 0, 3]);
        assert_eq!(rank(&[f64::NAN, -5.0]), vec![1, 0]);
        assert_eq!(rank(&[-0.0, 0.0]), vec![0, 1]);
        assert!(rank(&[]).is_empty());
    }
}
