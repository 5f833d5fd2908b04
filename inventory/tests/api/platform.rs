//! The platform contract every mall process keeps (health, readiness, metrics, JSON errors,
//! trace continuation, graceful shutdown, start-up validation).

mall_testkit::platform_conformance! {
    krate: mall_inventory, binary: "mall-inventory", dependencies: [postgres, rabbitmq]
}
