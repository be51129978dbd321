use std::process::ExitCode;

use clap::Parser;
use shop::config::{Cli, Command, LogFormat};
use shop::startup::{self, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, filter) = match &cli.command {
        Some(Command::Serve(config)) => (config.log_format, config.log_filter.as_str()),
        _ => (cli.serve.log_format, cli.serve.log_filter.as_str()),
    };
    init_tracing(format, filter);
    // Tests that run the binary configure its fail points through the
    // FAILPOINTS environment variable (`name=action;…`).
    #[cfg(feature = "failpoints")]
    let _fail_points = fail::FailScenario::setup();
    let outcome = match cli.command {
        Some(Command::Migrate(database)) => startup::connect_database(&database).await.map(|_| {
            tracing::info!("migrations are up to date");
        }),
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::WebhookListen(args)) => shop::webhook_listen(args.port, args.secret.as_deref()).await,
        None => serve(cli.serve).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: shop::config::Config) -> anyhow::Result<()> {
    Server::build(&config).await?.run(shutdown_signal()).await
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Ctrl-C or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
