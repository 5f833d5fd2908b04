//! Order SQL. Every state change is a guarded update (`WHERE status = 'pending_payment'`), so
//! of a payment, a timeout and a buyer's cancel racing for one order exactly one wins; and
//! every change other services must learn of is written to the outbox in the same transaction.

mod checkout;
mod orders;
mod payments;

pub use checkout::*;
pub use orders::*;
pub use payments::*;
