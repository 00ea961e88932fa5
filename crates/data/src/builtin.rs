//! Built-in datasets, generated in code and deterministic (the same records on every machine):
//!
//! - `instructions`: short instructions about a sentence of random words ("Reply with the last
//!   word of: …") for the real Gemma 3 270M, which answers in prose before fine-tuning and with the
//!   bare word after a few minutes of LoRA; scored by [`exact_match`];
//! - `shapes`: pictures of coloured shapes with questions about their colour and shape;
//! - `tones`: clips of two buzzes to transcribe as digits (each digit its own pitch);
//! - `shapes_tones`: the two alternated (pictures and clips in one run).
//!
//! `train` and `validation` splits never share a sample.

use std::collections::HashSet;
use std::f32::consts::PI;
use std::path::PathBuf;
use std::sync::OnceLock;

use automodel_text::generate::SplitMix64;
use automodel_vision::processor::RgbImage;

use crate::conversation::{Conversation, Media, Message, Part, Role};
use crate::error::{DataError, Origin};
use crate::format::{Record, Sample};

/// The built-in datasets.
pub const NAMES: [&str; 4] = ["instructions", "shapes", "tones", "shapes_tones"];

/// Default sizes of the splits.
pub const TRAIN_SIZE: usize = 512;
pub const VALIDATION_SIZE: usize = 64;

const WORDS: [&str; 64] = [
    "apple", "river", "stone", "cloud", "tiger", "piano", "garden", "window", "silver", "candle",
    "forest", "rocket", "pepper", "bridge", "summer", "winter", "yellow", "basket", "mirror",
    "dragon", "lemon", "castle", "ocean", "pencil", "jacket", "orange", "planet", "butter",
    "circle", "farmer", "helmet", "island", "kitten", "ladder", "market", "needle", "parrot",
    "rabbit", "saddle", "temple", "violin", "wallet", "anchor", "bottle", "carpet", "desert",
    "engine", "feather", "guitar", "hammer", "jungle", "kettle", "lizard", "meadow", "napkin",
    "oyster", "pillow", "quartz", "ribbon", "shovel", "tunnel", "velvet", "walnut", "zipper",
];

const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [50, 80, 220]),
    ("yellow", [230, 210, 40]),
];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// Pixels per side of a `shapes` picture (the image processor resizes it for the model).
pub const IMAGE_SIDE: usize = 64;
/// Sample rate of `tones` clips.
pub const SAMPLE_RATE: usize = 16_000;

fn pick<'a, T>(rng: &mut SplitMix64, xs: &'a [T]) -> &'a T {
    &xs[((rng.next_f64() * xs.len() as f64) as usize).min(xs.len() - 1)]
}

fn range(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + ((rng.next_f64() * (hi - lo + 1) as f64) as usize).min(hi - lo)
}

/// One `instructions` sample: (question, answer).
fn instruction(rng: &mut SplitMix64) -> (String, String) {
    let n = range(rng, 3, 6);
    let words: Vec<&str> = (0..n).map(|_| *pick(rng, &WORDS)).collect();
    let sentence = words.join(" ");
    match range(rng, 0, 3) {
        0 => (
            format!("Reply with the last word of: {sentence}"),
            words[n - 1].to_string(),
        ),
        1 => (
            format!("Reply with the first word of: {sentence}"),
            words[0].to_string(),
        ),
        2 => (
            format!("Which word comes last in \"{sentence}\"? Answer with that word only."),
            words[n - 1].to_string(),
        ),
        _ => (
            format!("Which word comes first in \"{sentence}\"? Answer with that word only."),
            words[0].to_string(),
        ),
    }
}

/// A `shapes` picture: a large shape of `colour`, near the centre, on a dark, slightly noisy
/// background. Large and central so that most of the vision tower's 4 × 4 soft tokens (for the
/// tiny Gemma 3n) see it: a small shape anywhere in the frame leaves its colour in one or two
/// tokens at a different place each time, which a tower from random weights does not learn to
/// read within minutes (docs/data.md).
pub fn shape_image(shape: &str, colour: [u8; 3], rng: &mut SplitMix64) -> RgbImage {
    let s = IMAGE_SIDE as f32;
    let r = s * (0.36 + 0.08 * rng.next_f64() as f32);
    let jitter = |rng: &mut SplitMix64| s * 0.06 * (rng.next_f64() as f32 - 0.5);
    let cx = s / 2.0 + jitter(rng);
    let cy = s / 2.0 + jitter(rng);
    let mut data = Vec::with_capacity(IMAGE_SIDE * IMAGE_SIDE * 3);
    for y in 0..IMAGE_SIDE {
        for x in 0..IMAGE_SIDE {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match shape {
                "circle" => dx * dx + dy * dy <= r * r,
                "square" => dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8,
                // apex up: the half-width grows from 0 at the top to r at the bottom
                _ => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
            };
            let noise = (rng.next_f64() * 24.0) as u8;
            if inside {
                data.extend(colour.map(|c| c.saturating_sub(noise / 2)));
            } else {
                data.extend([20 + noise, 20 + noise, 24 + noise]);
            }
        }
    }
    RgbImage {
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
        data,
    }
}

/// One `shapes` sample: (picture, question, answer, key for split disjointness).
fn shape_sample(rng: &mut SplitMix64) -> (RgbImage, String, String) {
    let shape = *pick(rng, &SHAPES);
    let (colour, rgb) = *pick(rng, &COLOURS);
    let img = shape_image(shape, rgb, rng);
    let (q, a) = match range(rng, 0, 2) {
        0 => (
            "What shape is in the picture?".to_string(),
            shape.to_string(),
        ),
        1 => ("What colour is the shape?".to_string(), colour.to_string()),
        _ => (
            "Describe the shape in two words.".to_string(),
            format!("{colour} {shape}"),
        ),
    };
    (img, q, a)
}

/// Fundamental frequency of a digit's buzz in `tones` clips: 100 + 40·d Hz.
pub fn digit_hz(d: usize) -> f32 {
    100.0 + 40.0 * d as f32
}

/// Seconds of buzz per digit in a `tones` clip.
pub const TONE_SECONDS: f32 = 0.3;
/// Seconds of silence after each buzz.
pub const GAP_SECONDS: f32 = 0.1;
/// Digits per `tones` clip: two buzzes and their gaps last 0.8 s, five of the tiny Gemma 3n's
/// six audio soft tokens (one per 0.16 s).
pub const TONE_DIGITS: usize = 2;
/// Highest harmonic frequency in a buzz.
const TOP_HZ: f32 = 7000.0;

/// Samples per period in a digit's wavetable.
const TABLE: usize = 2048;

/// One period of digit `d`'s buzz: every harmonic of [`digit_hz`] up to 7 kHz with phases drawn
/// from a seed of the digit's own, scaled to peak 1. Computed once per digit.
fn buzz_period(d: usize) -> &'static [f32] {
    static TABLES: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    &TABLES.get_or_init(|| {
        (0..10)
            .map(|d| {
                let mut rng = SplitMix64::new(0xB022 + d as u64);
                let harmonics = (TOP_HZ / digit_hz(d)) as usize;
                let phases: Vec<f32> = (0..harmonics)
                    .map(|_| 2.0 * PI * rng.next_f64() as f32)
                    .collect();
                let wave: Vec<f32> = (0..TABLE)
                    .map(|i| {
                        let x = 2.0 * PI * i as f32 / TABLE as f32;
                        (phases.iter().enumerate())
                            .map(|(k, ph)| ((k + 1) as f32 * x + ph).sin())
                            .sum()
                    })
                    .collect();
                let peak = wave.iter().fold(0f32, |m, x| m.max(x.abs()));
                wave.iter().map(|x| x / peak).collect()
            })
            .collect::<Vec<_>>()
    })[d]
}

/// A `tones` clip: each digit a [`TONE_SECONDS`] buzz (every harmonic of [`digit_hz`] up to
/// 7 kHz, peak 0.3–0.6, from a random point of its period) followed by [`GAP_SECONDS`] of
/// silence.
///
/// A buzz, not a pure tone: a pure tone lights one or two of the 128 mel bins, and the tiny Gemma
/// 3n's random audio tower maps every such clip to nearly the same features (cosine 0.96 across
/// digits, measured in PyTorch); a harmonic comb changes the whole spectrum (cosine 0.41), which
/// the decoder learns to read (docs/data.md).
pub fn tone_clip(digits: &[usize], rng: &mut SplitMix64) -> Vec<f32> {
    let tone = (SAMPLE_RATE as f32 * TONE_SECONDS) as usize;
    let gap = (SAMPLE_RATE as f32 * GAP_SECONDS) as usize;
    let mut out = Vec::with_capacity(digits.len() * (tone + gap));
    for &d in digits {
        let period = buzz_period(d);
        let step = digit_hz(d) * TABLE as f32 / SAMPLE_RATE as f32;
        let start = rng.next_f64() as f32 * TABLE as f32;
        let amp = 0.3 + 0.3 * rng.next_f64() as f32;
        for i in 0..tone {
            let pos = (start + step * i as f32) % TABLE as f32;
            let (j, frac) = (pos as usize % TABLE, pos.fract());
            let x = period[j] * (1.0 - frac) + period[(j + 1) % TABLE] * frac;
            // 5 ms fades avoid clicks
            let fade = (i.min(tone - i) as f32 / 80.0).min(1.0);
            out.push(amp * fade * x);
        }
        out.extend(std::iter::repeat_n(0.0, gap));
    }
    out
}

fn tone_sample(rng: &mut SplitMix64) -> (Vec<f32>, String) {
    let digits: Vec<usize> = (0..TONE_DIGITS).map(|_| range(rng, 0, 9)).collect();
    let clip = tone_clip(&digits, rng);
    let text = digits
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    (clip, text)
}

fn user(parts: Vec<Part>) -> Message {
    Message {
        role: Role::User,
        content: parts,
    }
}

/// The `split` (`train` or `validation`) of built-in dataset `name`, `n` samples (default
/// [`TRAIN_SIZE`] / [`VALIDATION_SIZE`]).
pub fn records(name: &str, split: &str, n: Option<usize>) -> Result<Vec<Record>, DataError> {
    if !NAMES.contains(&name) {
        return Err(DataError::Invalid(format!(
            "unknown built-in dataset `{name}` (expected one of: {})",
            NAMES.join(", ")
        )));
    }
    if name == "shapes_tones" {
        let total = n.unwrap_or(if split == "validation" {
            VALIDATION_SIZE
        } else {
            TRAIN_SIZE
        });
        let shapes = records("shapes", split, Some(total.div_ceil(2)))?;
        let tones = records("tones", split, Some(total / 2))?;
        let mut tones = tones.into_iter();
        let mut out = Vec::with_capacity(total);
        for s in shapes {
            out.push(s);
            out.extend(tones.next());
        }
        let file = PathBuf::from(format!("builtin:{name}/{split}"));
        for (i, r) in out.iter_mut().enumerate() {
            r.origin = Origin {
                file: file.clone(),
                position: i,
                is_line: false,
            };
        }
        return Ok(out);
    }
    let (seed, n) = match split {
        "train" => (1, n.unwrap_or(TRAIN_SIZE)),
        "validation" => (2, n.unwrap_or(VALIDATION_SIZE)),
        other => {
            return Err(DataError::Invalid(format!(
                "built-in dataset `{name}` has splits `train` and `validation`, not `{other}`"
            )));
        }
    };
    // the validation split leaves out every prompt (text or media seed) the train split has;
    // train is regenerated here to know them
    let mut taken: HashSet<String> = HashSet::new();
    if split == "validation" {
        let mut rng = SplitMix64::new(hash(name) ^ 1);
        for _ in 0..TRAIN_SIZE.max(n) {
            taken.insert(key(name, &mut rng));
        }
    }
    let mut rng = SplitMix64::new(hash(name) ^ seed);
    let mut out = Vec::with_capacity(n);
    let file = PathBuf::from(format!("builtin:{name}/{split}"));
    while out.len() < n {
        let mut probe = rng.clone();
        let k = key(name, &mut probe);
        let sample = match name {
            "instructions" => {
                let (q, a) = instruction(&mut rng);
                Sample::Chat(Conversation::qa(q, a))
            }
            "shapes" => {
                let (img, q, a) = shape_sample(&mut rng);
                Sample::Chat(Conversation {
                    messages: vec![
                        user(vec![Part::Image(Media::Image(img)), Part::Text(q)]),
                        Message::text(Role::Assistant, a),
                    ],
                })
            }
            _ => {
                let (clip, text) = tone_sample(&mut rng);
                Sample::Chat(Conversation {
                    messages: vec![
                        user(vec![
                            Part::Audio(Media::Samples(clip)),
                            Part::Text("Transcribe the tones as digits.".into()),
                        ]),
                        Message::text(Role::Assistant, text),
                    ],
                })
            }
        };
        if taken.contains(&k) {
            continue;
        }
        out.push(Record {
            origin: Origin {
                file: file.clone(),
                position: out.len(),
                is_line: false,
            },
            sample: Ok(sample),
        });
    }
    Ok(out)
}

/// What identifies a sample for split disjointness: its question and answer (and for media,
/// the generator state that draws the picture or clip).
fn key(name: &str, rng: &mut SplitMix64) -> String {
    match name {
        "instructions" => {
            let (q, a) = instruction(rng);
            format!("{q}\u{0}{a}")
        }
        "shapes" => {
            let before = rng.clone().next_f64().to_bits();
            let (_, q, a) = shape_sample(rng);
            format!("{before}\u{0}{q}\u{0}{a}")
        }
        _ => {
            let before = rng.clone().next_f64().to_bits();
            let (_, t) = tone_sample(rng);
            format!("{before}\u{0}{t}")
        }
    }
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Exact match of a generated answer: equal after trimming whitespace and a final full stop,
/// ignoring case.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('.').trim().to_lowercase();
    norm(prediction) == norm(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(name: &str, split: &str) -> Vec<(String, String)> {
        records(name, split, None)
            .unwrap()
            .into_iter()
            .map(|r| match r.sample.unwrap() {
                Sample::Chat(c) => (c.messages[0].text_content(), c.messages[1].text_content()),
                Sample::Text(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn builtins_are_deterministic_and_splits_disjoint() {
        for name in NAMES {
            let a = records(name, "train", Some(8)).unwrap();
            let b = records(name, "train", Some(8)).unwrap();
            assert_eq!(
                a.iter()
                    .map(|r| r.sample.clone().unwrap())
                    .collect::<Vec<_>>(),
                b.iter()
                    .map(|r| r.sample.clone().unwrap())
                    .collect::<Vec<_>>(),
                "{name}"
            );
            for r in &a {
                let Ok(Sample::Chat(c)) = &r.sample else {
                    panic!()
                };
                c.validate().unwrap();
            }
        }
        let train: HashSet<_> = answers("instructions", "train").into_iter().collect();
        let val = answers("instructions", "validation");
        assert_eq!(val.len(), VALIDATION_SIZE);
        assert!(
            val.iter().all(|qa| !train.contains(qa)),
            "a validation question is in train"
        );
        // the answer is a word of the question, first or last as asked
        for (q, a) in &val {
            assert!(q.contains(a.as_str()), "{q} / {a}");
        }
        assert!(records("nope", "train", None).is_err());
        assert!(records("shapes", "test", None).is_err());
    }

    #[test]
    fn shapes_and_tones_carry_what_the_answer_says() {
        let mut rng = SplitMix64::new(3);
        let img = shape_image("square", [220, 40, 40], &mut rng);
        assert_eq!(img.data.len(), IMAGE_SIDE * IMAGE_SIDE * 3);
        let red = img
            .data
            .chunks(3)
            .filter(|p| p[0] > 150 && p[1] < 100)
            .count();
        assert!(red > 100, "a red square has red pixels ({red})");
        // large and near the centre, so that most of the tiny Gemma 3n's 4 × 4 soft tokens see
        // it (what makes the pictures learnable from random weights; docs/data.md)
        for (seed, shape) in [(5, "circle"), (6, "square"), (7, "triangle")] {
            let img = shape_image(shape, [40, 180, 60], &mut SplitMix64::new(seed));
            let inside: Vec<(usize, usize)> = (0..IMAGE_SIDE * IMAGE_SIDE)
                .filter(|i| img.data[3 * i + 1] > 120)
                .map(|i| (i % IMAGE_SIDE, i / IMAGE_SIDE))
                .collect();
            let area = inside.len() as f32 / (IMAGE_SIDE * IMAGE_SIDE) as f32;
            assert!(area > 0.22, "{shape} covers {area} of the picture");
            // the bounding box's centre (each shape is drawn centred in its box)
            let mid = |f: fn(&(usize, usize)) -> usize| {
                let lo = inside.iter().map(f).min().unwrap() as f32;
                let hi = inside.iter().map(f).max().unwrap() as f32;
                (lo + hi + 1.0) / 2.0 - IMAGE_SIDE as f32 / 2.0
            };
            let (dx, dy) = (mid(|p| p.0), mid(|p| p.1));
            assert!(
                dx.abs() < 3.0 && dy.abs() < 3.0,
                "{shape} off centre by {dx}, {dy}"
            );
        }

        let clip = tone_clip(&[0, 9], &mut rng);
        let (tone, gap) = (SAMPLE_RATE * 3 / 10, SAMPLE_RATE / 10);
        assert_eq!(clip.len(), 2 * (tone + gap));
        assert!(clip[tone..tone + gap].iter().all(|x| *x == 0.0));
        // digit 0 buzzes at 100 Hz: its wave repeats every 160 samples, and half a period away
        // it does not (odd harmonics flip sign there)
        let corr = |x: &[f32], lag: usize| {
            let (a, b) = (&x[..x.len() - lag], &x[lag..]);
            let dot: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        };
        let first = &clip[200..tone - 200];
        assert!(corr(first, 160) > 0.99, "{}", corr(first, 160));
        assert!(corr(first, 80).abs() < 0.3, "{}", corr(first, 80));
        // digit 9 at 460 Hz: four periods are 139.1 samples
        let second = &clip[tone + gap + 200..2 * tone + gap - 200];
        assert!(corr(second, 139) > 0.9, "{}", corr(second, 139));
        assert!(corr(second, 160) < 0.5, "{}", corr(second, 160));
        // many harmonics, not one pure tone: far more zero crossings than 2 × 100 per second
        let crossings = first
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!(crossings > 1000, "{crossings}");
    }

    #[test]
    fn exact_match_ignores_case_space_and_a_full_stop() {
        assert!(exact_match(" Apple.\n", "apple"));
        assert!(!exact_match("The answer is apple", "apple"));
    }
}
