use std::process::ExitCode;

use clap::Parser;
use shop::config::{Cli, Command, LogFormat};
use shop::startup::{self, Server};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, filter) = match &cli.command {
        Some(Command::Serve(config)) => (config.log_format, config.log_filter.as_str()),
        _ => (cli.serve.log_format, cli.serve.log_filter.as_str()),
    };
    // A command that prints its answer keeps standard output for it.
    let prints = matches!(cli.command, Some(Command::Sinks(_) | Command::Admin(_)));
    init_tracing(format, filter, prints);
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
        Some(Command::Sinks(args)) => shop::manage_sinks(args).await,
        Some(Command::Admin(args)) => shop::create_admin(args).await,
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

fn init_tracing(format: LogFormat, filter: &str, to_stderr: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = if to_stderr { BoxMakeWriter::new(std::io::stderr) } else { BoxMakeWriter::new(std::io::stdout) };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
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
