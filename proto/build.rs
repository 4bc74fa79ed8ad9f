//! Compiles `proto/*.proto` with protox (no protoc needed) into tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "common.proto",
        "coordinator.proto",
        "vendor.proto",
        "nas.proto",
        "raft.proto",
        "admin.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Portion bytes: split, forwarded and re-framed without copying.
        .bytes(".offsite.common.DataFrame.data")
        .bytes(".offsite.vendor.StoreFrame.data")
        .bytes(".offsite.nas.PutFrame.data")
        .bytes(".offsite.nas.GetFrame.data")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
