//! Black-box tests of mall-order with real product and inventory instances beside it, against
//! real Postgres, Redis and RabbitMQ (one test binary; a file per feature). Redeliveries of
//! order events to inventory are tested in inventory's own tests.

mod checkout;
mod helpers;
mod lifecycle;
mod platform;
