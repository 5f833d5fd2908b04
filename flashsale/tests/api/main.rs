//! Black-box tests of mall-flashsale against real dependencies (one test binary; a file per feature).

mod admission;
mod cluster;
mod degrade;
mod failover;
mod helpers;
mod platform;
mod recovery;
mod sale;
