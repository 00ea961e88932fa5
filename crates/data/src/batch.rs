//! Samples into batches: right padding with the attention mask, sequence packing (samples share
//! a row, positions restart, attention never crosses them), media decoded and preprocessed on the
//! host; then tensors on the device.

use automodel_core::Backend;
use automodel_core::loss::IGNORE_INDEX;
use automodel_text::TrainBatch;
use automodel_text::generate::ids_tensor;
use automodel_vision::processor::RgbImage;
use burn::prelude::*;
use burn::tensor::{Bool, TensorData};
use serde::{Deserialize, Serialize};

use crate::conversation::Media;
use crate::encode::{Encoded, Encoder};
use crate::error::SampleError;

/// A batch on the host, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub input_ids: Vec<Vec<i64>>,
    /// 0 = padding, otherwise the sample's segment (1 in unpacked rows).
    pub attention_mask: Vec<Vec<i64>>,
    pub labels: Vec<Vec<i64>>,
    /// Set for packed rows (positions restart at each sample).
    pub position_ids: Option<Vec<Vec<i64>>>,
    /// Pixel values `[N, 3, H, W]`.
    pub pixels: Option<(Vec<f32>, [usize; 4])>,
    /// Log-mel features of every clip.
    pub audio: Option<HostAudio>,
    /// Tokens that carry a loss (a sample's first token never does: nothing precedes it).
    pub num_label_tokens: usize,
    /// Real (non-padding) tokens.
    pub num_tokens: usize,
    /// Dataset indices of the samples in the batch.
    pub samples: Vec<usize>,
}

/// Log-mel features `[B', F, M]` and the valid-frame mask `[B'][F]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAudio {
    pub features: Vec<f32>,
    pub shape: [usize; 3],
    pub mask: Vec<Vec<bool>>,
}

/// How to fill packed rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackStrategy {
    /// The first row with room.
    #[default]
    FirstFit,
    /// The row the sample fills best.
    BestFit,
}

/// Group samples of lengths `lens` (in order) into rows of at most `capacity` tokens.
pub fn pack(lens: &[usize], capacity: usize, strategy: PackStrategy) -> Vec<Vec<usize>> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let fits = rows
            .iter()
            .enumerate()
            .filter(|(_, (used, _))| used + len <= capacity);
        let choice = match strategy {
            PackStrategy::FirstFit => fits.map(|(r, _)| r).next(),
            PackStrategy::BestFit => fits
                .min_by_key(|(_, (used, _))| capacity - used - len)
                .map(|(r, _)| r),
        };
        match choice {
            Some(r) => {
                rows[r].0 += len;
                rows[r].1.push(i);
            }
            None => rows.push((len, vec![i])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}

/// A sample's media, decoded (by the batch workers, ahead of the step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    pub images: Vec<RgbImage>,
    /// 16 kHz mono clips.
    pub audio: Vec<Vec<f32>>,
}

impl Decoded {
    /// Decode every medium of `e`.
    pub fn of(e: &Encoded) -> Result<Self, SampleError> {
        Ok(Self {
            images: e.images.iter().map(image).collect::<Result<_, _>>()?,
            audio: e.audio.iter().map(audio).collect::<Result<_, _>>()?,
        })
    }
}

/// One sample placed in a batch: its dataset index, its tokens, its decoded media.
pub type Item<'a> = (usize, &'a Encoded, Decoded);

impl Encoder {
    /// One row per sample, right-padded to the longest (media decoded here).
    pub fn collate(&self, samples: &[(usize, &Encoded)]) -> Result<HostBatch, SampleError> {
        let rows = samples
            .iter()
            .map(|&(i, e)| Ok(vec![(i, e, Decoded::of(e)?)]))
            .collect::<Result<Vec<_>, SampleError>>()?;
        self.collate_rows(&rows, false)
    }

    /// Rows of one or more samples each, right-padded to the longest. When `packed`, a row's
    /// samples are numbered 1, 2, … in the attention mask and their positions restart, so
    /// attention never crosses them.
    pub fn collate_rows(
        &self,
        rows: &[Vec<Item<'_>>],
        packed: bool,
    ) -> Result<HostBatch, SampleError> {
        let width = rows
            .iter()
            .map(|r| r.iter().map(|(_, e, _)| e.ids.len()).sum::<usize>())
            .max()
            .unwrap_or(0);
        let pad = i64::from(self.tokenizer.pad_id);
        let mut b = HostBatch {
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
            labels: Vec::new(),
            position_ids: packed.then(Vec::new),
            pixels: None,
            audio: None,
            num_label_tokens: 0,
            num_tokens: 0,
            samples: Vec::new(),
        };
        let (mut images, mut clips) = (Vec::new(), Vec::new());
        for row in rows {
            let (mut ids, mut mask, mut labels, mut pos) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (seg, (index, e, media)) in row.iter().enumerate() {
                ids.extend(&e.ids);
                mask.extend(std::iter::repeat_n(seg as i64 + 1, e.ids.len()));
                // a sample's first token is never predicted (from padding or the sample before)
                let mut l = e.labels.clone();
                if let Some(first) = l.first_mut() {
                    *first = IGNORE_INDEX;
                }
                b.num_label_tokens += l.iter().filter(|&&x| x != IGNORE_INDEX).count();
                labels.extend(l);
                pos.extend(0..e.ids.len() as i64);
                images.extend(media.images.iter().cloned());
                clips.extend(media.audio.iter().map(Vec::as_slice));
                b.samples.push(*index);
            }
            b.num_tokens += ids.len();
            let fill = width - ids.len();
            ids.extend(std::iter::repeat_n(pad, fill));
            mask.extend(std::iter::repeat_n(0, fill));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, fill));
            pos.extend(std::iter::repeat_n(0, fill));
            b.input_ids.push(ids);
            b.attention_mask.push(mask);
            b.labels.push(labels);
            if let Some(p) = &mut b.position_ids {
                p.push(pos);
            }
        }
        if !images.is_empty() || !clips.is_empty() {
            let p = self
                .processor
                .as_ref()
                .ok_or_else(|| SampleError::Media("this model takes no images or audio".into()))?;
            if !images.is_empty() {
                b.pixels = Some(
                    p.image_processor
                        .preprocess_host(&images)
                        .map_err(|e| SampleError::Media(e.to_string()))?,
                );
            }
            if !clips.is_empty() {
                let f = p
                    .feature_extractor
                    .extract(&clips)
                    .map_err(|e| SampleError::Media(e.to_string()))?;
                let shape = [
                    f.features.len(),
                    f.frames(),
                    p.feature_extractor.config.feature_size,
                ];
                let flat: Vec<f32> = f.features.iter().flatten().flatten().copied().collect();
                b.audio = Some(HostAudio {
                    features: flat,
                    shape,
                    mask: f.mask,
                });
            }
        }
        Ok(b)
    }
}

/// Decode an image medium.
pub fn image(m: &Media) -> Result<RgbImage, SampleError> {
    let err = |e: automodel_vision::VisionError| SampleError::Media(e.to_string());
    match m {
        Media::Path(p) => automodel_vision::processor::load_image(p).map_err(err),
        Media::Bytes(b) => automodel_vision::processor::decode_image(b, "image bytes").map_err(err),
        Media::Image(i) => Ok(i.clone()),
        Media::Samples(_) => Err(SampleError::Media(
            "audio samples where an image was expected".into(),
        )),
    }
}

/// Decode an audio medium to 16 kHz mono.
pub fn audio(m: &Media) -> Result<Vec<f32>, SampleError> {
    let err = |e: automodel_audio::AudioError| SampleError::Media(e.to_string());
    match m {
        Media::Path(p) => automodel_audio::decode::load_audio(p, 16_000)
            .map(|w| w.samples)
            .map_err(err),
        Media::Bytes(b) => {
            automodel_audio::decode::decode_audio(b.clone(), None, "audio bytes", 16_000)
                .map(|w| w.samples)
                .map_err(err)
        }
        Media::Samples(s) => Ok(s.clone()),
        Media::Image(_) => Err(SampleError::Media(
            "an image where audio was expected".into(),
        )),
    }
}

impl HostBatch {
    /// `[B, T]`.
    pub fn dims(&self) -> [usize; 2] {
        [
            self.input_ids.len(),
            self.input_ids.first().map_or(0, Vec::len),
        ]
    }

    /// The batch as tensors on `device`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> TrainBatch<B> {
        let audio = self.audio.as_ref().map(|a| {
            let flat: Vec<bool> = a.mask.iter().flatten().copied().collect();
            let mask = Tensor::<B, 2, Bool>::from_data(
                TensorData::new(flat, [a.shape[0], a.shape[1]]),
                device,
            );
            (
                Tensor::from_data(TensorData::new(a.features.clone(), a.shape), device),
                mask,
            )
        });
        TrainBatch {
            input_ids: ids_tensor(&self.input_ids, device),
            attention_mask: ids_tensor(&self.attention_mask, device),
            labels: ids_tensor(&self.labels, device),
            position_ids: self.position_ids.as_ref().map(|p| ids_tensor(p, device)),
            pixel_values: self
                .pixels
                .as_ref()
                .map(|(v, shape)| Tensor::from_data(TensorData::new(v.clone(), *shape), device)),
            audio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_rows_without_splitting_samples() {
        let lens = [5, 3, 4, 2, 6];
        assert_eq!(
            pack(&lens, 8, PackStrategy::FirstFit),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            pack(&lens, 8, PackStrategy::BestFit),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            pack(&[6, 3, 2], 8, PackStrategy::BestFit),
            [vec![0, 2], vec![1]]
        );
        assert_eq!(
            pack(&[6, 3, 2], 8, PackStrategy::FirstFit),
            [vec![0, 2], vec![1]]
        );
        assert_eq!(
            pack(&[3, 6, 2, 5], 8, PackStrategy::BestFit),
            [vec![0, 3], vec![1, 2]]
        );
    }
}
