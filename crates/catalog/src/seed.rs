//! The demo catalog: 200 products in 10 categories, the same on every run.
//!
//! Loaded on first start of an empty database (unless `--no-demo`), or with
//! `agora seed --demo`. Deterministic, so demos, docs and benchmarks agree.

use agora_kernel::{Currency, Money, ProductId};

use crate::domain::{CategoryDraft, ProductDraft, empty_attributes, parse_attributes, slugify};
use crate::error::CatalogError;
use crate::service::Catalog;
use crate::store::{new_category, new_product};

/// Each category, its SKU prefix, and the nouns its products are named after.
const CATEGORIES: [(&str, &str, [&str; 4]); 10] = [
    (
        "Audio",
        "AUD",
        ["Headphones", "Speaker", "Turntable", "Earbuds"],
    ),
    (
        "Books",
        "BOK",
        ["Cookbook", "Field Guide", "Novel", "Atlas"],
    ),
    ("Cameras", "CAM", ["Camera", "Lens", "Tripod", "Camera Bag"]),
    (
        "Coffee & Tea",
        "COF",
        ["Espresso Beans", "Teapot", "Pour-Over Kettle", "Grinder"],
    ),
    (
        "Footwear",
        "FTW",
        ["Running Shoe", "Hiking Boot", "Sandal", "Sneaker"],
    ),
    (
        "Garden",
        "GRD",
        ["Trowel", "Watering Can", "Planter", "Pruning Shears"],
    ),
    (
        "Home Office",
        "OFF",
        ["Desk Lamp", "Notebook", "Monitor Stand", "Desk Chair"],
    ),
    (
        "Kitchen",
        "KIT",
        [
            "Chef's Knife",
            "Cast-Iron Pan",
            "Cutting Board",
            "Dutch Oven",
        ],
    ),
    (
        "Outdoor",
        "OUT",
        ["Tent", "Sleeping Bag", "Headlamp", "Backpack"],
    ),
    (
        "Toys",
        "TOY",
        ["Puzzle", "Building Set", "Kite", "Board Game"],
    ),
];

/// Five styles per noun: 4 nouns × 5 styles = 20 products a category.
const STYLES: [&str; 5] = ["Classic", "Compact", "Deluxe", "Everyday", "Pro"];
const COLOURS: [&str; 6] = ["black", "white", "sand", "forest", "navy", "rust"];

/// What a seeding run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Categories added.
    pub categories: usize,
    /// The products added, in the order loaded (none when the catalog was not
    /// empty).
    pub products: Vec<ProductId>,
}

/// Loads the demo catalog in one transaction if the catalog is empty; does nothing
/// (and says so) otherwise.
pub async fn seed_demo(catalog: &Catalog) -> Result<SeedReport, CatalogError> {
    let store = catalog.store();
    let usd = Currency::parse("USD").map_err(|e| CatalogError::Unexpected(e.into()))?;
    let now = catalog.now();
    // Decide and write in one transaction (and, on PostgreSQL, under a lock), so
    // replicas starting together load the catalog once.
    let mut tx = store.db().begin().await?;
    store.lock_for_seeding(&mut tx).await?;
    if !store.is_empty(&mut *tx).await? {
        tx.rollback().await?;
        return Ok(SeedReport {
            categories: 0,
            products: Vec::new(),
        });
    }
    let mut report = SeedReport {
        categories: 0,
        products: Vec::new(),
    };
    for (ci, (name, prefix, nouns)) in CATEGORIES.iter().enumerate() {
        let category = new_category(
            CategoryDraft {
                name: (*name).to_string(),
                slug: slugify(name).unwrap_or_else(|| prefix.to_lowercase()),
                description: format!("Everything in {name}."),
                parent_id: None,
            },
            now,
        );
        store.insert_category(&mut *tx, &category).await?;
        report.categories += 1;
        for (ni, noun) in nouns.iter().enumerate() {
            for (si, style) in STYLES.iter().enumerate() {
                let n = ni * STYLES.len() + si;
                let product_name = format!("{style} {noun}");
                // Prices from 4.99 to ~500 in a spread that makes range filters useful.
                let cents = 499 + ((ci * 7_919 + n * 3_571) % 49_500) as i64;
                let cents = cents - cents % 100 + 99;
                let colour = COLOURS[(ci + n) % COLOURS.len()];
                let attributes = parse_attributes(&serde_json::json!({
                    "colour": colour,
                    "style": style.to_lowercase(),
                }))
                .unwrap_or_else(|_| empty_attributes());
                let product = new_product(
                    ProductDraft {
                        sku: format!("{prefix}-{:03}", n + 1),
                        slug: slugify(&format!("{product_name} {prefix} {}", n + 1))
                            .unwrap_or_else(|| format!("{}-{}", prefix.to_lowercase(), n + 1)),
                        name: product_name.clone(),
                        description: format!(
                            "The {} {} from our {name} range, in {colour}.",
                            style.to_lowercase(),
                            noun.to_lowercase()
                        ),
                        price: Money::new(cents, usd)
                            .map_err(|e| CatalogError::Unexpected(e.into()))?,
                        category_id: Some(category.id),
                        attributes,
                        // Every twentieth product is retired, so the active filter shows.
                        active: n != 19,
                    },
                    now,
                );
                store.insert_product(&mut *tx, &product).await?;
                report.products.push(product.id);
            }
        }
    }
    tx.commit().await?;
    catalog.forget_cached_reads().await;
    tracing::info!(
        categories = report.categories,
        products = report.products.len(),
        "demo catalog loaded"
    );
    Ok(report)
}
