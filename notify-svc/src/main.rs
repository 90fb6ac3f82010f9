use clap::Parser;

fn main() -> anyhow::Result<()> {
    svc_kit::runtime::run(notify_svc::run(notify_svc::config::Cli::parse()))
}
