//! Data ensured at start: the admin account, and the demo catalogue in an
//! empty database. Safe when several instances start together. Also
//! `shop admin create`, the operator's way to an admin account.

use anyhow::Context;

use crate::auth::PasswordHasher;
use crate::config::{AdminAction, AdminArgs};
use crate::domain::user::{Email, Password, Role};
use crate::startup;
use crate::storage::{Db, Tx, sessions, users};

/// The demo's admin password, published in the README: used only to create
/// a missing admin when the demo runs without `ADMIN_PASSWORD`.
pub const DEMO_ADMIN_PASSWORD: &str = "admin-password";

/// How the admin account comes to be at start.
pub enum AdminSetup<'a> {
    /// `email` logs in as admin with this password, whatever it had.
    Password(&'a str),
    /// The demo: a missing admin is created with the published password;
    /// an existing account is left as it is.
    DemoIfMissing,
}

/// Makes sure `email` is an admin as `setup` says.
pub async fn ensure_admin(
    db: &Db,
    passwords: &PasswordHasher,
    email: &str,
    setup: AdminSetup<'_>,
) -> anyhow::Result<()> {
    let email = Email::parse(email).context("ADMIN_EMAIL")?;
    let (password, reset) = match setup {
        AdminSetup::Password(password) => (password, true),
        AdminSetup::DemoIfMissing => (DEMO_ADMIN_PASSWORD, false),
    };
    let password = Password::parse(password.to_owned()).context("ADMIN_PASSWORD")?;
    let found = users::find_by_email(&mut *db.read().await?, email.as_str()).await?;
    match found {
        Some(_) if !reset => {}
        Some(user) => {
            let current =
                user.role() == Role::Admin && passwords.verify(password.expose(), Some(&user.password_hash)).await?;
            if !current {
                let hash = passwords.hash(password.expose()).await?;
                let mut tx = Tx::begin(db).await?;
                users::promote_to_admin(&mut tx, user.id, &hash).await?;
                // A new password ends the account's logins: whoever knew
                // the old one keeps no refresh token.
                sessions::revoke_all(&mut tx, user.id).await?;
                tx.commit().await?;
            }
        }
        None => {
            let hash = passwords.hash(password.expose()).await?;
            let mut tx = Tx::begin(db).await?;
            match users::insert(&mut tx, email.as_str(), "Admin", &hash, Role::Admin).await {
                // A sibling instance created it first.
                Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_email_key") => {}
                other => {
                    other?;
                    tx.commit().await?;
                }
            }
        }
    }
    Ok(())
}

/// `shop admin create --email E`: the password comes from standard input.
pub async fn create_admin(args: AdminArgs) -> anyhow::Result<()> {
    let AdminAction::Create { email } = args.action;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    Password::parse(password.to_owned()).context("the password")?;
    let db = startup::connect_database(&args.database).await?;
    let passwords = PasswordHasher::new(args.password_cost)?;
    ensure_admin(&db, &passwords, &email, AdminSetup::Password(password)).await?;
    println!("{email} is an admin");
    Ok(())
}

const DEMO_PRODUCTS: [(&str, i64, i64, &str); 5] = [
    ("아메리카노", 3_000, 100, "음료"),
    ("카페라떼", 4_000, 80, "음료"),
    ("치킨샌드위치", 8_000, 50, "식품"),
    ("에스프레소", 2_000, 120, "음료"),
    ("티셔츠", 15_000, 30, "의류"),
];

/// (code, kind, value, minimum order, quantity); all valid 30 days, open now.
const DEMO_COUPON_TYPES: [(&str, &str, i64, i64, i64); 4] = [
    ("DISCOUNT_10PERCENT", "PERCENT", 10, 10_000, 100),
    ("DISCOUNT_20PERCENT", "PERCENT", 20, 20_000, 50),
    ("FIXED_1000", "FIXED", 1_000, 5_000, 200),
    ("FIXED_2000", "FIXED", 2_000, 10_000, 100),
];

/// Seeds the demo catalogue if there are neither products nor coupon types.
/// Returns whether it did.
pub async fn seed_demo_data(db: &Db) -> anyhow::Result<bool> {
    let mut tx = Tx::begin(db).await?;
    // Instances starting together seed once: the second waits, then sees data.
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('shop:seed-demo-data'))").execute(&mut *tx).await?;
    let empty = sqlx::query_scalar!(
        r#"SELECT NOT EXISTS (SELECT 1 FROM products) AND NOT EXISTS (SELECT 1 FROM coupon_types) AS "empty!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if !empty {
        return Ok(false);
    }
    for (name, price, stock, category) in DEMO_PRODUCTS {
        sqlx::query!(
            "INSERT INTO products (name, price, stock, stock_total, category) VALUES ($1, $2, $3, $3, $4)",
            name,
            price,
            stock,
            category,
        )
        .execute(&mut *tx)
        .await?;
    }
    for (code, kind, value, min_order_amount, total_quantity) in DEMO_COUPON_TYPES {
        sqlx::query!(
            "INSERT INTO coupon_types (code, kind, value, min_order_amount, total_quantity, valid_days)
             VALUES ($1, $2, $3, $4, $5, 30)",
            code,
            kind,
            value,
            min_order_amount,
            total_quantity,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}
