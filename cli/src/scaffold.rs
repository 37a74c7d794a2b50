//! `sluice plugin new`: writes a plugin crate (a cdylib with a tested example pipeline, a
//! runnable spec and sample input) from the templates in `cli/templates/plugin/`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/plugin/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/plugin/lib.rs.tmpl"),
    ),
    (
        "pipeline.yaml",
        include_str!("../templates/plugin/pipeline.yaml.tmpl"),
    ),
    (
        "sample.jsonl",
        include_str!("../templates/plugin/sample.jsonl.tmpl"),
    ),
    (".gitignore", "/target\n/Cargo.lock\n"),
];

/// The plugin-api sources this binary was built from, if they are still there.
pub fn default_api_path() -> Option<PathBuf> {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api"))
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
}

/// Creates `dir/name` from the templates; refuses to touch an existing directory.
pub fn create(name: &str, dir: &Path, api_path: &Path) -> anyhow::Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "plugin name `{name}`: use lowercase letters, digits and dashes, starting with a letter (e.g. `ride-enricher`)"
        );
    }
    let api_path = std::fs::canonicalize(api_path)
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .with_context(|| {
            format!(
                "--api-path {}: no sluice-plugin-api crate there",
                api_path.display()
            )
        })?;
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{}: already exists: choose another name or --dir",
            root.display()
        );
    }
    let api = api_path.to_string_lossy().replace('\\', "/");
    for (file, template) in TEMPLATES {
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate_ident}}", &name.replace('-', "_"))
            .replace("{{api_path}}", &api);
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("template paths have a parent"))
            .with_context(|| format!("{}: cannot create directory", root.display()))?;
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_and_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let api = default_api_path().unwrap();
        for bad in ["Demo", "1x", "a_b", "x-", ""] {
            let err = create(bad, dir.path(), &api).unwrap_err().to_string();
            assert!(err.contains("use lowercase letters"), "{bad}: {err}");
        }
        let root = create("demo-plugin", dir.path(), &api).unwrap();
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(!lib.contains("{{"), "unreplaced placeholder in lib.rs");
        let spec = std::fs::read_to_string(root.join("pipeline.yaml")).unwrap();
        assert!(spec.contains("path: ${SLUICE_PLUGIN_DIR:-target/debug}/libdemo_plugin.so"));
        let err = create("demo-plugin", dir.path(), &api)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}
