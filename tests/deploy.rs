//! The container deployment cannot run here (no container engine), so
//! this checks what can be checked without one: `docker-compose.yml`
//! parses, has the services the README describes, and names only files
//! that exist; its tideflow commands use options the binary has; its
//! cluster matches `deploy/hosts`; the spec it runs passes `tideflow
//! check` with its overrides; and the Dockerfile copies only what exists.

mod common;

use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text = std::fs::read_to_string(common::root().join("docker-compose.yml")).unwrap();
    YamlLoader::load_from_str(&text)
        .expect("docker-compose.yml is valid YAML")
        .remove(0)
}

/// A service's key, looked up in the service and then in what it merges
/// in with `<<:`.
fn field<'a>(service: &'a Yaml, key: &str) -> &'a Yaml {
    let own = &service[key];
    if own.is_badvalue() {
        &service["<<"][key]
    } else {
        own
    }
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value following `flag` in a command.
fn argument<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|arg| arg == flag)
        .and_then(|at| command.get(at + 1))
        .map(String::as_str)
}

fn tideflow_help(subcommand: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_compose_file_runs_a_two_process_cluster_on_kafka() {
    let root = common::root();
    let compose = compose();
    let services = compose["services"].as_hash().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for expected in [
        "kafka",
        "create-topics",
        "producer",
        "tideflow-0",
        "tideflow-1",
    ] {
        assert!(
            names.contains(&expected),
            "no service {expected}: {names:?}"
        );
    }
    assert_eq!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "Kafka runs in KRaft mode"
    );

    let hosts: Vec<String> = std::fs::read_to_string(root.join("deploy/hosts"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut workers = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if let Some(context) = field(service, "build").as_str() {
            assert!(
                root.join(context).join("Dockerfile").is_file(),
                "{name} builds {context}/Dockerfile, which does not exist"
            );
        }
        for volume in strings(field(service, "volumes")) {
            let host_path = volume.split(':').next().unwrap();
            if host_path.starts_with('.') {
                assert!(
                    root.join(host_path).exists(),
                    "{name} mounts {host_path}, which does not exist"
                );
            }
        }
        let command = strings(field(service, "command"));
        if field(service, "image").as_str() != Some("tideflow:latest") {
            continue;
        }
        // Files the command names exist in the image (copied from here),
        // and every option is one the binary has.
        let help = tideflow_help(&command[0]);
        for arg in &command[1..] {
            if arg.starts_with("dataflows/") || arg.starts_with("models/") {
                assert!(root.join(arg).is_file(), "{name} names {arg}");
            }
            if arg.starts_with("--") {
                assert!(
                    help.contains(arg.as_str()),
                    "{name}: tideflow {} has no {arg}",
                    command[0]
                );
            }
        }
        if command[0] == "run" {
            workers += 1;
            let processes: usize = argument(&command, "--processes").unwrap().parse().unwrap();
            let process: usize = argument(&command, "--process").unwrap().parse().unwrap();
            assert_eq!(processes, hosts.len(), "deploy/hosts lists every process");
            let hostname = field(service, "hostname").as_str().unwrap();
            assert!(
                hosts[process].starts_with(&format!("{hostname}:")),
                "line {process} of deploy/hosts is {}, not {name}'s host {hostname}",
                hosts[process]
            );
            check_spec(&command);
        }
    }
    assert_eq!(workers, hosts.len(), "one tideflow service per process");
}

/// `tideflow check` accepts the spec of a `run` command with its overrides.
fn check_spec(command: &[String]) {
    common::require_onnxruntime();
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
    check
        .current_dir(common::root())
        .args(["check", &command[1]]);
    let mut args = command.iter();
    while let Some(arg) = args.next() {
        if arg == "--set" {
            check.args(["--set", args.next().unwrap()]);
        }
    }
    let output = check.output().unwrap();
    assert!(
        output.status.success(),
        "tideflow check {}: {}",
        command[1],
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dockerfile_copies_only_what_exists() {
    let root = common::root();
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut copies = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"COPY") || words.iter().any(|word| word.starts_with("--from")) {
            continue;
        }
        for source in &words[1..words.len() - 1] {
            assert!(
                Path::new(&root.join(source)).exists(),
                "the Dockerfile copies {source}, which does not exist"
            );
            copies += 1;
        }
    }
    assert!(
        copies >= 5,
        "the Dockerfile copies the sources, specs and models"
    );
}
