//! Compiles `embedstream.proto` with a vendored protoc, so no system protobuf compiler is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded; setting PROTOC here races with nothing.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=embedstream.proto");
    println!("cargo:rerun-if-changed=cluster.proto");
    // The descriptor set serves gRPC server reflection, so generic clients (grpcurl) work.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("embedstream_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&["embedstream.proto", "cluster.proto"], &["."])?;
    Ok(())
}
