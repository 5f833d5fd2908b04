//! What the handlers share: the catalog, behind its cache.

use axum::extract::FromRef;

use crate::store::Catalog;

/// The application state; handlers take the [`Catalog`] out of it.
#[derive(Clone)]
pub struct AppState {
    /// Reads through the cache, writes that invalidate it.
    pub catalog: Catalog,
}

impl FromRef<AppState> for Catalog {
    fn from_ref(state: &AppState) -> Catalog {
        state.catalog.clone()
    }
}
