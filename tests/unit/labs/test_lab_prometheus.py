"""labs.prometheus: the configuration a lab's Prometheus gets (every node a target named after it, the
product's rules, the lab's intervals), checked by promtool where it is installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from labs import prometheus


def test_every_node_is_a_target_named_after_the_node():
    document = yaml.safe_load(prometheus.config({"node2": 41002, "node1": 41001}))
    (job,) = document["scrape_configs"]
    assert job["job_name"] == "calico-bgp"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:41001"], "labels": {"instance": "node1"}},
        {"targets": ["127.0.0.1:41002"], "labels": {"instance": "node2"}},
    ]
    assert document["rule_files"] == [str(prometheus.RULES)]
    assert prometheus.RULES.is_file()


@pytest.mark.parametrize("interval", ["1s", "2s", "15s"])
def test_the_intervals_are_the_labs(interval):
    document = yaml.safe_load(
        prometheus.config({"node1": 1}, scrape_interval=interval, evaluation_interval="3s")
    )
    assert document["global"] == {"scrape_interval": interval, "evaluation_interval": "3s"}
    assert document["scrape_configs"][0]["scrape_timeout"] == interval


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool: Debian's prometheus package")
def test_promtool_accepts_the_configuration_and_its_rules(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus.config({"node1": 41001, "node2": 41002}))
    proc = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
