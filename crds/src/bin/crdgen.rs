//! Writes the CRD manifests generated from the Rust types.
//!
//! `cargo run -p connhealth-crds --bin crdgen` writes them into `crds/`;
//! extra directory arguments (for example the Helm chart's `crds/`) receive
//! the same files.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut dirs: Vec<PathBuf> = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    dirs.extend(std::env::args_os().skip(1).map(PathBuf::from));
    for dir in &dirs {
        std::fs::create_dir_all(dir)?;
        for (name, yaml) in connhealth_crds::generated_manifests() {
            let path = dir.join(name);
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
