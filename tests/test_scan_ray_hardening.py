"""fmonnx scan --engine ray when the cluster is not there or goes away: every wait is bounded.

Joining an address where nothing answers fails in seconds with one Error line; a scan whose pool can
no longer be scheduled (a node lost: the actors restarted on the nodes left take the CPUs the readers
need) stops after RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S with the merged state checkpointed, and
--resume gives the uninterrupted scan's result. Real Ray (a local Ray, ray.cluster_utils' two-node
cluster), real subprocesses; pytest-timeout bounds each test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_scan import square_model, squares, write_squares

import fmonnx
from conftest import save
from fmonnx.frontends.scan import checkpoint_path
from fmonnx.frontends.scan_ray import STALL_ENV, ScanStoppedError

STALL_S = "10"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scan_cli(model: Path, data: Path, out: Path, address: str, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fmonnx", "scan", str(model), str(data), "-o", str(out), "--engine", "ray",
               "--ray-address", address]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def assert_one_join_error(result: subprocess.CompletedProcess, address: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1, result.stderr
    assert address in errors[0] and "ray start --head" in errors[0] and "--ray-address" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def small_scan(tmp_path):
    model = save(square_model(), tmp_path, "squares.onnx")
    write_squares(tmp_path / "images", squares(12, seed=3))
    return model, tmp_path / "images"


@pytest.mark.timeout(60)
def test_a_closed_port_fails_at_once_with_one_error_line(small_scan, tmp_path):
    model, data = small_scan
    address = f"127.0.0.1:{closed_port()}"
    result = scan_cli(model, data, tmp_path / "out", address, timeout=30)  # Ray alone retried for ~13 min
    assert_one_join_error(result, address)
    assert "refused" in result.stderr
    assert not (tmp_path / "out").exists() and not checkpoint_path(tmp_path / "out").exists()


@pytest.mark.timeout(90)
def test_a_port_that_is_not_ray_fails_within_rays_shortened_timeouts(small_scan, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    model, data = small_scan
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        result = scan_cli(model, data, tmp_path / "out", address, timeout=60)  # Ray alone: 20 x ~35 s
    assert_one_join_error(result, address)


def same_as_local(model: Path, data: Path, out: Path, resumed) -> None:
    whole = fmonnx.scan(model, data, out, top=3, batch=4)
    assert resumed.record["images"] == whole.record["images"]
    assert resumed.record["layers"] == whole.record["layers"]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_pool_that_takes_every_cpu_stops_with_the_checkpoint_kept(small_scan, tmp_path, monkeypatch):
    """One CPU: the one actor holds it and the readers never run, as after losing a node; Ray waited forever."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[ray]'")
    model, data = small_scan
    monkeypatch.setenv(STALL_ENV, STALL_S)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(ScanStoppedError) as stopped:
            fmonnx.scan(model, data, tmp_path / "out", top=3, batch=4, engine="ray")
    finally:
        ray.shutdown()
    message = str(stopped.value)
    assert "\n" not in message and "no progress for 10 s" in message and "--resume" in message
    assert "pool of 1 actors and the readers does not fit in Ray's 1 CPUs" in message
    assert checkpoint_path(tmp_path / "out").exists() and not (tmp_path / "out").exists()
    resumed = fmonnx.scan(model, data, tmp_path / "out", top=3, batch=4, resume=True)
    same_as_local(model, data, tmp_path / "whole", resumed)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_losing_a_node_mid_scan_finishes_or_stops_resumable(tmp_path, monkeypatch):
    """Two 1-CPU nodes (ray.cluster_utils); the second is killed once the first results are merged."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    model = save(square_model(), tmp_path, "squares.onnx")
    data = tmp_path / "images"
    for copy in range(5):  # 150 images, so the node is lost with most of the scan to go
        write_squares(data / str(copy), squares(30, seed=4))
    monkeypatch.setenv(STALL_ENV, STALL_S)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(timeout=60)
        lost = []

        def lose_the_node(done: int, total: int) -> None:
            if not lost:
                lost.append(done)
                cluster.remove_node(second, allow_graceful=False)

        try:
            result = fmonnx.scan(model, data, tmp_path / "out", top=3, batch=4, engine="ray", checkpoint_every=8,
                                 progress=lose_the_node)
        except ScanStoppedError as exc:  # the actor restarted on the head takes its one CPU: the readers starve
            assert "\n" not in str(exc) and "--resume" in str(exc)
            assert checkpoint_path(tmp_path / "out").exists()
            result = fmonnx.scan(model, data, tmp_path / "out", top=3, batch=4, resume=True)
            assert result.record["resumed_from"] >= lost[0]
        assert lost
    finally:
        ray.shutdown()
        cluster.shutdown()
    same_as_local(model, data, tmp_path / "whole", result)
