use clap::Parser;

fn main() -> anyhow::Result<()> {
    svc_kit::runtime::run(gateway_svc::run(gateway_svc::config::Config::parse()))
}
