//! Product images over HTTP: upload, listing, `/media`, the thumbnails
//! function, and uploads that must be refused with nothing stored.

use std::io::Cursor;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// A PNG of `width` × `height` with a gradient (so its bytes differ by size).
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 90])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

async fn product(app: &TestApp) -> String {
    app.create_product(json!({})).await["id"]
        .as_str()
        .expect("an id")
        .to_string()
}

/// Files under `dir` of the app's object storage (`""`: all of it).
fn stored_files(app: &TestApp, dir: &str) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { count(&path) } else { 1 }
                })
                .sum()
        })
    }
    count(&app.config.storage_path().join(dir))
}

/// Waits for the thumbnails function to attach the image's renditions.
async fn renditions(app: &TestApp, product: &str) -> Vec<Value> {
    for _ in 0..500 {
        let images = app
            .get_as(
                &format!("/api/v1/products/{product}/images"),
                crate::helpers::As::Staff,
            )
            .await;
        let found = images.data()[0]["renditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no renditions were attached");
}

#[tokio::test]
async fn an_uploaded_image_is_served_with_its_renditions() {
    let app = spawn_app().await;
    let id = product(&app).await;
    let bytes = png(800, 400);
    let uploaded = app.upload_image(&id, bytes.clone()).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{:?}", uploaded.body);
    let image = uploaded.data().clone();
    assert_eq!(image["content_type"], "image/png");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(800), Some(400))
    );
    let url = image["url"].as_str().expect("a url").to_string();
    assert!(
        url.starts_with("/media/images/") && url.ends_with(".png"),
        "{url}"
    );

    // The same bytes again are the same image.
    let again = app.upload_image(&id, bytes.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.data()["id"], image["id"]);

    let media = app
        .client
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .expect("served");
    assert_eq!(media.status(), StatusCode::OK);
    assert_eq!(media.headers()["content-type"], "image/png");
    assert!(
        media.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("immutable")
    );
    let etag = media.headers()["etag"].clone();
    assert_eq!(&media.bytes().await.expect("bytes")[..], &bytes[..]);
    let cached = app
        .client
        .get(format!("{}{url}", app.base))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("served");
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let made = renditions(&app, &id).await;
    let sizes: Vec<_> = made
        .iter()
        .map(|r| {
            (
                r["size"].as_u64(),
                r["width"].as_u64(),
                r["height"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            (Some(128), Some(128), Some(64)),
            (Some(512), Some(512), Some(256))
        ]
    );
    let thumb = app
        .client
        .get(format!(
            "{}{}",
            app.base,
            made[0]["url"].as_str().expect("a url")
        ))
        .send()
        .await
        .expect("served");
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let thumb = image::load_from_memory(&thumb.bytes().await.expect("bytes")).expect("a JPEG");
    assert_eq!((thumb.width(), thumb.height()), (128, 64));

    // The public listing shows the same, through the cache.
    let public = app.get(&format!("/api/v1/products/{id}/images")).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(
        public.data()[0]["renditions"].as_array().map(Vec::len),
        Some(2)
    );

    let removed = app
        .delete(&format!(
            "/api/v1/products/{id}/images/{}",
            image["id"].as_str().expect("an id")
        ))
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    let none = app.get(&format!("/api/v1/products/{id}/images")).await;
    assert_eq!(none.data(), &json!([]));
}

#[tokio::test]
async fn bad_uploads_are_refused_by_code_and_store_nothing() {
    let app = spawn_app().await;
    let id = product(&app).await;
    let good = png(16, 16);
    let mut header_on_garbage = good[..33].to_vec();
    header_on_garbage.extend(std::iter::repeat_n(0x5A, 400));
    let zip_named_jpg = b"PK\x03\x04\x14\x00\x00\x00\x08\x00not an image".to_vec();
    let truncated = good[..good.len() / 2].to_vec();
    let oversized = vec![0xFF; app.config.storage.max_image_bytes + 1];
    for (what, bytes, status, code) in [
        (
            "a zip named .jpg",
            zip_named_jpg,
            415,
            "CATALOG_IMAGE_UNSUPPORTED",
        ),
        (
            "a PNG header on garbage",
            header_on_garbage,
            422,
            "CATALOG_IMAGE_INVALID",
        ),
        ("a truncated PNG", truncated, 422, "CATALOG_IMAGE_INVALID"),
        ("too many bytes", oversized, 413, "CATALOG_IMAGE_TOO_LARGE"),
    ] {
        let refused = app.upload_image(&id, bytes).await;
        assert_eq!(
            refused.status.as_u16(),
            status,
            "{what}: {:?}",
            refused.body
        );
        assert_eq!(refused.code(), code, "{what}");
    }
    let not_multipart = app
        .post(
            &format!("/api/v1/products/{id}/images"),
            json!({"file": "x"}),
        )
        .await;
    assert_eq!(not_multipart.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_multipart.code(), "CATALOG_IMAGE_MISSING");
    let unknown = app
        .upload_image("prod_0193aaaaaaaa7aaa8aaaaaaaaaaaaaaa", good)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "CATALOG_PRODUCT_NOT_FOUND");

    // (The nightly export may have written yesterday's file: not an image.)
    assert_eq!(
        stored_files(&app, "images") + stored_files(&app, "renditions"),
        0,
        "nothing reached the storage"
    );
    let listed = app.get(&format!("/api/v1/products/{id}/images")).await;
    assert_eq!(listed.data(), &json!([]));
    // The count sees the storage: a good upload is one original there (its
    // renditions come when the thumbnails function has run).
    let taken = app.upload_image(&id, png(16, 16)).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{:?}", taken.body);
    assert_eq!(stored_files(&app, "images"), 1);
    for key in [
        "images/../../etc/passwd",
        "exports/2026-12-01.csv",
        "images/none.png",
    ] {
        let missing = app.get(&format!("/media/{key}")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{key}");
    }
}
