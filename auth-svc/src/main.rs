use clap::Parser;

fn main() -> anyhow::Result<()> {
    svc_kit::runtime::run(auth_svc::run(auth_svc::config::Cli::parse()))
}
