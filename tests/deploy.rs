//! The container image and the Kubernetes manifests have the properties a safe rollout needs:
//! probes on /healthz, a grace period longer than the drain, a preStop pause, a non-root user,
//! resources, secrets for keys, and a config the binary accepts. (`.ci/run` also renders the
//! manifests with kustomize and validates them against the Kubernetes API schemas.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bestofn::config::Config;
use serde_json::Value;

fn root(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root(path)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn the_deployment_drains_safely_as_a_non_root_user_with_probes_and_resources() {
    let deployment = yaml("deploy/kubernetes/base/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(container["ports"][0]["containerPort"], 8080);

    // The config the pod mounts is valid and listens on the container port.
    let config_path = root("deploy/kubernetes/base/bestofn.toml");
    let config = Config::from_file(&config_path).unwrap();
    assert_eq!(config.server.listen.port(), 8080);
    assert_eq!(container["args"], serde_json::json!(["serve", "--config", "/etc/bestofn/bestofn.toml"]));
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/bestofn");

    // SIGTERM comes after preStop; the drain must end before the grace period does.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    assert!(pre_stop > 0);
    assert!(grace * 1000 > config.server.drain_timeout_ms + pre_stop * 1000, "grace {grace} s vs drain and preStop");

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][kind][resource].is_string(), "{kind}.{resource}");
        }
    }

    // Keys come from a Secret through the variables the config names.
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    for var in [config.server.api_keys_env.clone().unwrap(), config.upstream.transport.api_key_env.clone().unwrap()] {
        let entry = env.iter().find(|e| e["name"] == var.as_str()).unwrap_or_else(|| panic!("no env {var}"));
        assert!(entry["valueFrom"]["secretKeyRef"]["name"].is_string(), "{var} from a Secret");
    }
}

#[test]
fn service_autoscaler_budget_monitor_and_dashboard_fit_together() {
    let labels = yaml("deploy/kubernetes/base/deployment.yaml")["spec"]["template"]["metadata"]["labels"].clone();
    let service = yaml("deploy/kubernetes/base/service.yaml");
    assert_eq!(service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    let hpa = yaml("deploy/kubernetes/base/hpa.yaml");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "bestofn");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2, "at least two replicas for the PDB to allow drains");
    let pdb = yaml("deploy/kubernetes/base/pdb.yaml");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < hpa["spec"]["minReplicas"].as_u64().unwrap());
    let monitor = yaml("deploy/kubernetes/base/servicemonitor.yaml");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    let overlay = yaml("deploy/kubernetes/overlays/custom-metrics/hpa-in-flight.yaml");
    let pods_metric = overlay["spec"]["metrics"].as_array().unwrap().iter().find(|m| m["type"] == "Pods").unwrap();
    assert_eq!(pods_metric["pods"]["metric"]["name"], "bestofn_in_flight_requests");
    // The dashboard shipped to Grafana is the repository's dashboard.
    let shipped = std::fs::read_to_string(root("deploy/kubernetes/base/dashboard/bestofn.json")).unwrap();
    let canonical = std::fs::read_to_string(root("dashboards/bestofn.json")).unwrap();
    assert_eq!(shipped, canonical, "copy dashboards/bestofn.json to deploy/kubernetes/base/dashboard/");
}

#[test]
fn the_image_is_multi_stage_non_root_and_serves_the_config() {
    let dockerfile = std::fs::read_to_string(root("Dockerfile")).unwrap();
    let froms = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/bestofn"]"#));
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/bestofn/bestofn.toml""#));
    // The eval features stay out unless a build argument asks for them.
    assert!(dockerfile.contains(r#"ARG FEATURES="""#) && dockerfile.contains(r#"--features "${FEATURES}""#));
}
