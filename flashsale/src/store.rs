//! Flash-sale state: in Postgres the sessions and the book of admissions (the record), in Redis
//! the live counters the admission script decides on, loaded from that book.

pub mod admission;
pub mod book;
pub mod replica;
pub mod sessions;
