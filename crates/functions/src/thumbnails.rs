//! The thumbnails function: on ImageUploaded, it reads the original from the
//! object storage, makes a JPEG rendition fitted into each of 128 and 512 px
//! (never enlarged; transparency laid on white), stores each under
//! `renditions/<sha256>-<size>.jpg`, and attaches them to the image through
//! the catalog's port.

use std::io::Cursor;
use std::sync::Arc;

use agora_contracts::catalog::{CatalogPort, Rendition};
use agora_contracts::events::{EventPayload, ImageUploaded};
use agora_kernel::Clock;
use agora_platform::Database;
use agora_platform::bus::{Event, Handler};
use agora_platform::storage::{ObjectKey, ObjectStorage};
use anyhow::Context;
use async_trait::async_trait;
use axum::body::Bytes;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageReader, Rgb, RgbImage};

use crate::INBOX;

/// The consumer name of the thumbnails function.
pub const CONSUMER: &str = "functions-thumbnails";
/// The events it takes.
pub const KINDS: [&str; 1] = [ImageUploaded::KIND];
/// The boxes renditions are fitted into, in pixels.
pub const SIZES: [u32; 2] = [128, 512];
/// JPEG quality of the renditions.
const QUALITY: u8 = 85;
/// The most memory decoding one original may take (uploads are checked
/// against smaller limits; this guards against objects placed by hand).
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// The thumbnails function.
pub struct Thumbnails {
    storage: ObjectStorage,
    catalog: Arc<dyn CatalogPort>,
    db: Database,
    clock: Arc<dyn Clock>,
}

impl Thumbnails {
    /// The function, reading and writing `storage`, attaching through
    /// `catalog`, recording what it handled in `db`'s `functions_inbox`.
    pub fn new(
        storage: ObjectStorage,
        catalog: Arc<dyn CatalogPort>,
        db: Database,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            storage,
            catalog,
            db,
            clock,
        }
    }

    /// Makes, stores and attaches the renditions of one uploaded image.
    pub async fn run(&self, uploaded: &ImageUploaded) -> anyhow::Result<Vec<Rendition>> {
        let original_key = ObjectKey::parse(&uploaded.key)
            .map_err(|e| anyhow::anyhow!("the image key {:?} {e}", uploaded.key))?;
        let original = self
            .storage
            .read(&original_key)
            .await
            .with_context(|| format!("reading {original_key}"))?;
        let stem = original_key.stem().to_string();
        let made = tokio::task::spawn_blocking(move || render(&original))
            .await
            .context("the rendering task")??;
        let mut renditions = Vec::with_capacity(made.len());
        for (size, bytes, width, height) in made {
            let key = ObjectKey::parse(&format!("renditions/{stem}-{size}.jpg"))
                .map_err(|e| anyhow::anyhow!("a rendition key {e}"))?;
            self.storage
                .put(&key, bytes)
                .await
                .with_context(|| format!("storing {key}"))?;
            renditions.push(Rendition {
                size,
                key: key.to_string(),
                content_type: "image/jpeg".to_string(),
                width,
                height,
            });
        }
        let attached = self
            .catalog
            .attach_renditions(uploaded.image_id, &renditions)
            .await?;
        if !attached {
            tracing::info!(image_id = %uploaded.image_id, "the image was removed before its renditions were made");
        }
        Ok(renditions)
    }
}

#[async_trait]
impl Handler for Thumbnails {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if event.kind != ImageUploaded::KIND || INBOX.handled(&self.db, CONSUMER, event).await? {
            return Ok(());
        }
        // A payload this version cannot read fails, and after the bus's
        // attempts it is parked as a dead letter: kept, not lost.
        let uploaded: ImageUploaded = event
            .payload()
            .context("an ImageUploaded payload this version does not understand")?;
        let renditions = self.run(&uploaded).await?;
        INBOX
            .record(&self.db, CONSUMER, event, self.clock.now())
            .await?;
        tracing::info!(
            image_id = %uploaded.image_id,
            renditions = renditions.len(),
            "renditions made"
        );
        Ok(())
    }
}

/// `(size, JPEG bytes, width, height)` for each of [`SIZES`].
fn render(original: &[u8]) -> anyhow::Result<Vec<(u32, Bytes, u32, u32)>> {
    let mut reader = ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .context("reading the original")?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = on_white(reader.decode().context("decoding the original")?);
    SIZES
        .iter()
        .map(|&size| {
            let (w, h) = image.dimensions();
            let fitted = if w <= size && h <= size {
                image.clone()
            } else {
                image.resize(size, size, FilterType::CatmullRom)
            };
            let mut out = Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY)
                .encode_image(&fitted)
                .context("encoding a rendition")?;
            Ok((
                size,
                Bytes::from(out.into_inner()),
                fitted.width(),
                fitted.height(),
            ))
        })
        .collect()
}

/// The image as RGB, its transparent parts laid on white (JPEG has no alpha).
fn on_white(image: DynamicImage) -> DynamicImage {
    if !image.color().has_alpha() {
        return DynamicImage::ImageRgb8(image.to_rgb8());
    }
    let rgba = image.to_rgba8();
    let rgb = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u16::from(p[3]);
        let blend = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    });
    DynamicImage::ImageRgb8(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, alpha: u8) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 0, 0, alpha]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encodes");
        out.into_inner()
    }

    #[test]
    fn renditions_fit_their_box_keep_the_aspect_and_never_grow() {
        let made = render(&png(1000, 500, 255)).expect("rendered");
        let sizes: Vec<_> = made.iter().map(|(s, _, w, h)| (*s, *w, *h)).collect();
        assert_eq!(sizes, [(128, 128, 64), (512, 512, 256)]);
        for (_, bytes, w, h) in &made {
            let back = image::load_from_memory(bytes).expect("a JPEG");
            assert_eq!((back.width(), back.height()), (*w, *h));
            assert_eq!(
                image::guess_format(bytes).ok(),
                Some(image::ImageFormat::Jpeg)
            );
        }
        let small = render(&png(100, 40, 255)).expect("rendered");
        assert!(small.iter().all(|(_, _, w, h)| (*w, *h) == (100, 40)));
    }

    #[test]
    fn transparency_is_laid_on_white() {
        let made = render(&png(10, 10, 0)).expect("rendered");
        let back = image::load_from_memory(&made[0].1)
            .expect("a JPEG")
            .to_rgb8();
        assert!(
            back.pixels().all(|p| p.0.iter().all(|&c| c > 245)),
            "{:?}",
            back.get_pixel(0, 0)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(render(b"\x89PNG\r\n\x1a\n garbage").is_err());
        assert!(render(b"").is_err());
    }
}
