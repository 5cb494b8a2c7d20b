"""The local stack's pieces that need no servers: its configuration, the local prefect.yaml, and
telling its processes from others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from certlc.config import load_settings
from certlc.stack import local_prefect_yaml, process_start_time, repository_root
from certlc.up import Part, StackInfo, down, ps, write_stack_config


def test_stack_config_is_valid_and_wires_events_to_webhook_and_queue(tmp_path: Path) -> None:
    path = write_stack_config(tmp_path, vault_port=9443, identity_port=9442, webhook_port=9080,
                              queue_connection_string="UseDevelopmentStorage=true", shared_key="k3y",
                              rollout_key="r0ll", smtp_port=2525)
    assert path.stat().st_mode & 0o077 == 0  # holds the webhook key
    settings = load_settings(path)
    assert settings.vault("demo").url == "https://localhost:9443"
    assert settings.webhook.shared_key.get_secret_value() == "k3y"
    assert settings.webhook.rollout_key is not None and settings.webhook.rollout_key.get_secret_value() == "r0ll"
    assert settings.rollout_path == (tmp_path / "rollout").resolve()
    smtp = settings.notifications.smtp
    assert smtp is not None and (smtp.host, smtp.resolved_port, smtp.security) == ("127.0.0.1", 2525, "none")
    kinds = {(s.destination, s.event_schema) for s in settings.emulator.subscriptions}
    assert kinds == {("webhook", "eventgrid"), ("webhook", "cloudevents"), ("storage_queue", "eventgrid")}
    for sub in settings.emulator.subscriptions:
        if sub.destination == "webhook":
            assert sub.endpoint == "http://127.0.0.1:9080/api/events?key=k3y"


def test_the_demo_agent_settings_are_the_extension_json_and_report_to_the_stack(tmp_path: Path) -> None:
    from certlc.agent.settings import load_agent_settings
    from certlc.demo import DEMO_CERTIFICATES, agent_watch, event_due, write_agent_settings

    names = agent_watch(DEMO_CERTIFICATES)
    assert len(names) == 3 and all(event_due(s) for s in DEMO_CERTIFICATES if s.name in names)
    key_file = tmp_path / "rollout.key"
    key_file.write_text("k\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = write_agent_settings(tmp_path / "agent", vault_url="https://localhost:9443", client_id="cid",
                                ca_bundle=str(tmp_path / "ca.pem"), names=names,
                                rollout_url="http://127.0.0.1:9080/api/rollout", rollout_key_file=str(key_file))
    settings = load_agent_settings(path)
    assert [w.secret_name for w in settings.watched] == names and settings.polling_interval == 5
    assert settings.certlc.report.url == "http://127.0.0.1:9080/api/rollout"
    assert settings.certlc.report_path == tmp_path / "agent" / "state" / "rollout.json"


def test_local_prefect_yaml_changes_only_the_pull_directory_and_drain_interval(tmp_path: Path) -> None:
    original = yaml.safe_load((repository_root() / "prefect.yaml").read_text())
    local = yaml.safe_load(local_prefect_yaml(tmp_path / "prefect.yaml", working_directory=tmp_path,
                                              drain_interval_seconds=10).read_text())
    assert local["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}]
    by_name = {d["name"]: d for d in local["deployments"]}
    assert set(by_name) == {"renew-certificate", "drain-queue", "sweep", "inventory"}
    assert by_name["drain-queue"]["schedules"] == [{"interval": 10}]
    assert by_name["drain-queue"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert by_name["sweep"] == next(d for d in original["deployments"] if d["name"] == "sweep")
    assert all(d["work_pool"]["name"] == "certlc-hybrid" for d in local["deployments"])


def test_a_reused_pid_is_not_taken_for_a_part_and_down_leaves_it_alone(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = Part("webhook", other.pid, "tcp://127.0.0.1:1", "log", started="1")  # another start time
        info = StackInfo(root=str(tmp_path), config="", api="", webhook_url="", env={}, parts=[stale])
        (tmp_path / "stack.json").write_text(info.to_json())
        assert process_start_time(other.pid) not in (None, "1")
        assert ps(tmp_path)[0]["running"] is False
        assert down(tmp_path) == []
        assert other.poll() is None, "down killed a process that is not part of the stack"
    finally:
        other.kill()
        other.wait()


def test_down_stops_a_recorded_part(tmp_path: Path) -> None:
    part_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    part = Part.of("smtp", part_proc, "tcp://127.0.0.1:1", tmp_path / "log")
    info = StackInfo(root=str(tmp_path), config="", api="", webhook_url="", env={}, parts=[part])
    (tmp_path / "stack.json").write_text(info.to_json())
    assert ps(tmp_path)[0]["running"] is True
    assert down(tmp_path) == ["smtp"]
    assert part_proc.wait(timeout=10) is not None
    assert not (tmp_path / "stack.json").exists()
    assert os.path.exists(tmp_path)
