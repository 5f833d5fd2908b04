"""What deploy/ promises, checked on the built manifests and files (tests/deploy/run).

Usage: checks.py DEV_YAML PROD_YAML PROMQL_RULES_OUT
Schemas are checked elsewhere (kubernetes-validate, check-jsonschema, promtool); this checks
the promises a schema cannot: probes, limits, grace periods, users, budgets, autoscalers, the
compose wiring and its .env example, the Dockerfile's shape, the generated dashboards.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

import promql

ROOT = promql.ROOT
SERVICES = {"gateway": 8080, "product": 8081, "inventory": 8082, "order": 8083, "flashsale": 8084}
AUTOSCALED = {"gateway", "product", "flashsale"}
SHUTDOWN_TIMEOUT_SECS = 10  # MALL_SHUTDOWN_TIMEOUT's default, set in the base's mall-common
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert m, f"cannot read the duration {duration!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]


def kubernetes(path, overlay):
    docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configmaps = by_kind.get("ConfigMap", {})
    common = next(v for k, v in configmaps.items() if k.startswith("mall-common"))
    shutdown = seconds(common["data"]["MALL_SHUTDOWN_TIMEOUT"])
    for name, port in SERVICES.items():
        where = f"{overlay}: Deployment {name}"
        dep = by_kind.get("Deployment", {}).get(name)
        check(dep is not None, f"{where} is missing")
        if dep is None:
            continue
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        check(c["command"] == [f"mall-{name}"], f"{where}: runs {c['command']}")
        check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{where}: readiness not on /readyz")
        check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", f"{where}: liveness not on /healthz")
        res = c.get("resources", {})
        check({"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(res.get("limits", {})),
              f"{where}: requests and limits of cpu and memory")
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        check(pod.get("terminationGracePeriodSeconds", 30) > shutdown + pre_stop,
              f"{where}: terminationGracePeriodSeconds not above MALL_SHUTDOWN_TIMEOUT + preStop")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: not runAsNonRoot")
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem not read-only")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
        check(c["ports"][0]["containerPort"] == port, f"{where}: port {c['ports'][0]['containerPort']}")
        config = next((v for k, v in configmaps.items() if k.startswith(f"{name}-config")), None)
        check(config is not None and config["data"].get("MALL_HTTP_ADDR") == f"0.0.0.0:{port}",
              f"{where}: MALL_HTTP_ADDR is not 0.0.0.0:{port}")
        check(by_kind.get("Service", {}).get(name) is not None, f"{overlay}: Service {name} is missing")
        pdb = by_kind.get("PodDisruptionBudget", {}).get(name)
        check(pdb is not None and pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"],
              f"{overlay}: PodDisruptionBudget {name} missing or not selecting the Deployment's pods")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name)
        check((hpa is not None) == (name in AUTOSCALED), f"{overlay}: HorizontalPodAutoscaler {name}: {hpa is not None}")
    return by_kind


def kubernetes_overlays(dev, prod):
    dev_kinds = kubernetes(dev, "dev")
    for name in ("postgres", "redis", "rabbitmq"):
        check(name in dev_kinds.get("StatefulSet", {}), f"dev: no StatefulSet {name}")
    prod_kinds = kubernetes(prod, "prod")
    check("StatefulSet" not in prod_kinds, "prod: runs its own StatefulSets")
    check("mall-rabbitmq" in prod_kinds.get("RabbitmqCluster", {}), "prod: no RabbitmqCluster")
    check(not any(k.startswith("mall-database") for k in prod_kinds.get("Secret", {})),
          "prod: a database Secret is committed")


def compose():
    path = ROOT / "deploy" / "compose" / "compose.yaml"
    text = path.read_text()
    spec = yaml.safe_load(text)
    services = spec["services"]
    for name in ("postgres", "redis", "rabbitmq", "jaeger", "zipkin", "prometheus", "grafana", "gateway"):
        check(name in services, f"compose: no service {name}")
    for name in SERVICES:
        if name == "gateway":
            continue
        for i in (1, 2):
            svc = services.get(f"{name}-{i}")
            check(svc is not None, f"compose: no service {name}-{i}")
            if svc:
                check(svc["command"] == [f"mall-{name}"], f"compose: {name}-{i} runs {svc['command']}")
                check(svc["environment"]["MALL_HTTP_ADDR"] == f"0.0.0.0:{SERVICES[name]}", f"compose: {name}-{i} address")
        upstream = services["gateway"]["environment"][f"MALL_UPSTREAM_{name.upper()}"]
        check(upstream == f"http://{name}-1:{SERVICES[name]},http://{name}-2:{SERVICES[name]}",
              f"compose: the gateway's {name} pool is {upstream}")
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            check(dep in services, f"compose: {name} depends on unknown {dep}")
            wanted = "service_completed_successfully" if dep == "seed" else "service_healthy"
            check(cond.get("condition") == wanted, f"compose: {name} waits for {dep} to be {cond.get('condition')}")
            has_health = "healthcheck" in services[dep] or services[dep].get("image", "").startswith("${MALL_IMAGE")
            check(dep == "seed" or has_health, f"compose: {name} waits on {dep}, which has no health check")
    # Every ${VAR:-default} is in .env.example with the same default, and nothing else is there.
    defaults = dict(re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", text))
    example = dict(
        line.split("=", 1) for line in (ROOT / "deploy/compose/.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    check(defaults == example, f"compose: .env.example and compose.yaml's defaults differ: "
          f"{ {k: (defaults.get(k), example.get(k)) for k in set(defaults) | set(example) if defaults.get(k) != example.get(k)} }")
    for job in SERVICES:
        targets = json.loads((ROOT / f"deploy/compose/prometheus-targets/{job}.json").read_text())
        hosts = {t.split(":")[0] for group in targets for t in group["targets"]}
        want = {"gateway"} if job == "gateway" else {f"{job}-1", f"{job}-2"}
        check(hosts == want, f"compose: Prometheus scrapes {hosts} for {job}")


def dockerfile():
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    check(all(f.startswith("${") or f in ("chef", "planner", "builder") for f in froms),
          f"Dockerfile: base images not build arguments: {froms}")
    check(re.search(r"^USER (?!root|0\b)\S+", text, re.M) is not None, "Dockerfile: no non-root USER")
    check("HEALTHCHECK" in text, "Dockerfile: no HEALTHCHECK")
    check("cargo chef cook" in text, "Dockerfile: dependencies not built in a stage of their own")
    for name in SERVICES:
        check(f"target/release/mall-{name}" in text, f"Dockerfile: mall-{name} not copied")
    check((ROOT / ".dockerignore").exists(), "no .dockerignore")
    check("target/" in (ROOT / ".dockerignore").read_text(), ".dockerignore leaves target/ in the build context")


def dashboards(rules_out):
    with tempfile.TemporaryDirectory() as tmp:
        generator = ROOT / "deploy/observability/dashboards/generate.py"
        copy = pathlib.Path(tmp) / "generate.py"
        copy.write_text(generator.read_text())
        subprocess.run([sys.executable, str(copy)], check=True, capture_output=True)
        for made in sorted(pathlib.Path(tmp).glob("*.json")):
            committed = ROOT / "deploy/observability/dashboards" / made.name
            check(committed.exists() and committed.read_text() == made.read_text(),
                  f"dashboards: {made.name} differs from what generate.py writes; run it and commit")
    # Every panel's query as a recording rule, so promtool parses each one.
    rules = [
        {"record": f"mall:panel_{i}", "expr": promql.as_plain_promql(expr)}
        for i, (_, expr) in enumerate(promql.dashboard_exprs())
    ]
    pathlib.Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))


def main():
    dev, prod, rules_out = sys.argv[1:4]
    kubernetes_overlays(dev, prod)
    compose()
    dockerfile()
    dashboards(rules_out)
    if failures:
        print("\n".join(f"FAIL {f}" for f in failures))
        sys.exit(1)
    print("deploy/ keeps its promises (Kubernetes overlays, compose, Dockerfile, dashboards)")


if __name__ == "__main__":
    main()
