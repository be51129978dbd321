use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, User, assert_problem, spawn_app};

async fn create(app: &TestApp, admin: &User, name: &str, price: i64, stock: i64, category: &str) -> Value {
    let response = app
        .post(
            "/api/admin/products",
            Some(&admin.token),
            json!({"name": name, "price": price, "stock": stock, "category": category}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_admin_creates_and_patches_products() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let created = create(&app, &admin, "  아메리카노 ", 3000, 100, "음료").await;
    assert_eq!(created["name"], "아메리카노");
    let id = created["id"].as_i64().unwrap();
    let path = format!("/api/admin/products/{id}");
    let patched =
        app.request(reqwest::Method::PATCH, &path, Some(&admin.token), Some(json!({"price": 3500, "stock": 90}))).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        (patched["price"].as_i64(), patched["stock"].as_i64(), patched["name"].as_str()),
        (Some(3500), Some(90), Some("아메리카노"))
    );
    let read: Value = app.get(&format!("/api/products/{id}"), None).await.json().await.unwrap();
    assert_eq!(read, patched);
    let (stock, total): (i64, i64) = sqlx::query_as("SELECT stock, stock_total FROM products WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((stock, total), (90, 90), "an admin change moves the accounted total too");
}

#[tokio::test]
async fn bad_product_input_is_400_and_unknown_is_404() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for (body, field) in [
        (json!({"name": "", "price": 1, "stock": 1, "category": "c"}), "name"),
        (json!({"name": "n", "price": 0, "stock": 1, "category": "c"}), "price"),
        (json!({"name": "n", "price": 1, "stock": -1, "category": "c"}), "stock"),
        (json!({"name": "n", "price": 1, "stock": 1, "category": ""}), "category"),
        (json!({"name": "n", "price": 1.5, "stock": 1, "category": "c"}), "price"),
    ] {
        let problem = assert_problem(
            app.post("/api/admin/products", Some(&admin.token), body).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().starts_with(field), "{problem}");
    }
    let patch =
        |path: &'static str, body: Value| app.request(reqwest::Method::PATCH, path, Some(&admin.token), Some(body));
    assert_problem(patch("/api/admin/products/1", json!({})).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_problem(patch("/api/admin/products/999", json!({"price": 5})).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    assert_problem(app.get("/api/products/999", None).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(app.get("/api/products/0", None).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_problem(app.get("/api/products/abc", None).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn the_list_pages_by_cursor_and_filters_by_category() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for i in 0..5 {
        create(&app, &admin, &format!("drink {i}"), 1000, 10, "음료").await;
        create(&app, &admin, &format!("food {i}"), 2000, 10, "식품").await;
    }
    let first: Value = app.get("/api/products?limit=3", None).await.json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let mut seen: Vec<i64> = first["items"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    let mut cursor = first["nextCursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let page: Value = app.get(&format!("/api/products?limit=3&cursor={next}"), None).await.json().await.unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()));
        cursor = page["nextCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ascending ids, no repeats: {seen:?}");

    let drinks: Value = app.get("/api/products?category=%EC%9D%8C%EB%A3%8C", None).await.json().await.unwrap();
    let drinks = drinks["items"].as_array().unwrap();
    assert_eq!(drinks.len(), 5);
    assert!(drinks.iter().all(|p| p["category"] == "음료"));
    assert_problem(app.get("/api/products?limit=0", None).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
}

#[tokio::test]
async fn empty_query_parameters_count_as_absent() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    create(&app, &admin, "americano", 3000, 100, "음료").await;
    // The documented form: `?category=&limit=50&cursor=`.
    let response = app.get("/api/products?category=&limit=&cursor=", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // Every query parameter, on every endpoint: read by one extractor.
    assert_eq!(app.get("/api/products/top-sellers?days=&limit=", None).await.status(), StatusCode::OK);
    assert_eq!(app.get("/api/admin/outbox?status=&limit=", Some(&admin.token)).await.status(), StatusCode::OK);
}

/// Identical reads share queries, but never one sent before they arrived:
/// with the product read without pause by others, each buyer's next read
/// still shows the stock after their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_reads_show_every_write_that_finished_before_them() {
    let app = spawn_app().await;
    let product = app.create_product("hot", 1000, 1000).await;
    let buyer = app.new_user().await;
    let path = format!("/api/products/{product}");
    let list = "/api/products?limit=100";
    let done = std::sync::atomic::AtomicBool::new(false);
    let readers = futures::future::join_all((0..16).map(|_| async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(app.get(&path, None).await.status(), StatusCode::OK);
            assert_eq!(app.get(list, None).await.status(), StatusCode::OK);
            reads += 2;
        }
        reads
    }));
    let buyer_reads = async {
        for placed in 1..=100 {
            app.order_id(&buyer, &[(product, 1)], None).await;
            let read: Value = app.get(&path, None).await.json().await.unwrap();
            assert_eq!(read["stock"], 1000 - placed, "a read after order {placed}");
            let listed: Value = app.get(list, None).await.json().await.unwrap();
            let item = listed["items"].as_array().unwrap().iter().find(|item| item["id"] == product).cloned();
            assert_eq!(item.unwrap()["stock"], 1000 - placed, "a listing after order {placed}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (reads, ()) = tokio::join!(readers, buyer_reads);
    assert!(reads.iter().sum::<usize>() > 0);
    app.assert_invariants().await;
}
