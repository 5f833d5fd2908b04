//! The route table: path prefix -> upstream pool and who may call it (DESIGN.md, "Gateway");
//! the axum router made of it is in `http`.
//!
//! `/internal/...` is never routed. Anything not listed is a JSON 404 from the gateway itself;
//! `/openapi.json` and `/docs` are the gateway's own ([`crate::openapi`]).

/// An upstream pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolName {
    /// mall-product.
    Product,
    /// mall-inventory.
    Inventory,
    /// mall-order.
    Order,
    /// mall-flashsale.
    Flashsale,
}

impl PoolName {
    /// Every pool.
    pub const ALL: [PoolName; 4] = [Self::Product, Self::Inventory, Self::Order, Self::Flashsale];

    /// The pool's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::Inventory => "inventory",
            Self::Order => "order",
            Self::Flashsale => "flashsale",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a token, if sent, must still be valid and its identity is passed on.
    Public,
    /// A valid token (401 `unauthorized` otherwise).
    User,
    /// A valid token with the `admin` role (403 `forbidden` otherwise).
    Admin,
}

/// One route: a path prefix (matched on whole segments) or an exact pattern.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path, in axum syntax; prefixes also match everything below them.
    pub path: &'static str,
    /// Whether `path` is a prefix.
    pub prefix: bool,
    /// The pool that serves it.
    pub pool: PoolName,
    /// Who may call it.
    pub access: Access,
}

const fn prefix(path: &'static str, pool: PoolName, access: Access) -> Route {
    Route {
        path,
        prefix: true,
        pool,
        access,
    }
}

/// The table. More specific entries sit next to the prefix they refine; axum picks the most
/// specific match, so order does not matter.
pub const ROUTES: &[Route] = &[
    prefix("/api/products", PoolName::Product, Access::Public),
    prefix("/api/skus", PoolName::Product, Access::Public),
    prefix("/api/categories", PoolName::Product, Access::Public),
    prefix("/api/search", PoolName::Product, Access::Public),
    prefix("/api/stock", PoolName::Inventory, Access::Public),
    prefix("/api/cart", PoolName::Order, Access::User),
    prefix("/api/orders", PoolName::Order, Access::User),
    // The payment provider is not a user; the order service checks the callback's HMAC.
    prefix("/api/payments", PoolName::Order, Access::Public),
    prefix("/api/flashsale", PoolName::Flashsale, Access::Public),
    prefix("/api/flashsale/purchase", PoolName::Flashsale, Access::User),
    Route {
        path: "/api/flashsale/sessions/{session_id}/items/{sku_id}/token",
        prefix: false,
        pool: PoolName::Flashsale,
        access: Access::User,
    },
    prefix("/admin/products", PoolName::Product, Access::Admin),
    prefix("/admin/skus", PoolName::Product, Access::Admin),
    prefix("/admin/categories", PoolName::Product, Access::Admin),
    prefix("/admin/stock", PoolName::Inventory, Access::Admin),
    prefix("/admin/orders", PoolName::Order, Access::Admin),
    prefix("/admin/flashsale", PoolName::Flashsale, Access::Admin),
];
