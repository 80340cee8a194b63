//! Product images: what an upload must be, and how it is stored.
//!
//! The type of an upload is read from its bytes (never from its name or the
//! declared content type), and only JPEG, PNG and WebP are taken. The whole
//! image is decoded, under size limits, before anything is stored: a PNG
//! header on garbage, a truncated file or a zip named `.jpg` is refused with a
//! code. The original is stored under the SHA-256 of its bytes, so the same
//! bytes are stored once, whoever uploads them.

use std::io::Cursor;

use agora_contracts::catalog::Rendition;
use agora_kernel::{ImageId, ProductId, Timestamp};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::CatalogError;

/// The most images one product may have.
pub const MAX_IMAGES_PER_PRODUCT: usize = 20;
/// The widest or tallest image taken, in pixels.
pub const MAX_SIDE: u32 = 8_000;
/// The most pixels an image may have (width × height).
pub const MAX_PIXELS: u64 = 40_000_000;
/// Longest alternative text, in characters.
pub const MAX_ALT_CHARS: usize = 300;
/// The most memory decoding one image may take.
const MAX_DECODE_BYTES: u64 = 4 * MAX_PIXELS + 64 * 1024 * 1024;
/// Where originals are stored.
pub const ORIGINALS_PREFIX: &str = "images/";
/// Where renditions are stored.
pub const RENDITIONS_PREFIX: &str = "renditions/";

/// The formats taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
}

impl ImageFormat {
    /// The file extension of its keys.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }

    /// Its content type.
    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
        }
    }

    fn decoder_format(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Webp => image::ImageFormat::WebP,
        }
    }
}

/// An upload that passed: what it is, how big, and its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Its format, read from its bytes.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The SHA-256 of its bytes, in lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub byte_size: usize,
}

impl Inspected {
    /// The object key of the original.
    pub fn key(&self) -> String {
        format!(
            "{ORIGINALS_PREFIX}{}.{}",
            self.sha256,
            self.format.extension()
        )
    }
}

/// Checks that `bytes` are one whole JPEG, PNG or WebP image within the
/// limits. CPU-bound (it decodes the image): call it off the async threads.
pub fn inspect(bytes: &[u8], max_bytes: usize) -> Result<Inspected, CatalogError> {
    if bytes.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    let format = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Ok(image::ImageFormat::Png) => ImageFormat::Png,
        Ok(image::ImageFormat::WebP) => ImageFormat::Webp,
        _ => return Err(CatalogError::ImageUnsupported),
    };
    let reader = || {
        let mut reader =
            image::ImageReader::with_format(Cursor::new(bytes), format.decoder_format());
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        reader
    };
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| decode_error(e, max_bytes))?;
    if width == 0 || height == 0 {
        return Err(CatalogError::ImageInvalid);
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large(max_bytes));
    }
    // The header can lie about the rest: decode all of it.
    let decoded = reader().decode().map_err(|e| decode_error(e, max_bytes))?;
    if (decoded.width(), decoded.height()) != (width, height) {
        return Err(CatalogError::ImageInvalid);
    }
    Ok(Inspected {
        format,
        width,
        height,
        sha256: hex::encode(Sha256::digest(bytes)),
        byte_size: bytes.len(),
    })
}

fn too_large(max_bytes: usize) -> CatalogError {
    CatalogError::ImageTooLarge { max_bytes }
}

fn decode_error(e: image::ImageError, max_bytes: usize) -> CatalogError {
    match e {
        image::ImageError::Limits(_) => too_large(max_bytes),
        image::ImageError::Unsupported(_) => CatalogError::ImageUnsupported,
        _ => CatalogError::ImageInvalid,
    }
}

/// Alternative text: trimmed, up to 300 characters, no control characters.
pub fn parse_alt(raw: &str) -> Result<String, String> {
    let alt = raw.trim();
    if alt.chars().count() > MAX_ALT_CHARS {
        return Err(format!("must be at most {MAX_ALT_CHARS} characters"));
    }
    if alt.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(alt.to_string())
}

/// An image of a product.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProductImage {
    /// The image's id.
    pub id: ImageId,
    /// The product it shows.
    pub product_id: ProductId,
    /// Where the original is served.
    #[schema(
        example = "/media/images/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.jpg"
    )]
    pub url: String,
    /// Its object key.
    pub key: String,
    /// `image/jpeg`, `image/png` or `image/webp`, read from the bytes.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size in bytes.
    pub byte_size: u64,
    /// The SHA-256 of the bytes, in hex.
    pub sha256: String,
    /// Alternative text; may be empty.
    pub alt: String,
    /// Smaller copies (128 and 512 px), once the thumbnails function made
    /// them; empty until then.
    pub renditions: Vec<RenditionView>,
    /// When it was added.
    pub created_at: Timestamp,
}

/// A rendition as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RenditionView {
    /// The square box, in pixels, it fits in.
    pub size: u32,
    /// Where it is served.
    pub url: String,
    /// Its content type.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl From<Rendition> for RenditionView {
    fn from(r: Rendition) -> Self {
        RenditionView {
            size: r.size,
            url: media_url(&r.key),
            content_type: r.content_type,
            width: r.width,
            height: r.height,
        }
    }
}

/// Where the object `key` is served.
pub fn media_url(key: &str) -> String {
    format!("/media/{key}")
}

/// Whether `key` names an object the media route may serve: originals and
/// renditions, nothing else in the storage (exports are private).
pub fn is_public_key(key: &str) -> bool {
    key.starts_with(ORIGINALS_PREFIX) || key.starts_with(RENDITIONS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024 * 1024;

    fn encoded(format: image::ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, format)
            .expect("encodes");
        out.into_inner()
    }

    #[test]
    fn jpeg_png_and_webp_are_taken_and_hashed() {
        for (format, ours) in [
            (image::ImageFormat::Jpeg, ImageFormat::Jpeg),
            (image::ImageFormat::Png, ImageFormat::Png),
            (image::ImageFormat::WebP, ImageFormat::Webp),
        ] {
            let bytes = encoded(format, 40, 30);
            let seen = inspect(&bytes, MAX).expect("taken");
            assert_eq!((seen.format, seen.width, seen.height), (ours, 40, 30));
            assert_eq!(seen.byte_size, bytes.len());
            assert_eq!(seen.sha256, hex::encode(Sha256::digest(&bytes)));
            assert_eq!(
                seen.key(),
                format!("images/{}.{}", seen.sha256, ours.extension())
            );
        }
    }

    #[test]
    fn disguised_truncated_and_oversized_files_are_refused_by_code() {
        let png = encoded(image::ImageFormat::Png, 64, 64);
        let jpeg = encoded(image::ImageFormat::Jpeg, 64, 64);
        let mut header_on_garbage = png[..33].to_vec();
        header_on_garbage.extend(std::iter::repeat_n(0xA5, 500));
        let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00fake zip named photo.jpg".to_vec();
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
        type Case<'a> = (&'a str, &'a [u8], fn(&CatalogError) -> bool);
        let cases: [Case; 7] = [
            ("empty", b"", |e| {
                matches!(e, CatalogError::ImageUnsupported)
            }),
            ("a zip", &zip, |e| {
                matches!(e, CatalogError::ImageUnsupported)
            }),
            ("a GIF", &gif, |e| {
                matches!(e, CatalogError::ImageUnsupported)
            }),
            ("a PNG header on garbage", &header_on_garbage, |e| {
                matches!(e, CatalogError::ImageInvalid)
            }),
            ("a truncated PNG", &png[..png.len() / 2], |e| {
                matches!(e, CatalogError::ImageInvalid)
            }),
            ("a truncated JPEG", &jpeg[..jpeg.len() / 2], |e| {
                matches!(e, CatalogError::ImageInvalid)
            }),
            ("too many bytes", &png, |e| {
                matches!(e, CatalogError::ImageTooLarge { max_bytes: 100 })
            }),
        ];
        for (what, bytes, expected) in cases {
            let max = if what == "too many bytes" { 100 } else { MAX };
            match inspect(bytes, max) {
                Err(e) if expected(&e) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn images_beyond_the_pixel_limits_are_too_large() {
        // A PNG that claims 9000 × 1 pixels: refused from its header.
        let wide = encoded(image::ImageFormat::Png, MAX_SIDE + 1, 1);
        assert!(matches!(
            inspect(&wide, MAX),
            Err(CatalogError::ImageTooLarge { .. })
        ));
    }

    #[test]
    fn alt_text_is_checked() {
        assert_eq!(parse_alt("  a red mug ").as_deref(), Ok("a red mug"));
        assert!(parse_alt(&"x".repeat(MAX_ALT_CHARS + 1)).is_err());
        assert!(parse_alt("a\u{7}b").is_err());
    }
}
