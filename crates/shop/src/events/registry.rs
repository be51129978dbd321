//! `shop sinks`: the deployment's sinks as operators see and change them.

use std::io::Write;

use crate::config::{SinksAction, SinksArgs};
use crate::startup::connect_database;
use crate::storage::outbox;

pub async fn manage_sinks(args: SinksArgs) -> anyhow::Result<()> {
    let db = connect_database(&args.database).await?;
    let mut conn = db.acquire().await?;
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
