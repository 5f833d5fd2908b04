//! Catalog types and rules: no HTTP, SQL or Redis here.

mod cursor;
pub mod product;

pub use cursor::{Cursor, CursorError, SortKey};
pub use product::{NewProduct, NewSku, SearchQuery, SkuPatch, SkuStatus, Sort, ValidationError};
