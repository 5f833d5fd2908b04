//! Black-box tests of mall-inventory against real Postgres and RabbitMQ (one test binary; a
//! file per feature).

mod carve;
mod events;
mod helpers;
mod platform;
mod reservations;
