//! Deterministic demo data: a realistic catalog of `N` SKUs, bulk-loaded with `COPY`.
//!
//! The same `N` always gives the same catalog (a fixed-seed generator), so demos, tests and
//! benchmarks can name SKUs by id. Runs only into an empty catalog.

use std::fmt::Write as _;

use mall_common::db::Db;

/// What `seed` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeded {
    /// The catalog already had SKUs; nothing was written.
    AlreadySeeded(i64),
    /// Rows written.
    Written {
        /// Categories (all three levels).
        categories: usize,
        /// Brands.
        brands: usize,
        /// SPUs.
        spus: usize,
        /// SKUs.
        skus: usize,
    },
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const DEPARTMENTS: [&str; 8] = [
    "Clothing",
    "Shoes",
    "Electronics",
    "Home",
    "Sports",
    "Beauty",
    "Toys",
    "Books",
];
const AISLES: [&str; 4] = ["Essentials", "Premium", "Outdoor", "Kids"];
const SHELVES: [&str; 4] = ["New", "Classic", "Travel", "Gifts"];
const BRAND_A: [&str; 10] = [
    "North", "Blue", "Iron", "Silver", "Red", "Urban", "Wild", "Golden", "Swift", "Bright",
];
const BRAND_B: [&str; 6] = ["Peak", "Works", "Line", "Craft", "Labs", "Co"];
const ADJECTIVES: [&str; 12] = [
    "Lightweight",
    "Classic",
    "Waterproof",
    "Organic",
    "Slim",
    "Ergonomic",
    "Vintage",
    "Wireless",
    "Compact",
    "Insulated",
    "Breathable",
    "Durable",
];
const NOUNS: [&str; 12] = [
    "Jacket",
    "Sneaker",
    "Headphones",
    "Lamp",
    "Backpack",
    "Bottle",
    "Blender",
    "Tent",
    "Watch",
    "Kettle",
    "Sweater",
    "Speaker",
];
const COLOURS: [&str; 6] = ["Black", "White", "Red", "Blue", "Green", "Grey"];
const SIZES: [&str; 5] = ["XS", "S", "M", "L", "XL"];

/// 2026-01-01 plus `offset` seconds, as a timestamptz literal (offsets below 31 days).
fn created_at(offset: i64) -> String {
    format!(
        "2026-01-{:02} {:02}:{:02}:{:02}+00",
        1 + offset / 86_400,
        (offset / 3600) % 24,
        (offset / 60) % 60,
        offset % 60
    )
}

fn csv(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Fills an empty catalog with `skus` SKUs (three per SPU).
pub async fn seed(db: &Db, skus: usize) -> Result<Seeded, sqlx::Error> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM skus")
        .fetch_one(db.pool())
        .await?;
    if existing > 0 {
        return Ok(Seeded::AlreadySeeded(existing));
    }
    let (categories, leaves) = category_rows();
    let (brands, brand_count) = brand_rows();
    let products = product_rows(skus, &leaves, brand_count);
    copy_in(db, &categories, &brands, &products).await?;
    Ok(Seeded::Written {
        categories: categories.lines().count(),
        brands: brand_count as usize,
        spus: products.spus.lines().count(),
        skus: products.skus.lines().count(),
    })
}

/// The category tree as CSV rows, and the ids of its leaves (level 3).
fn category_rows() -> (String, Vec<i64>) {
    let mut categories = String::new();
    let mut leaves = Vec::new();
    let mut id = 0i64;
    for d in DEPARTMENTS {
        id += 1;
        let root = id;
        writeln!(categories, "{root},,{},1", csv(d)).ok();
        for a in AISLES {
            id += 1;
            let mid = id;
            writeln!(categories, "{mid},{root},{},2", csv(&format!("{d} {a}"))).ok();
            for s in SHELVES {
                id += 1;
                writeln!(categories, "{id},{mid},{},3", csv(&format!("{d} {a} {s}"))).ok();
                leaves.push(id);
            }
        }
    }
    (categories, leaves)
}

/// The brands as CSV rows, and how many.
fn brand_rows() -> (String, i64) {
    let mut brands = String::new();
    let mut brand_count = 0i64;
    for a in BRAND_A {
        for b in BRAND_B {
            brand_count += 1;
            writeln!(brands, "{brand_count},{}", csv(&format!("{a} {b}"))).ok();
        }
    }
    (brands, brand_count)
}

/// SPU and SKU rows of the demo catalog.
struct ProductRows {
    spus: String,
    skus: String,
}

/// `skus` SKUs, three per SPU, in deterministic pseudo-random categories and brands.
fn product_rows(skus: usize, leaves: &[i64], brand_count: i64) -> ProductRows {
    let mut rng = Rng(42);
    let spu_count = skus.div_ceil(3).max(1);
    let mut spus = String::new();
    let mut sku_rows = String::new();
    let mut sku_id = 0i64;
    for spu in 1..=spu_count as i64 {
        let (adj, noun, colour0) = (rng.pick(&ADJECTIVES), rng.pick(&NOUNS), rng.pick(&COLOURS));
        let title = format!("{adj} {noun} {spu}");
        let description = format!(
            "A {} {} in {}, made to last.",
            adj.to_lowercase(),
            noun.to_lowercase(),
            colour0.to_lowercase()
        );
        let category = leaves[(rng.next() % leaves.len() as u64) as usize];
        let brand = 1 + (rng.next() % brand_count as u64) as i64;
        let base = 500 + (rng.next() % 50_000) as i64;
        let mut min_price = i64::MAX;
        let in_this = (skus as i64 - sku_id).min(3);
        for v in 0..in_this {
            sku_id += 1;
            let (colour, size) = (COLOURS[((spu + v) % 6) as usize], SIZES[(v % 5) as usize]);
            let price = base + v * 100;
            min_price = min_price.min(price);
            let attrs = format!("{{\"colour\":\"{colour}\",\"size\":\"{size}\"}}");
            writeln!(
                sku_rows,
                "{sku_id},{spu},{},{},{price}",
                csv(&format!("{colour}, {size}")),
                csv(&attrs)
            )
            .ok();
        }
        let images = format!("{{https://img.mall.example/spu/{spu}.jpg}}");
        // Spread creation times so "newest" has an order to show.
        writeln!(
            spus,
            "{spu},{},{},{category},{brand},{},{},{min_price},{}",
            csv(&title),
            csv(&description),
            csv(&format!(
                "{{\"material\":\"{}\"}}",
                rng.pick(&["cotton", "steel", "plastic", "wood", "wool"])
            )),
            csv(&images),
            created_at(spu),
        )
        .ok();
    }
    ProductRows { spus, skus: sku_rows }
}

/// Writes every table with `COPY` in one transaction and moves the id sequences past the rows.
async fn copy_in(db: &Db, categories: &str, brands: &str, products: &ProductRows) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    for (copy, data) in [
        (
            "COPY categories (id, parent_id, name, level) FROM STDIN WITH (FORMAT csv)",
            categories,
        ),
        ("COPY brands (id, name) FROM STDIN WITH (FORMAT csv)", brands),
        (
            "COPY spus (id, title, description, category_id, brand_id, attributes, images, price_cents, created_at) FROM STDIN WITH (FORMAT csv)",
            &products.spus,
        ),
        (
            "COPY skus (id, spu_id, title, sale_attributes, price_cents) FROM STDIN WITH (FORMAT csv)",
            &products.skus,
        ),
    ] {
        let mut sink = tx.copy_in_raw(copy).await?;
        sink.send(data.as_bytes()).await?;
        sink.finish().await?;
    }
    for table in ["categories", "brands", "spus", "skus"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
