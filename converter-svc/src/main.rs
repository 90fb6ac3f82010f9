use clap::Parser;

fn main() -> anyhow::Result<()> {
    svc_kit::runtime::run(converter_svc::run(converter_svc::config::Cli::parse()))
}
