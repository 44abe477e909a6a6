//! Generates the gRPC code from `proto/` with a pure-Rust protobuf compiler
//! (protox), so building needs no system `protoc`. Also writes the encoded
//! descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../proto";
const PROTOS: &[&str] = &[
    "outrigger/v1/cache.proto",
    "outrigger/v1/admin.proto",
    "outrigger/v1/lock.proto",
    "outrigger/v1/ratelimit.proto",
    "outrigger/v1/presence.proto",
    "outrigger/v1/pubsub.proto",
    "outrigger/v1/counter.proto",
    "outrigger/v1/map.proto",
    "outrigger/v1/queue.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let fds = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("outrigger_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
