//! The deployment files agree with the code: every `FIRSTKEY_*` variable and configuration value
//! named in the Containerfile, compose, Kubernetes (kustomize) and systemd files, and
//! `firstkey.example.toml`, goes through the real `Settings` loader; a name or value the server
//! would refuse fails the test. The Kubernetes overlays are rendered with `kubectl kustomize` when
//! it is installed (skipped with a printed reason otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firstkey::settings::Settings;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A variable as a deployment file sets it.
#[derive(Debug, Clone)]
struct Var {
    file: String,
    name: String,
    value: String,
}

/// `FIRSTKEY_*` assignments in a file: `NAME=value`, `NAME: value`, `Environment=NAME=value`, and
/// Kubernetes `- name: NAME` followed by `valueFrom` (a secret: given a sample value of its kind).
/// Comment lines are skipped. `until_space` ends a value at whitespace (Containerfile `ENV`).
fn assignments(rel: &str, until_space: bool) -> Vec<Var> {
    let text = read(rel);
    let lines: Vec<&str> = text.lines().collect();
    let mut vars = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            continue;
        }
        let mut rest = *line;
        while let Some(at) = rest.find("FIRSTKEY_") {
            let tail = &rest[at..];
            let name_len = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..name_len];
            let after = &tail[name_len..];
            let value = if let Some(v) = after.strip_prefix('=') {
                Some(if until_space {
                    v.split_whitespace().next().unwrap_or("").to_owned()
                } else {
                    v.trim().to_owned()
                })
            } else if let Some(v) = after.strip_prefix(": ").or_else(|| after.strip_prefix(':')) {
                Some(v.trim().to_owned())
            } else if trimmed.starts_with("- name:") || trimmed.starts_with("name:") {
                // Kubernetes env entry: the value or valueFrom is on the next lines.
                let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
                if let Some(v) = next.strip_prefix("value:") {
                    Some(v.trim().to_owned())
                } else if next.starts_with("valueFrom") {
                    Some(secret_sample(name).to_owned())
                } else {
                    panic!("{rel}:{}: {name} has neither value nor valueFrom", i + 1)
                }
            } else {
                None
            };
            if let Some(value) = value {
                let value = value.trim_matches('"').trim_matches('\'').to_owned();
                vars.push(Var {
                    file: format!("{rel}:{}", i + 1),
                    name: name.to_owned(),
                    value,
                });
            }
            rest = after;
        }
    }
    vars
}

/// A value of the right kind for a variable that a file takes from a secret.
fn secret_sample(name: &str) -> &'static str {
    match name {
        "FIRSTKEY_DATABASE_URL" => {
            "postgresql://firstkey:secret@firstkey-db-rw.firstkey:5432/firstkey"
        }
        "FIRSTKEY_DATA_KEY" => "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
        "FIRSTKEY_SMTP_RELAY" => "smtps://user:secret@relay.example.org:465",
        other => panic!("no sample for the secret {other}; add one"),
    }
}

/// Certificate and key paths name files on the target system; they become empty files under
/// `root` so the loader's existence check runs against the path the file names.
fn localise(vars: &[Var], root: &Path) -> Vec<(String, String)> {
    vars.iter()
        .map(|v| {
            let value = if v.name.contains("TLS_") && v.value.starts_with('/') {
                let local = root.join(v.value.trim_start_matches('/'));
                std::fs::create_dir_all(local.parent().unwrap()).unwrap();
                std::fs::write(&local, b"").unwrap();
                local.display().to_string()
            } else {
                v.value.clone()
            };
            (v.name.clone(), value)
        })
        .collect()
}

/// Loads each variable alone (a bad name or value names itself), then the group together (pairs
/// such as certificate and key); returns the settings of the whole group.
fn load_group(what: &str, vars: &[Var]) -> Settings {
    assert!(!vars.is_empty(), "{what}: no FIRSTKEY_* variable found");
    let root = tempfile::tempdir().unwrap();
    let env = localise(vars, root.path());
    for (var, pair) in vars.iter().zip(&env) {
        let alone = if var.name.contains("TLS_") {
            // A certificate needs its key: load it with its partner from the same group.
            let partner = if var.name.ends_with("_CERT") {
                var.name.replace("_CERT", "_KEY")
            } else {
                var.name.replace("_KEY", "_CERT")
            };
            env.iter()
                .filter(|(n, _)| *n == var.name || *n == partner)
                .cloned()
                .collect::<Vec<_>>()
        } else {
            vec![pair.clone()]
        };
        if let Err(e) = Settings::load(Some(&empty_toml(root.path())), alone) {
            panic!("{}: {}={:?} is refused: {e}", var.file, var.name, var.value);
        }
    }
    Settings::load(Some(&empty_toml(root.path())), env)
        .unwrap_or_else(|e| panic!("{what}: the variables together are refused: {e}"))
}

/// An empty configuration file, so no `firstkey.toml` of the working directory interferes.
fn empty_toml(dir: &Path) -> PathBuf {
    let path = dir.join("empty.toml");
    std::fs::write(&path, "").unwrap();
    path
}

fn only(vars: &[Var], from_line: usize, to_line: usize) -> Vec<Var> {
    vars.iter()
        .filter(|v| {
            let line: usize = v.file.rsplit(':').next().unwrap().parse().unwrap();
            (from_line..=to_line).contains(&line)
        })
        .cloned()
        .collect()
}

#[test]
fn the_image_binds_both_listeners_on_all_interfaces_and_its_variables_load() {
    let image = assignments("deploy/container/Containerfile", true);
    let settings = load_group("Containerfile", &image);
    assert!(
        settings.listen.ip().is_unspecified(),
        "{:?}",
        settings.listen
    );
    assert!(
        settings.agent_listen.ip().is_unspecified(),
        "the agent channel must be reachable through EXPOSE 8443: {:?}",
        settings.agent_listen
    );
    assert_eq!(settings.agent_listen.port(), 8443);
    let text = read("deploy/container/Containerfile");
    assert!(text.contains("HEALTHCHECK"), "the image has a health check");
    assert!(
        text.contains("\"health\""),
        "the health check runs `firstkey health`"
    );
    assert!(
        text.contains("USER 10001"),
        "the image runs as a non-root user"
    );
}

#[test]
fn the_dockerignore_keeps_keys_and_build_output_out_of_the_image() {
    let ignore = read(".dockerignore");
    for entry in ["target/", ".firstkey/", "firstkey.toml"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn compose_variables_load_per_service_on_top_of_the_image() {
    let image = assignments("deploy/container/Containerfile", true);
    let compose = assignments("deploy/container/compose.yaml", false);
    let text = read("deploy/container/compose.yaml");
    // Each service's block: from its `  name:` line to the next service.
    let mut starts: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.starts_with("  ")
                && !l.starts_with("   ")
                && l.trim().split(':').next().is_some_and(|k| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        })
        .map(|(i, l)| (i + 1, l.trim().split(':').next().unwrap_or("")))
        .collect();
    starts.push((usize::MAX, "end"));
    let mut checked = 0;
    for pair in starts.windows(2) {
        let (from, service) = pair[0];
        let to = pair[1].0.saturating_sub(1);
        let own = only(&compose, from, to);
        if own.is_empty() {
            continue;
        }
        let mut group = image.clone();
        group.extend(own);
        let settings = load_group(&format!("compose service {service}"), &group);
        if service == "firstkey-a" {
            assert!(settings.agent_listen.ip().is_unspecified());
            assert!(settings.smtp.is_some(), "replicas send mail to the sink");
            assert_eq!(settings.public_origin.as_str(), "http://localhost:8080");
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "compose: the demo and replica services were checked"
    );
    assert!(
        text.contains("8443:8443"),
        "compose publishes the agent channel"
    );
    assert!(
        text.contains("mailpit"),
        "compose has a mail sink with a web view"
    );
}

#[test]
fn kubernetes_variables_load_for_each_overlay() {
    let base_config = assignments("deploy/kubernetes/base/kustomization.yaml", false);
    let deployment = assignments("deploy/kubernetes/base/deployment.yaml", false);
    for overlay in ["dev", "production"] {
        let own = assignments(
            &format!("deploy/kubernetes/overlays/{overlay}/kustomization.yaml"),
            false,
        );
        let mut group = assignments("deploy/container/Containerfile", true);
        group.extend(base_config.iter().cloned());
        group.extend(deployment.iter().cloned());
        group.extend(own);
        let settings = load_group(&format!("kubernetes overlay {overlay}"), &group);
        assert!(settings.agent_listen.ip().is_unspecified());
        assert!(
            settings.agent_tls.is_some(),
            "{overlay}: the agent channel uses the certificate from its secret"
        );
        assert!(
            settings.data_key.is_some(),
            "{overlay}: the data key comes from a secret"
        );
        assert!(settings.metrics_listen.is_some());
        assert!(settings.public_origin.as_str().starts_with("https://"));
    }
}

#[test]
fn systemd_units_and_their_environment_file_load_with_the_example_config() {
    let mut vars = assignments("deploy/systemd/firstkey.service", false);
    vars.extend(assignments("deploy/systemd/firstkey.env.example", false));
    let unit = read("deploy/systemd/firstkey.service");
    assert!(
        unit.contains("--config /etc/firstkey/firstkey.toml"),
        "the unit names the config file the README tells to install"
    );
    let settings = load_group("systemd", &vars);
    assert!(settings.smtp.is_some());
    // The file the unit points at is installed from firstkey.example.toml.
    let root = tempfile::tempdir().unwrap();
    let env = localise(&vars, root.path());
    Settings::load(Some(&repo().join("firstkey.example.toml")), env)
        .unwrap_or_else(|e| panic!("firstkey.example.toml with the unit's variables: {e}"));
}

/// `firstkey.example.toml` names every setting of [`Settings::known`], each with its real default,
/// loads as it is, and each commented-out setting is a known name.
#[test]
fn the_example_config_names_every_setting_with_its_default() {
    let example = read("firstkey.example.toml");
    let root = tempfile::tempdir().unwrap();
    Settings::load(
        Some(&repo().join("firstkey.example.toml")),
        Vec::<(String, String)>::new(),
    )
    .unwrap_or_else(|e| panic!("firstkey.example.toml is refused: {e}"));
    let mut written: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for line in example.lines() {
        let (commented, body) = match line.strip_prefix("# ") {
            Some(b) => (true, b),
            None => (false, line),
        };
        let Some((key, value)) = body.split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            written.insert(key.to_owned(), (commented, value.trim().to_owned()));
        }
    }
    let known = Settings::known();
    assert!(known.len() >= 18, "{known:?}");
    for (name, default) in &known {
        let (commented, value) = written
            .get(name)
            .unwrap_or_else(|| panic!("firstkey.example.toml does not name `{name}`"));
        match default {
            Some(default) => {
                assert!(!commented, "`{name}` has a default; write it uncommented");
                assert_eq!(
                    value, default,
                    "`{name}`: the example's value is not the default"
                );
            }
            None => assert!(commented, "`{name}` has no default; show it commented out"),
        }
    }
    for name in written.keys() {
        assert!(
            known.iter().any(|(k, _)| k == name),
            "firstkey.example.toml names `{name}`, which is not a setting"
        );
    }
    drop(root);
}

/// Renders both overlays with `kubectl kustomize` (offline) and checks what each must contain.
#[test]
fn kubernetes_overlays_render() {
    let kubectl = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file());
    let Some(kubectl) = kubectl else {
        eprintln!("SKIPPED kubernetes_overlays_render: kubectl is not installed");
        return;
    };
    for overlay in ["dev", "production"] {
        let out = std::process::Command::new(&kubectl)
            .arg("kustomize")
            .arg(repo().join(format!("deploy/kubernetes/overlays/{overlay}")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{overlay} does not render: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in [
            "kind: Deployment",
            "kind: Ingress",
            "kind: PodDisruptionBudget",
            "kind: HorizontalPodAutoscaler",
            "kind: NetworkPolicy",
            "kind: Cluster",
            "type: LoadBalancer",
            "startupProbe:",
            "readinessProbe:",
            "livenessProbe:",
            "secretName: firstkey-issuer-keys",
        ] {
            assert!(text.contains(kind), "{overlay} lacks {kind}:\n{text}");
        }
        // The rendered ConfigMap's values load, as the pods would see them.
        let vars: Vec<Var> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.trim().split_once(": ")?;
                k.starts_with("FIRSTKEY_").then(|| Var {
                    file: format!("rendered {overlay}"),
                    name: k.to_owned(),
                    value: v.trim_matches('"').to_owned(),
                })
            })
            .collect();
        load_group(&format!("rendered {overlay}"), &vars);
        if overlay == "production" {
            for needed in [
                "instances: 3",
                "barmanObjectStore",
                "kind: ScheduledBackup",
                "synchronous:",
            ] {
                assert!(text.contains(needed), "production lacks {needed}");
            }
        }
    }
}
