//! Compiles the contracts in `<workspace>/proto` with protox (pure Rust, so no
//! machine needs `protoc`) and hands the descriptors to tonic-prost-build. The
//! encoded descriptor set is also written out for gRPC server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "mp3converter/auth/v1/auth_service.proto",
    "mp3converter/media/v1/media_service.proto",
    "mp3converter/events/v1/events.proto",
    "mp3converter/upload/v1/follow_service.proto",
    "mp3converter/webhooks/v1/webhook_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(FILES, [&proto_root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("mp3converter_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunks become `bytes::Bytes`: moved between GridFS, channels and the
        // wire without copying.
        .bytes(".mp3converter.media.v1")
        .bytes(".mp3converter.upload.v1")
        .compile_fds(fds)?;
    Ok(())
}
