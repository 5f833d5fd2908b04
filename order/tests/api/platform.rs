//! The platform contract every mall process keeps (health, readiness, metrics, JSON errors,
//! trace continuation, graceful shutdown, start-up validation).

mall_testkit::platform_conformance! {
    service: mall_order::Order, binary: "mall-order", dependencies: [postgres, redis, rabbitmq]
}

#[test]
fn the_binary_allocates_with_mimalloc() {
    mall_testkit::checks::allocates_with_mimalloc(env!("CARGO_BIN_EXE_mall-order"));
}
