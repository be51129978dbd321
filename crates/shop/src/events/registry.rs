//! `shop sinks`: the deployment's sinks as operators see and change them.

use std::io::Write;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use crate::config::{SinksAction, SinksArgs};
use crate::startup;
use crate::storage::outbox;

pub async fn manage_sinks(args: SinksArgs) -> anyhow::Result<()> {
    // Not `startup::connect_database`: a mistyped URL must fail here, not
    // create and migrate a database of that name.
    let mut conn = PgConnection::connect(&args.database.database_url)
        .await
        .with_context(|| format!("cannot reach {}", startup::redacted(&args.database.database_url)))?;
    let mut out = std::io::stdout().lock();
    match args.action.unwrap_or(SinksAction::List) {
        SinksAction::List => {
            writeln!(out, "{:<12} {:<32} lacking", "sink", "registered")?;
            for sink in outbox::registered_sinks(&mut conn).await? {
                writeln!(out, "{:<12} {:<32} {}", sink.name, sink.registered_at.to_rfc3339(), sink.lacking)?;
            }
        }
        SinksAction::Retire { name } => {
            if outbox::retire_sink(&mut conn, &name).await? {
                writeln!(out, "retired {name}")?;
            } else {
                anyhow::bail!("no sink named {name} is registered");
            }
        }
    }
    Ok(())
}
