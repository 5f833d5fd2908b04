//! Migrations land in the service's own schema, once.

use mall_common::db::Db;
use mall_testkit::TestEnv;
use sqlx::migrate::Migrator;

static NONE: Migrator = Migrator::DEFAULT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_tables_are_created_in_the_services_own_schema_and_rerunning_is_harmless() {
    let env = TestEnv::new().await;
    let settings = env.platform_settings(&crate::DEFAULTS);
    let db = Db::connect_lazy(&settings.database, "platformtest").unwrap();
    db.migrate(&NONE).await.unwrap();
    db.migrate(&NONE).await.unwrap();
    db.check().await.unwrap();

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(db.schema())
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(tables, ["_sqlx_migrations", "inbox", "outbox"]);
    assert!(db.schema().starts_with(env.id()));

    // Unqualified SQL lands in the service's schema (search_path), not in public.
    sqlx::query("INSERT INTO inbox (consumer, event_id) VALUES ('t', gen_random_uuid())")
        .execute(db.pool())
        .await
        .unwrap();
    let in_schema: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".inbox",
        db.schema()
    )))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(in_schema, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_down_until_migrations_ran() {
    let env = TestEnv::new().await;
    let settings = env.platform_settings(&crate::DEFAULTS);
    let db = Db::connect_lazy(&settings.database, "platformtest").unwrap();
    let err = db.check().await.unwrap_err();
    assert!(err.contains("migrations"), "{err}");
    db.migrate(&NONE).await.unwrap();
    db.check().await.unwrap();
}
