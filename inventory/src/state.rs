//! What the handlers share.

use std::sync::Arc;

use axum::extract::FromRef;
use mall_common::db::Db;

use crate::peers::Product;

/// What the handlers share; most need only the database.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) product: Arc<Product>,
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Db {
        state.db.clone()
    }
}
