//! The catalog's SQL. Every write keeps `spus.price_cents` (the lowest on-sale SKU price) in the
//! same transaction, so listings sort and page by price on an index.

use mall_common::db::Db;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::views::{CategoryNode, ListItem, Page, SkuSummary, SkuView, SpuView};
use crate::domain::{Cursor, NewProduct, SearchQuery, SkuPatch, Sort, SortKey};

/// A write that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The category does not exist or is not a leaf (level 3).
    #[error("category {0} does not exist or is not a level-3 category")]
    UnknownCategory(i64),
    /// The brand does not exist.
    #[error("brand {0} does not exist")]
    UnknownBrand(i64),
    /// The SKU does not exist.
    #[error("no such SKU")]
    NotFound,
    /// A database failure.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A SKU's current price, for the order service.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Price {
    /// SKU id.
    pub sku_id: i64,
    /// Price in cents.
    pub price_cents: i64,
    /// `on_sale` or `delisted`.
    pub status: String,
}

pub(super) async fn sku(db: &Db, id: i64) -> Result<Option<SkuView>, sqlx::Error> {
    sqlx::query_as::<_, SkuView>(
        "SELECT k.id AS sku_id, k.spu_id, k.title, s.title AS spu_title, k.sale_attributes, k.price_cents,
                k.status, s.category_id, s.brand_id, s.images[1] AS image
           FROM skus k JOIN spus s ON s.id = k.spu_id
          WHERE k.id = $1 AND k.status = 'on_sale'",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await
}

pub(super) async fn spu(db: &Db, id: i64) -> Result<Option<SpuView>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT s.id, s.title, s.description, s.category_id, s.brand_id, b.name AS brand_name,
                s.attributes, s.images, s.price_cents
           FROM spus s JOIN brands b ON b.id = s.brand_id
          WHERE s.id = $1 AND s.price_cents IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let skus = sqlx::query_as::<_, SkuSummary>(
        "SELECT id AS sku_id, title, sale_attributes, price_cents FROM skus
          WHERE spu_id = $1 AND status = 'on_sale' ORDER BY id",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    Ok(Some(SpuView {
        spu_id: row.get("id"),
        title: row.get("title"),
        description: row.get("description"),
        category_id: row.get("category_id"),
        brand_id: row.get("brand_id"),
        brand_name: row.get("brand_name"),
        attributes: row.get("attributes"),
        images: row.get("images"),
        price_cents: row.get("price_cents"),
        skus,
    }))
}

pub(super) async fn categories(db: &Db) -> Result<Vec<CategoryNode>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, parent_id, name, level FROM categories ORDER BY level, name, id")
        .fetch_all(db.pool())
        .await?;
    let flat: Vec<(i64, Option<i64>, String, i16)> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("parent_id"), r.get("name"), r.get("level")))
        .collect();
    fn children(flat: &[(i64, Option<i64>, String, i16)], parent: Option<i64>) -> Vec<CategoryNode> {
        flat.iter()
            .filter(|(_, p, _, _)| *p == parent)
            .map(|(id, _, name, level)| CategoryNode {
                id: *id,
                name: name.clone(),
                level: *level,
                children: children(flat, Some(*id)),
            })
            .collect()
    }
    Ok(children(&flat, None))
}

pub(super) async fn prices(db: &Db, ids: &[i64]) -> Result<Vec<Price>, sqlx::Error> {
    sqlx::query_as::<_, Price>(
        "SELECT id AS sku_id, price_cents, status FROM skus WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(db.pool())
    .await
}

pub(super) async fn all_ids(db: &Db, table: &'static str) -> Result<Vec<i64>, sqlx::Error> {
    let sql = match table {
        "skus" => "SELECT id FROM skus",
        _ => "SELECT id FROM spus",
    };
    sqlx::query_scalar(sql).fetch_all(db.pool()).await
}

/// The listing: full-text search, filters, keyset pagination. Uncached: every query is a
/// different page, and the indexes answer it.
pub(super) async fn search(db: &Db, q: &SearchQuery) -> Result<Page, sqlx::Error> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT s.id, s.title, s.category_id, s.brand_id, s.price_cents, s.images[1] AS image, \
         (extract(epoch FROM s.created_at) * 1000000)::bigint AS created_us, ",
    );
    match &q.q {
        Some(text) => {
            qb.push("ts_rank(s.search, websearch_to_tsquery('english', ");
            qb.push_bind(text.clone());
            qb.push("))::float8 AS rank");
        }
        None => {
            qb.push("0::float8 AS rank");
        }
    }
    qb.push(" FROM spus s WHERE s.price_cents IS NOT NULL");
    if let Some(text) = &q.q {
        qb.push(" AND s.search @@ websearch_to_tsquery('english', ");
        qb.push_bind(text.clone());
        qb.push(")");
    }
    if let Some(cat) = q.category_id {
        // The tree has three levels: the category, its children, its grandchildren.
        qb.push(" AND s.category_id IN (SELECT c.id FROM categories c LEFT JOIN categories p ON p.id = c.parent_id WHERE c.id = ");
        qb.push_bind(cat);
        qb.push(" OR c.parent_id = ");
        qb.push_bind(cat);
        qb.push(" OR p.parent_id = ");
        qb.push_bind(cat);
        qb.push(")");
    }
    if let Some(brand) = q.brand_id {
        qb.push(" AND s.brand_id = ");
        qb.push_bind(brand);
    }
    if let Some(lo) = q.min_price_cents {
        qb.push(" AND s.price_cents >= ");
        qb.push_bind(lo);
    }
    if let Some(hi) = q.max_price_cents {
        qb.push(" AND s.price_cents <= ");
        qb.push_bind(hi);
    }
    // Keyset: strictly after the cursor's row, in the sort's own order.
    if let Some(c) = &q.after {
        push_after(&mut qb, q, c);
    }
    qb.push(match q.sort {
        Sort::PriceAsc => " ORDER BY s.price_cents, s.id",
        Sort::PriceDesc => " ORDER BY s.price_cents DESC, s.id DESC",
        Sort::Newest => " ORDER BY created_us DESC, s.id DESC",
        Sort::Relevance => " ORDER BY rank DESC, s.id",
    });
    qb.push(" LIMIT ").push_bind(q.limit + 1);
    let rows = qb.build().fetch_all(db.pool()).await?;

    Ok(page_of(&rows, q))
}

/// The keyset condition: rows strictly after the cursor's, in the sort's own order.
fn push_after(qb: &mut QueryBuilder<Postgres>, q: &SearchQuery, c: &Cursor) {
    match (q.sort, &c.key) {
        (Sort::PriceAsc, SortKey::Int(p)) => {
            qb.push(" AND (s.price_cents, s.id) > (")
                .push_bind(*p)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        (Sort::PriceDesc, SortKey::Int(p)) => {
            qb.push(" AND (s.price_cents, s.id) < (")
                .push_bind(*p)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        (Sort::Newest, SortKey::Time(t) | SortKey::Int(t)) => {
            qb.push(" AND ((extract(epoch FROM s.created_at) * 1000000)::bigint, s.id) < (")
                .push_bind(*t)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        (Sort::Relevance, key) => {
            let rank = match key {
                SortKey::Float(r) => *r,
                SortKey::Int(i) => *i as f64,
                SortKey::Time(_) => 0.0,
            };
            qb.push(" AND (ts_rank(s.search, websearch_to_tsquery('english', ")
                .push_bind(q.q.clone().unwrap_or_default())
                .push("))::float8, -s.id) < (")
                .push_bind(rank)
                .push(", ")
                .push_bind(-c.id)
                .push(")");
        }
        _ => {}
    }
}

/// One page of `rows` (fetched one past the limit) and the cursor of the next, if any.
fn page_of(rows: &[sqlx::postgres::PgRow], q: &SearchQuery) -> Page {
    let more = rows.len() as i64 > q.limit;
    let rows = &rows[..rows.len().min(q.limit as usize)];
    let next_cursor = more.then(|| {
        let last = rows.last().expect("a full page has a last row");
        let key = match q.sort {
            Sort::PriceAsc | Sort::PriceDesc => SortKey::Int(last.get("price_cents")),
            Sort::Newest => SortKey::Time(last.get("created_us")),
            Sort::Relevance => SortKey::Float(last.get("rank")),
        };
        Cursor {
            sort: q.sort,
            key,
            id: last.get("id"),
        }
        .encode()
    });
    let items = rows
        .iter()
        .map(|r| ListItem {
            spu_id: r.get("id"),
            title: r.get("title"),
            category_id: r.get("category_id"),
            brand_id: r.get("brand_id"),
            price_cents: r.get("price_cents"),
            image: r.get("image"),
        })
        .collect();
    Page { items, next_cursor }
}

async fn refresh_spu_price(conn: &mut PgConnection, spu_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE spus SET price_cents =
            (SELECT min(price_cents) FROM skus WHERE spu_id = $1 AND status = 'on_sale')
          WHERE id = $1",
    )
    .bind(spu_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates an SPU with its SKUs; returns the SPU id and the SKU ids.
pub(super) async fn create(db: &Db, p: &NewProduct) -> Result<(i64, Vec<i64>), WriteError> {
    let mut tx = db.pool().begin().await?;
    let leaf: Option<i16> = sqlx::query_scalar("SELECT level FROM categories WHERE id = $1")
        .bind(p.category_id)
        .fetch_optional(&mut *tx)
        .await?;
    if leaf != Some(3) {
        return Err(WriteError::UnknownCategory(p.category_id));
    }
    let brand: Option<i64> = sqlx::query_scalar("SELECT id FROM brands WHERE id = $1")
        .bind(p.brand_id)
        .fetch_optional(&mut *tx)
        .await?;
    if brand.is_none() {
        return Err(WriteError::UnknownBrand(p.brand_id));
    }
    let spu_id: i64 = sqlx::query_scalar(
        "INSERT INTO spus (title, description, category_id, brand_id, attributes, images)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(p.title.trim())
    .bind(&p.description)
    .bind(p.category_id)
    .bind(p.brand_id)
    .bind(sqlx::types::Json(&p.attributes))
    .bind(&p.images)
    .fetch_one(&mut *tx)
    .await?;
    let mut sku_ids = Vec::with_capacity(p.skus.len());
    for sku in &p.skus {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO skus (spu_id, title, sale_attributes, price_cents) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(spu_id)
        .bind(sku.title.trim())
        .bind(sqlx::types::Json(&sku.sale_attributes))
        .bind(sku.price_cents)
        .fetch_one(&mut *tx)
        .await?;
        sku_ids.push(id);
    }
    refresh_spu_price(&mut tx, spu_id).await?;
    tx.commit().await?;
    Ok((spu_id, sku_ids))
}

/// Applies a patch; returns the SKU's SPU id.
pub(super) async fn patch(db: &Db, sku_id: i64, p: &SkuPatch) -> Result<i64, WriteError> {
    let mut tx = db.pool().begin().await?;
    let spu_id: Option<i64> = sqlx::query_scalar(
        "UPDATE skus SET price_cents = COALESCE($2, price_cents), title = COALESCE($3, title),
                status = COALESCE($4, status), updated_at = now()
          WHERE id = $1 RETURNING spu_id",
    )
    .bind(sku_id)
    .bind(p.price_cents)
    .bind(p.title.as_deref().map(str::trim))
    .bind(p.status.map(|s| s.as_str()))
    .fetch_optional(&mut *tx)
    .await?;
    let spu_id = spu_id.ok_or(WriteError::NotFound)?;
    refresh_spu_price(&mut tx, spu_id).await?;
    tx.commit().await?;
    Ok(spu_id)
}
