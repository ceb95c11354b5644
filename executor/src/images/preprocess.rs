//! An image's bytes to a model's input tensor, as `preprocess` says: decoded (JPEG, PNG or
//! WebP, refused past [`MAX_SIDE`] pixels a side so that a small file cannot claim gigabytes),
//! laid over white where it is transparent, its short side resized to `resize`, the centre
//! `crop` x `crop` cut out, each channel `(x - mean) / scale`, channels first.
//!
//! The resize is bilinear with the filter widened by the scale when shrinking (as PIL's
//! `Image.resize(..., BILINEAR)` does, so that shrinking averages every pixel instead of
//! sampling a few), computed in floating point throughout: the tests' numpy reference computes
//! the same weights and gets the same tensor to float rounding.

use std::io::Cursor;

use embedstream_core::spec::image::{Channels, PreprocessSpec};
use image::{ImageFormat, ImageReader, Limits};

/// Largest width or height decoded.
pub const MAX_SIDE: u32 = 12_000;
/// Largest decoded image in bytes (RGBA, 8 bits a channel).
const MAX_DECODED_BYTES: u64 = 256 << 20;

/// An image as RGB values from 0 to 255, row by row, three values a pixel.
#[derive(Debug)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

/// Decodes a JPEG, PNG or WebP image; transparent pixels are laid over white. The error is a
/// dead letter's reason.
pub fn decode(bytes: &[u8]) -> Result<Rgb, String> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Ok(other) => return Err(format!("not an image this takes ({other:?}; JPEG, PNG or WebP)")),
        Err(_) => return Err("not an image (JPEG, PNG or WebP)".to_string()),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| format!("cannot decode the {format:?} image: {e}"))?.into_rgba8();
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut values = Vec::with_capacity(width * height * 3);
    for px in image.pixels() {
        let alpha = px[3] as f32 / 255.0;
        values.extend(px.0[..3].iter().map(|&c| c as f32 * alpha + 255.0 * (1.0 - alpha)));
    }
    Ok(Rgb { width, height, values })
}

/// The input tensor of an image's bytes (`spec.tensor_len()` values), or why there is none.
pub fn tensor(bytes: &[u8], spec: &PreprocessSpec) -> Result<Vec<f32>, String> {
    Ok(to_tensor(&decode(bytes)?, spec))
}

/// The tensor of a decoded image.
pub fn to_tensor(image: &Rgb, spec: &PreprocessSpec) -> Vec<f32> {
    let (w, h) = resized_size(image.width, image.height, spec.resize as usize);
    let resized = resize(image, w, h);
    let crop = spec.crop as usize;
    let (left, top) = ((w - crop) / 2, (h - crop) / 2);
    let order: [usize; 3] = match spec.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let mut out = Vec::with_capacity(3 * crop * crop);
    for (c, &source) in order.iter().enumerate() {
        for y in top..top + crop {
            let row = &resized.values[(y * w + left) * 3..(y * w + left + crop) * 3];
            out.extend(row.chunks_exact(3).map(|px| (px[source] - spec.mean[c]) / spec.scale[c]));
        }
    }
    out
}

/// The size with the short side `short`, the other in proportion (rounded half up).
pub fn resized_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    let scale = short as f64 / width.min(height).max(1) as f64;
    let side = |n: usize| ((n as f64 * scale + 0.5).floor() as usize).max(short);
    (side(width), side(height))
}

/// Each output position's first input position and its weights, for `from` to `to` pixels.
fn weights(from: usize, to: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = from as f64 / to as f64;
    let widen = scale.max(1.0);
    let support = widen; // the triangle's, 1, widened
    (0..to)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = (center - support + 0.5).floor().max(0.0) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(from);
            let w: Vec<f64> = (lo..hi).map(|x| (1.0 - ((x as f64 - center + 0.5) / widen).abs()).max(0.0)).collect();
            let total: f64 = w.iter().sum();
            (lo, w.iter().map(|w| (w / total) as f32).collect())
        })
        .collect()
}

/// Resizes to `width` x `height`: rows first, then columns.
pub fn resize(image: &Rgb, width: usize, height: usize) -> Rgb {
    let (iw, ih) = (image.width, image.height);
    let across = weights(iw, width);
    let mut rows = vec![0f32; ih * width * 3];
    for y in 0..ih {
        let src = &image.values[y * iw * 3..(y + 1) * iw * 3];
        let dst = &mut rows[y * width * 3..(y + 1) * width * 3];
        for (x, (lo, w)) in across.iter().enumerate() {
            let mut px = [0f32; 3];
            for (k, wk) in w.iter().enumerate() {
                let s = &src[(lo + k) * 3..(lo + k) * 3 + 3];
                (0..3).for_each(|c| px[c] += s[c] * wk);
            }
            dst[x * 3..x * 3 + 3].copy_from_slice(&px);
        }
    }
    let down = weights(ih, height);
    let mut values = vec![0f32; height * width * 3];
    for (y, (lo, w)) in down.iter().enumerate() {
        let dst = &mut values[y * width * 3..(y + 1) * width * 3];
        for (k, wk) in w.iter().enumerate() {
            let src = &rows[(lo + k) * width * 3..(lo + k + 1) * width * 3];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s * wk);
        }
    }
    Rgb { width, height, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_averages_with_a_widened_triangle() {
        // 4 to 2: each output reads three inputs, weighted 0.75, 0.75, 0.25 (over 1.75).
        let w = weights(4, 2);
        assert_eq!(w[0].0, 0);
        let want = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75];
        assert!(w[0].1.iter().zip(want).all(|(a, b)| (a - b as f32).abs() < 1e-7), "{:?}", w[0]);
        assert_eq!(w[1].0, 1);
        // The same size is the identity.
        assert!(weights(5, 5)
            .iter()
            .enumerate()
            .all(|(i, (lo, w))| *lo == i && w[0] == 1.0 && w[1..].iter().all(|x| *x == 0.0)));
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(100, 300, 256), (256, 768));
    }

    #[test]
    fn a_flat_image_stays_flat_and_channels_follow_the_spec() {
        let image = Rgb { width: 40, height: 30, values: [10.0, 20.0, 30.0].repeat(40 * 30) };
        let spec =
            PreprocessSpec { resize: 16, crop: 8, mean: [0.0; 3], scale: [10.0, 10.0, 10.0], channels: Channels::Bgr };
        let t = to_tensor(&image, &spec);
        assert_eq!(t.len(), 3 * 64);
        for (c, want) in [3.0, 2.0, 1.0].into_iter().enumerate() {
            assert!(t[c * 64..(c + 1) * 64].iter().all(|x| (x - want).abs() < 1e-5), "channel {c}");
        }
    }

    #[test]
    fn not_images_are_refused_with_a_reason() {
        assert_eq!(decode(b"<html>404</html>").unwrap_err(), "not an image (JPEG, PNG or WebP)");
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(decode(gif).unwrap_err().starts_with("not an image this takes (Gif"));
        // A PNG's signature and nothing else.
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0").unwrap_err().starts_with("cannot decode the Png image"));
    }
}
