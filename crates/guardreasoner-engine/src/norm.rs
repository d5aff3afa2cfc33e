//! RMSNorm, LLaMA's normalisation, written once: the engine's forward pass and the trainer's
//! forward (and, through the saved reciprocal RMS, its backward) both call these.

/// `1 / sqrt(mean(x^2) + eps)` of one row.
pub fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// `out = x * inv_rms * weight`, element-wise over one row.
pub fn scale_row(x: &[f32], weight: &[f32], inv_rms: f32, out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv_rms * w;
    }
}

/// One row normalised into `out`; returns its reciprocal RMS (what the backward pass needs).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let inv = inverse_rms(x, eps);
    scale_row(x, weight, inv, out);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_has_unit_rms_before_its_weight() {
        let x = [3.0f32, -4.0, 0.0, 12.0];
        let mut out = [0.0f32; 4];
        let inv = rms_norm_row(&x, &[1.0; 4], 0.0, &mut out);
        // mean(x^2) = (9 + 16 + 0 + 144) / 4 = 42.25, rms 6.5.
        assert_eq!(inv, 1.0 / 6.5);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6, "{rms}");
        let mut weighted = [0.0f32; 4];
        rms_norm_row(&x, &[2.0, 1.0, 1.0, 0.5], 0.0, &mut weighted);
        assert_eq!(weighted[0], 2.0 * out[0]);
        assert_eq!(weighted[3], 0.5 * out[3]);
    }
}
