//! The product service, asked whether a SKU exists before stock is first received for it.
//!
//! Asked, not learned from events: intake is a rare admin call, the answer must be current
//! (a SKU created a second ago is receivable at once), and the demo seed writes SKUs without
//! publishing events. Once a SKU has a stock row it is known and not asked about again.

use std::time::Duration;

use mall_common::peer::{Peer, Unreachable, client};
use serde::Deserialize;
use serde_json::json;
use url::Url;

/// A client of product's `POST /internal/prices`.
pub struct Product {
    product: Peer,
}

impl Product {
    /// Product's instances at `urls`, each call bounded by `timeout`.
    pub fn new(urls: Vec<Url>, timeout: Duration) -> Self {
        Self {
            product: Peer::new("product", client(timeout), urls),
        }
    }

    /// Whether the catalog has `sku_id` (listed or delisted).
    pub async fn knows(&self, sku_id: i64) -> Result<bool, Unreachable> {
        #[derive(Deserialize)]
        struct Price {
            sku_id: i64,
        }
        #[derive(Deserialize)]
        struct Answer {
            prices: Vec<Price>,
        }
        let (status, body) = self
            .product
            .post("/internal/prices", &json!({ "sku_ids": [sku_id] }))
            .await?;
        if status != 200 {
            return Err(Unreachable::unexpected("product", status, &body));
        }
        let answer: Answer = self.product.parse(status, body)?;
        Ok(answer.prices.iter().any(|p| p.sku_id == sku_id))
    }
}
