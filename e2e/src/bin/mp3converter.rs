//! `mp3converter <auth-svc|gateway-svc|converter-svc|notify-svc> [args…]`:
//! runs that service exactly as its own binary's `main` does. Tests start
//! the mesh as four processes from this one binary (each process has its own
//! tracer provider, `service.name` and metrics registry, as in production).

use clap::Parser;
use std::ffi::OsString;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        anyhow::bail!(
            "usage: mp3converter <auth-svc|gateway-svc|converter-svc|notify-svc> [args…]"
        );
    }
    let service = args[0].to_string_lossy().into_owned();
    // The service name stands in for argv[0].
    args[0] = OsString::from(&service);
    match service.as_str() {
        "auth-svc" => Box::pin(auth_svc::run(auth_svc::config::Cli::parse_from(args))).await,
        "gateway-svc" => {
            Box::pin(gateway_svc::run(gateway_svc::config::Config::parse_from(
                args,
            )))
            .await
        }
        "converter-svc" => {
            Box::pin(converter_svc::run(converter_svc::config::Cli::parse_from(
                args,
            )))
            .await
        }
        "notify-svc" => Box::pin(notify_svc::run(notify_svc::config::Cli::parse_from(args))).await,
        other => anyhow::bail!("unknown service `{other}`"),
    }
}
