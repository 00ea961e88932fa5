//! Audio decoding: WAV, FLAC, MP3 and OGG/Vorbis through symphonia, mixed down to mono and
//! resampled (rubato, FFT-based) to the feature extractor's rate.

use std::path::Path;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

use crate::error::AudioError;

/// A decoded mono clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Decode `path` to mono at `target_rate` Hz. Unreadable, empty or non-finite audio is an error
/// naming the file.
pub fn load_audio(path: impl AsRef<Path>, target_rate: u32) -> Result<Waveform, AudioError> {
    let path = path.as_ref();
    let bytes = automodel_core::read_file(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    decode_audio(
        bytes,
        ext.as_deref(),
        &path.display().to_string(),
        target_rate,
    )
}

/// Decode encoded audio bytes (`ext` is a format hint such as `"wav"`); `name` appears in errors.
pub fn decode_audio(
    bytes: Vec<u8>,
    ext: Option<&str>,
    name: &str,
    target_rate: u32,
) -> Result<Waveform, AudioError> {
    let err = |message: String| AudioError::Decode {
        kind: "audio",
        name: name.to_string(),
        message,
    };
    // symphonia panics on some malformed headers (a u16 overflow in its WAV `fmt` chunk, found
    // by `cargo xtask fuzz`): that is an unreadable file too, not the end of the program
    let decoded = std::panic::catch_unwind(move || decode_mono(bytes, ext))
        .unwrap_or(Err(Stop::Codec(SymphoniaError::DecodeError(
            "the decoder stopped on malformed data",
        ))))
        .map_err(|e| match e {
        Stop::Codec(e) => err(format!(
            "cannot decode ({e}); expected WAV, FLAC, MP3 or OGG/Vorbis"
        )),
        Stop::Rate(rate) => err(format!(
            "the sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
        )),
        Stop::Truncated { samples, rate } => err(format!(
            "the file is cut short: its data ends after {samples} samples ({:.2} s) of what its header declares",
            samples as f64 / f64::from(rate.unwrap_or(0).max(1))
        )),
    })?;
    let (mono, rate) = (decoded.mono, decoded.rate);
    if decoded.skipped_packets > 0 {
        tracing::warn!(
            "{name}: skipped {} corrupt packet(s), about {:.2} s of audio",
            decoded.skipped_packets,
            decoded.skipped_frames as f64 / f64::from(rate)
        );
    }
    if mono.is_empty() {
        return Err(err("the file holds no audio samples".into()));
    }
    if let Some(i) = mono.iter().position(|x| !x.is_finite()) {
        return Err(err(format!("sample {i} is not a finite number")));
    }
    let samples = resample(&mono, rate, target_rate).map_err(err)?;
    Ok(Waveform {
        samples,
        sample_rate: target_rate,
    })
}

/// The lowest sample rate accepted (telephone audio is 8 kHz).
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// The highest sample rate accepted (studio audio goes to 384 kHz).
pub const MAX_SAMPLE_RATE: u32 = 384_000;

/// What a decode produced: mono samples, their rate, and what was lost to corrupt packets.
struct Decoded {
    mono: Vec<f32>,
    rate: u32,
    skipped_packets: usize,
    skipped_frames: u64,
}

/// Why a decode stopped.
enum Stop {
    Codec(SymphoniaError),
    /// A sample rate outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    Rate(u32),
    /// The container declares more data than the file holds.
    Truncated {
        samples: usize,
        rate: Option<u32>,
    },
}

impl From<SymphoniaError> for Stop {
    fn from(e: SymphoniaError) -> Self {
        Stop::Codec(e)
    }
}

fn check_rate(rate: u32) -> Result<(), Stop> {
    if (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(Stop::Rate(rate))
    }
}

fn decode_mono(bytes: Vec<u8>, ext: Option<&str>) -> Result<Decoded, Stop> {
    let mss = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    if let Some(e) = ext {
        hint.with_extension(e);
    }
    let mut format = symphonia::default::get_probe().probe(
        &hint,
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    )?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(SymphoniaError::Unsupported("no audio track"))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(SymphoniaError::Unsupported(
            "the audio track has no codec parameters",
        ))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())?;
    let mut mono = Vec::new();
    let mut rate = params.sample_rate;
    // refuse before decoding anything (a hostile header can declare any rate)
    if let Some(r) = rate {
        check_rate(r)?;
    }
    let (mut skipped_packets, mut skipped_frames) = (0, 0);
    let mut interleaved: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // the demuxers end a complete stream with `None`: an early end is a cut file
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Stop::Truncated {
                    samples: mono.len(),
                    rate,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // A corrupt packet inside an otherwise good stream is skipped, as players do; the
            // caller warns about what was lost.
            Err(SymphoniaError::DecodeError(_)) => {
                skipped_packets += 1;
                skipped_frames += packet.dur.get();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let spec = buf.spec();
        rate = Some(spec.rate());
        let channels = spec.channels().count().max(1);
        interleaved.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut interleaved);
        for frame in interleaved.chunks(channels) {
            mono.push(frame.iter().sum::<f32>() / channels as f32);
        }
    }
    let rate = rate.ok_or(SymphoniaError::Unsupported("unknown sample rate"))?;
    check_rate(rate)?;
    Ok(Decoded {
        mono,
        rate,
        skipped_packets,
        skipped_frames,
    })
}

/// Resample mono audio from `from` to `to` Hz (identity when equal).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to {
        return Ok(samples.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(format!("cannot resample from {from} Hz to {to} Hz"));
    }
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| e.to_string())?;
    let input = vec![samples.to_vec()];
    let out_len = r.process_all_needed_output_len(samples.len());
    let mut output = vec![vec![0.0f32; out_len]];
    let buf_in = SequentialSliceOfVecs::new(&input, 1, samples.len()).map_err(|e| e.to_string())?;
    let mut buf_out =
        SequentialSliceOfVecs::new_mut(&mut output, 1, out_len).map_err(|e| e.to_string())?;
    let (_, written) = r
        .process_all_into_buffer(&buf_in, &mut buf_out, samples.len(), None)
        .map_err(|e| e.to_string())?;
    let mut out = output.pop().unwrap();
    out.truncate(written);
    Ok(out)
}
