"""The deployment files in config/examples/ are what docs/deployment.md shows and what works:
the guide quotes them whole, systemd accepts the units, the Kubernetes manifest's probes and
grace period fit the config it runs, and N instances of shared-port.yaml really share a port."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import need_program
from loadgen import Load
from porchtest import PorchServer, free_port

from porch.config.load import load_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "config" / "examples"
GUIDE = REPO / "docs" / "deployment.md"
QUOTED = ["nginx-porch.conf", "haproxy.cfg", "behind-nginx.yaml", "behind-haproxy.yaml", "kubernetes/deployment.yaml"]


@pytest.mark.parametrize("name", QUOTED)
def test_the_guide_quotes_each_file_whole(name: str) -> None:
    assert (EXAMPLES / name).read_text().rstrip() in GUIDE.read_text()


def test_the_readme_links_the_guide() -> None:
    assert "(docs/deployment.md)" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("units", [["porch.service"], ["porch@.service", "porch.target"]])
def test_systemd_accepts_the_units(units: list[str], tmp_path: Path) -> None:
    """systemd-analyze verify, with ExecStart pointing at the porch installed here."""
    analyze = need_program("systemd-analyze")
    porch = shutil.which("porch")
    assert porch is not None
    for unit in units:
        (tmp_path / unit).write_text((EXAMPLES / unit).read_text().replace("/usr/local/bin/porch", porch))
    names = ["porch@8001.service" if unit == "porch@.service" else unit for unit in units]
    result = subprocess.run([analyze, "verify", *names], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_target_starts_the_instances_the_balancers_name() -> None:
    """porch.target wants porch@8001..8003: the upstreams of nginx-porch.conf and haproxy.cfg."""
    target = configparser.ConfigParser(strict=False, interpolation=None)
    target.read_string((EXAMPLES / "porch.target").read_text())
    ports = sorted(re.findall(r"porch@(\d+)\.service", target["Unit"]["Wants"]))
    for balancer in ("nginx-porch.conf", "haproxy.cfg"):
        assert sorted(re.findall(r"127\.0\.0\.1:(\d+)", (EXAMPLES / balancer).read_text())) == ports
    unit = (EXAMPLES / "porch@.service").read_text()
    assert "Environment=PORCH_PORT=%i" in unit and "NotifyAccess=all" in unit


def test_the_kubernetes_probes_and_grace_fit_the_container_config() -> None:
    deployment = next(doc for doc in yaml.safe_load_all((EXAMPLES / "kubernetes" / "deployment.yaml").read_text()))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = load_config(REPO / container["args"][1])
    mounts = {mount.path: mount.type for mount in config.mounts}
    assert mounts[container["readinessProbe"]["httpGet"]["path"]] == "ready"
    assert mounts[container["livenessProbe"]["httpGet"]["path"]] == "health"
    assert container["ports"][0]["containerPort"] == config.listen[0].host_port[1]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    needed = pre_stop + config.drain_seconds + config.timeouts.graceful
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_instances_share_one_port(tmp_path: Path) -> None:
    """Three instances of shared-port.yaml on one port: each serves part of a load; stopping one
    leaves the others serving it."""
    port = free_port()
    config = yaml.safe_load((EXAMPLES / "shared-port.yaml").read_text())
    del config["log"]
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("shared")
    config["mounts"][0]["root"] = str(www)
    config["listen"][0]["address"] = f"127.0.0.1:{port}"
    instances: list[PorchServer] = []
    try:
        for number in range(1, 4):
            instances.append(
                PorchServer.start(config, tmp_path / f"instance{number}", env={"PORCH_INSTANCE": str(number)})
            )
        # a new connection for every request: the kernel picks an instance per connection
        with Load(f"http://127.0.0.1:{port}/index.html", clients=6, keep_alive=False) as load:
            load.wait_for(600)
            instances[0].stop()
            load.wait_for(300)
        assert load.outcome.ok >= 900
        assert len(load.outcome.failures) <= 6, load.outcome.failures
        served = [sum("load=" in line for line in instance.access_lines()) for instance in instances]
        assert all(count > 0 for count in served), served  # the kernel spread the connections
        assert instances[1].proc.poll() is None and instances[2].proc.poll() is None
    finally:
        for instance in instances:
            instance.stop()
