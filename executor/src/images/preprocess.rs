//! An image's bytes to a model's input tensor, as `preprocess` says: its size read from its
//! header and refused over `fetch.max_pixels` before anything is decoded (a small file can
//! claim gigabytes: a decompression bomb), decoded (JPEG, PNG or WebP) into 8-bit values, its
//! short side resized to `resize` with transparent pixels laid over white as the rows are read,
//! the centre `crop` x `crop` cut out, each channel `(x - mean) / scale`, channels first.
//!
//! One image's peak memory is its 8-bit pixels (at most 4 bytes a pixel, so 160 MB at the
//! default 40 megapixels) and the rows resized across (`height x resized width x 3` floats);
//! no floating-point copy of the whole image is made.
//!
//! The resize is bilinear with the filter widened by the scale when shrinking (as PIL's
//! `Image.resize(..., BILINEAR)` does, so that shrinking averages every pixel instead of
//! sampling a few), computed in floating point throughout: the tests' numpy reference computes
//! the same weights and gets the same tensor to float rounding.

use std::io::Cursor;

use embedstream_core::spec::image::{Channels, PreprocessSpec};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// An image as RGB values from 0 to 255, row by row, three values a pixel.
#[derive(Debug)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

/// A decoded image's 8-bit pixels: RGB (3 bytes a pixel) or RGBA (4), row by row.
#[derive(Debug)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    /// 3 or 4.
    pub channels: usize,
    pub bytes: Vec<u8>,
}

impl Pixels {
    /// Row `y` as RGB floats, transparent pixels laid over white.
    fn row_into(&self, y: usize, out: &mut Vec<f32>) {
        out.clear();
        let row = &self.bytes[y * self.width * self.channels..(y + 1) * self.width * self.channels];
        if self.channels == 3 {
            out.extend(row.iter().map(|&c| c as f32));
            return;
        }
        for px in row.chunks_exact(4) {
            let alpha = px[3] as f32 / 255.0;
            out.extend(px[..3].iter().map(|&c| c as f32 * alpha + 255.0 * (1.0 - alpha)));
        }
    }
}

/// Decodes a JPEG, PNG or WebP image of at most `max_pixels` pixels into 8-bit RGB or RGBA.
/// The error is a dead letter's reason.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Pixels, String> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Ok(other) => return Err(format!("not an image this takes ({other:?}; JPEG, PNG or WebP)")),
        Err(_) => return Err("not an image (JPEG, PNG or WebP)".to_string()),
    };
    let cannot = |e: image::ImageError| format!("cannot decode the {format:?} image: {e}");
    // The header alone first: the size decides before a byte of pixels is allocated.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(cannot)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(format!("image is {w} x {h} pixels ({pixels}), over fetch.max_pixels = {max_pixels}"));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // 16-bit RGBA is the widest a decoder allocates (8 bytes a pixel), plus its own buffers.
    limits.max_alloc = Some(pixels * 8 + (16 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(cannot)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (channels, bytes) = match image {
        DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
        DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
        other if other.color().has_alpha() => (4, other.into_rgba8().into_raw()),
        other => (3, other.into_rgb8().into_raw()),
    };
    Ok(Pixels { width, height, channels, bytes })
}

/// The input tensor of an image's bytes (`spec.tensor_len()` values), or why there is none.
pub fn tensor(bytes: &[u8], spec: &PreprocessSpec, max_pixels: u64) -> Result<Vec<f32>, String> {
    Ok(to_tensor(&decode(bytes, max_pixels)?, spec))
}

/// The tensor of a decoded image.
pub fn to_tensor(image: &Pixels, spec: &PreprocessSpec) -> Vec<f32> {
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

/// Resizes to `width` x `height`: rows first (each source row made RGB floats as it is read),
/// then columns.
pub fn resize(image: &Pixels, width: usize, height: usize) -> Rgb {
    let ih = image.height;
    let across = weights(image.width, width);
    let mut rows = vec![0f32; ih * width * 3];
    let mut src = Vec::with_capacity(image.width * 3);
    for y in 0..ih {
        image.row_into(y, &mut src);
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
        let image = Pixels { width: 40, height: 30, channels: 3, bytes: [10, 20, 30].repeat(40 * 30) };
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
        let most = 40_000_000;
        assert_eq!(decode(b"<html>404</html>", most).unwrap_err(), "not an image (JPEG, PNG or WebP)");
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(decode(gif, most).unwrap_err().starts_with("not an image this takes (Gif"));
        // A PNG's signature and nothing else.
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0", most).unwrap_err().starts_with("cannot decode the Png image"));
    }

    #[test]
    fn a_decompression_bomb_is_refused_by_its_header() {
        // A PNG header claiming 20000 x 20000 (1.6 GB of RGBA): refused before any decoding,
        // with its size and the limit, whatever follows the header.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(20_000u32.to_be_bytes());
        ihdr.extend(20_000u32.to_be_bytes());
        ihdr.extend([8, 6, 0, 0, 0]); // 8 bits, RGBA
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc32(&ihdr).to_be_bytes());
        // An empty first IDAT chunk: the header ends where pixels would begin.
        png.extend(0u32.to_be_bytes());
        png.extend(b"IDAT");
        png.extend(crc32(b"IDAT").to_be_bytes());
        let e = decode(&png, 40_000_000).unwrap_err();
        assert_eq!(e, "image is 20000 x 20000 pixels (400000000), over fetch.max_pixels = 40000000");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
