//! The `tether` command: argument parsing, logging, then `tether::runtime::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// pingora allocates per request; glibc malloc showed up at ~12 % of tether's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tether", version, about = "Sticky-session L4/L7 reverse proxy")]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "proxy.yaml")]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Start as the successor of a running tether (zero-downtime upgrade).
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,pingora=warn")
    });
    // pingora logs through `log`; route it into tracing. Cap `log` at the most
    // verbose level the filter can let through (warn for pingora by default):
    // otherwise every one of pingora's per-request debug! calls pays for a
    // dispatch into tracing only to be dropped there.
    let cap = match std::env::var("RUST_LOG") {
        Ok(_) => match filter.max_level_hint() {
            Some(l) if l == tracing::level_filters::LevelFilter::TRACE => log::LevelFilter::Trace,
            Some(l) if l == tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
            Some(l) if l == tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
            Some(l) if l == tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
            Some(l) if l == tracing::level_filters::LevelFilter::ERROR => log::LevelFilter::Error,
            Some(_) => log::LevelFilter::Off,
            None => log::LevelFilter::Trace,
        },
        Err(_) => log::LevelFilter::Warn,
    };
    let _ = tracing_log::LogTracer::builder().with_max_level(cap).init();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `tether check` with a Redis store: warn when its eviction policy could take
/// the cookie secret. Redis being unreachable from here is no config error.
fn check_redis(snap: &tether::config::Snapshot) {
    let tether::config::StoreKind::Redis(cfg) = &snap.store.kind else {
        return;
    };
    let looked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(tether::store::redis::eviction_warning(cfg))
                .map_err(|e| e.to_string())
        });
    match looked {
        Ok(Some(w)) => eprintln!("warning: {}: store.redis: {w}", snap.source.display()),
        Ok(None) => {}
        Err(e) => eprintln!(
            "note: could not check redis's maxmemory-policy ({e}); \
             tether needs noeviction or a volatile-* policy"
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match tether::config::load(&cli.config) {
            Ok(snap) => {
                for w in snap.warnings() {
                    eprintln!("warning: {w}");
                }
                check_redis(&snap);
                println!("{}", tether::config::summary(&snap));
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                ExitCode::FAILURE
            }
        },
        None => {
            init_logs(cli.log_format);
            if let LogFormat::Json = cli.log_format {
                tether::runtime::set_log_format("json");
            }
            // Before anything can change the directory: SIGUSR2 re-runs this path.
            tether::upgrade::remember_start();
            let snap = match tether::config::load(&cli.config) {
                Ok(s) => s,
                Err(errs) => {
                    eprintln!("{errs}");
                    return ExitCode::FAILURE;
                }
            };
            match tether::runtime::run(cli.config, snap, cli.upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // RunError already names its cause: {:#} would repeat it.
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
