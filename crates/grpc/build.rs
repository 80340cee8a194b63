//! Compiles the port services' .proto files with protox, a protobuf compiler in
//! Rust: building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "common",
        "catalog",
        "cart",
        "inventory",
        "payments",
        "orders",
        "identity",
    ]
    .map(|name| format!("proto/agora/v1/{name}.proto"));
    let descriptors = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
