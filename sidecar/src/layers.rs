//! The crate's layers, bottom up, and the test that keeps imports pointing
//! down: a module uses modules of its own layer or below, never above, and
//! no modules import each other round a cycle.

/// Every top-level module, by layer, bottom up.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation: errors, durations, logs and metrics, input checks, auth, connection serving",
        &[
            "error",
            "duration",
            "telemetry",
            "validate",
            "auth",
            "serve",
        ],
    ),
    (
        "the storage seam: the Redis connection, the memory sweep, the failover circuit",
        &["backend"],
    ),
    (
        "the plugin host, and what every primitive shares (the adapters' kit)",
        &["plugins", "kit"],
    ),
    (
        "the primitives, one folder each (store, backends, failover, APIs, config)",
        &["primitives"],
    ),
    (
        "composition: the configuration and the shared state",
        &["config", "app"],
    ),
    ("the APIs and the process", &["api", "lib"]),
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use super::LAYERS;

    fn layer(module: &str) -> Option<usize> {
        LAYERS
            .iter()
            .position(|(_, modules)| modules.contains(&module))
    }

    /// The top-level module a source file belongs to (`None`: the binary,
    /// `main.rs` and its operator commands in `cli/`, which use the library
    /// from outside).
    fn module_of(src: &Path, file: &Path) -> Option<String> {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!["main", "cli", "layers"].contains(&name)).then(|| name.to_string())
    }

    /// The modules `text` names as `crate::<module>`, outside comments.
    fn imports(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue; // `outrigger_crate::`, `$crate::`
                }
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && let Some(module) = module_of(&src, &path)
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let uses = graph.entry(module.clone()).or_default();
                    uses.extend(imports(&text).into_iter().filter(|m| *m != module));
                }
            }
        }
        graph
    }

    #[test]
    fn imports_point_down_the_layers_without_cycles() {
        let graph = graph();
        assert!(graph.len() >= 10, "found only {graph:?}");
        let mut wrong = Vec::new();
        for (module, uses) in &graph {
            let Some(own) = layer(module) else {
                wrong.push(format!("`{module}` has no layer: add it to LAYERS"));
                continue;
            };
            for used in uses {
                match layer(used) {
                    None => wrong.push(format!("`{used}` (used by `{module}`) has no layer")),
                    Some(l) if l > own => wrong.push(format!(
                        "`{module}` ({}) imports `{used}` ({}), a layer above it",
                        LAYERS[own].0, LAYERS[l].0
                    )),
                    Some(_) => {}
                }
            }
        }
        // Within a layer too: no module reaches itself again.
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            graph.get(from).into_iter().flatten().any(|next| {
                next == to || (seen.insert(next.clone()) && reaches(graph, next, to, seen))
            })
        }
        for module in graph.keys() {
            if reaches(&graph, module, module, &mut BTreeSet::new()) {
                wrong.push(format!("`{module}` imports itself round a cycle"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The primitives `text` names as `crate::primitives::<name>`.
    fn primitive_imports(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::primitives::") {
                let name: String = code[at + "crate::primitives::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    /// Each primitive's folder stands alone: it may use the layers below,
    /// never another primitive (what they share belongs in `kit` or
    /// `backend`), so a primitive can be read, changed or removed as one.
    #[test]
    fn primitives_do_not_import_each_other() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/primitives");
        let mut wrong = Vec::new();
        let mut folders = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let folder = entry.unwrap().path();
            if !folder.is_dir() {
                continue;
            }
            folders += 1;
            let own = folder.file_name().unwrap().to_str().unwrap().to_string();
            for file in std::fs::read_dir(&folder).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&file).unwrap();
                for other in primitive_imports(&text) {
                    if other != own {
                        wrong.push(format!(
                            "{} imports the primitive `{other}`",
                            file.strip_prefix(&root).unwrap().display()
                        ));
                    }
                }
            }
        }
        assert!(folders >= 5, "found {folders} primitive folders");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_primitive_scan_sees_paths_not_comments() {
        let text = "use crate::primitives::cache::Cache;\n// crate::primitives::lock\n\
                    let x = crate::primitives::pubsub::PubSub::new;";
        let found: Vec<_> = primitive_imports(text).into_iter().collect();
        assert_eq!(found, ["cache", "pubsub"]);
    }

    #[test]
    fn the_import_scan_sees_paths_not_comments() {
        let text = "use crate::config::Config;\n// crate::app is mentioned\n\
                    let x = crate::error::Error::Internal; $crate::thing; outrigger_crate::no";
        let found: Vec<_> = imports(text).into_iter().collect();
        assert_eq!(found, ["config", "error"]);
    }
}
