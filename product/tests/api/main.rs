//! Black-box tests of mall-product against real Postgres and Redis (one test binary; a file
//! per feature). The distributed lock's own guarantees (take-over after a dead holder's lease,
//! no release by a non-owner) are tested in `common/tests/platform/redis.rs`.

mod admin;
mod cache;
mod helpers;
mod platform;
mod search;
