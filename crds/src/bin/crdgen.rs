//! Writes the CRD manifests generated from the Rust types.
//!
//! `cargo run -p connhealth-crds --bin crdgen` writes them into `crds/` and,
//! as Helm templates (switchable with `crds.install`, kept on uninstall),
//! into `charts/connhealth/templates/crds/`. Extra directory arguments
//! receive the plain manifests too.

use std::path::{Path, PathBuf};

/// Where the chart's CRD templates live, relative to the repository root.
const CHART_CRD_TEMPLATES: &str = "charts/connhealth/templates/crds";

fn write_all(dir: &Path, files: Vec<(String, String)>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = vec![crate_dir.clone()];
    dirs.extend(std::env::args_os().skip(1).map(PathBuf::from));
    for dir in &dirs {
        write_all(dir, connhealth_crds::generated_manifests())?;
    }
    let repo_root = crate_dir.parent().expect("crds/ sits in the repository root");
    write_all(&repo_root.join(CHART_CRD_TEMPLATES), connhealth_crds::chart_crd_templates())
}
