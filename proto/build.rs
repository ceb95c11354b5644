//! Compiles `embedstream.proto` with a vendored protoc, so no system protobuf compiler is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded; setting PROTOC here races with nothing.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=embedstream.proto");
    tonic_prost_build::configure().compile_protos(&["embedstream.proto"], &["."])?;
    Ok(())
}
