//! ggml block formats to f32 (the formulas of ggml's `dequantize_row_*`).

use half::{bf16, f16};

use crate::reader::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `n` values of type `ty` stored in `bytes`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (per, size) = ty
        .block()
        .ok_or_else(|| format!("ggml type {ty:?} is not supported"))?;
    if !n.is_multiple_of(per) || bytes.len() != n / per * size {
        return Err(format!(
            "{} bytes do not hold {n} {ty:?} values",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q5_0 => {
            for b in bytes.chunks_exact(22) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
                let qs = &b[6..22];
                let mut y = [0f32; 32];
                for j in 0..16 {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let x0 = ((qs[j] & 0x0F) | xh0) as i32 - 16;
                    let x1 = ((qs[j] >> 4) | xh1) as i32 - 16;
                    y[j] = x0 as f32 * d;
                    y[j + 16] = x1 as f32 * d;
                }
                out.extend_from_slice(&y);
            }
        }
        GgmlType::Q4K => {
            for b in bytes.chunks_exact(144) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let mut q = &b[16..144];
                let mut is = 0;
                for _ in 0..4 {
                    let (sc1, m1) = scale_min_k4(is, scales);
                    let (sc2, m2) = scale_min_k4(is + 1, scales);
                    let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
                    out.extend(q[..32].iter().map(|&x| d1 * (x & 0xF) as f32 - mm1));
                    out.extend(q[..32].iter().map(|&x| d2 * (x >> 4) as f32 - mm2));
                    q = &q[32..];
                    is += 2;
                }
            }
        }
        GgmlType::Q6K => {
            for b in bytes.chunks_exact(210) {
                let (mut ql, mut qh) = (&b[0..128], &b[128..192]);
                let mut sc: &[u8] = &b[192..208];
                let d = f16_at(b, 208);
                for _ in 0..2 {
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                    ql = &ql[64..];
                    qh = &qh[32..];
                    sc = &sc[8..];
                }
            }
        }
        other => {
            return Err(format!(
                "ggml type {other:?} is not supported (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K are)"
            ));
        }
    }
    Ok(out)
}

/// Scale and min of sub-block `j` of a Q4_K/Q5_K super-block (6-bit packed).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q5_0_blocks() {
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
        // Q5_0: all low nibbles 15, high bits set for element 0 only → 31 − 16 = 15, others −1
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend(1u32.to_le_bytes());
        b.extend([0xFFu8; 16]);
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(y[0], 30.0);
        assert_eq!(y[1], -2.0);
        assert_eq!(y[16], -2.0);
    }

    #[test]
    fn k_quants_decode_known_blocks() {
        // Q4_K with d = 1, dmin = 0, every scale 1 (6-bit), nibbles = 3 → all 3.0
        let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
        b.extend(f16::from_f32(0.0).to_le_bytes());
        b.extend([1, 1, 1, 1, 0, 0, 0, 0, 0x01, 0x01, 0x01, 0x01]);
        b.extend([0x33u8; 128]);
        let y = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        assert!(y.iter().all(|&v| v == 3.0), "{:?}", &y[..8]);
        // Q6_K with d = 0.5, scales 2, ql = 0, qh = 0 → (0 − 32)·0.5·2 = −32
        let mut b = vec![0u8; 192];
        b.extend([2u8; 16]);
        b.extend(f16::from_f32(0.5).to_le_bytes());
        let y = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        assert!(y.iter().all(|&v| v == -32.0));
        assert!(dequantize(GgmlType::Q6K, &b[..100], 256).is_err());
        assert!(dequantize(GgmlType::Q2K, &[0u8; 84], 256).is_err());
    }
}
