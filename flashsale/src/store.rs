//! Flash-sale state: the sessions in Postgres (the record), and in Redis the admission script,
//! the warm-up, the restock of cancelled orders and the admission stream the hand-off reads.

pub mod admission;
pub mod sessions;
