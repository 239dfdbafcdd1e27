"""`rag ingest --ray` on a real multi-node Ray cluster on this machine (``ray.cluster_utils``:
a head and two worker nodes, each its own raylet and worker processes): the same index as a
local ingest, and still the same when a node is killed mid-ingest."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.runner import ingest
from rag.store import CollectionIndex

from .conftest import EXAMPLES, FIXTURES, make_settings

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install '.[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    # The head runs no work (0 CPUs): tasks and actors go to the two worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(EXAMPLES, root / "help-center")
    shutil.copy(FIXTURES / "covid_faq_slice.jsonl", root / "faq.jsonl")
    return root


def _rows(data_dir: Path, embedder: Any) -> dict[int, tuple[str, str, np.ndarray]]:
    settings = make_settings(data_dir)
    index = CollectionIndex.load(settings.collections_dir, "default", model=embedder.name, dimension=embedder.dimension)
    try:
        rows = index._db.execute("SELECT id, source, text, vector FROM chunks ORDER BY id").fetchall()
    finally:
        index.close()
    return {int(i): (src, text, np.frombuffer(v, dtype=np.float32)) for i, src, text, v in rows}


def _same_index(ray_dir: Path, local_dir: Path, embedder: Any) -> None:
    """Same chunk ids, sources and texts, each vector within 1e-4 cosine of the local one."""
    ours, local = _rows(ray_dir, embedder), _rows(local_dir, embedder)
    assert list(ours) == list(local) and len(ours) > 50
    for chunk_id, (source, text, vector) in local.items():
        assert ours[chunk_id][:2] == (source, text)
        assert float(ours[chunk_id][2] @ vector) >= 1 - 1e-4


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory, docs: Path, embedder: Any) -> Path:
    data_dir = tmp_path_factory.mktemp("local")
    ingest([docs], "default", make_settings(data_dir, embedding_batch_size=2), embedder, progress=False)
    return data_dir


def test_ray_ingest_gives_the_index_a_local_ingest_gives(
    cluster: Any, docs: Path, local_dir: Path, embedder: Any, tmp_path: Path
) -> None:
    from ingest.distributed import RayStages

    settings = make_settings(tmp_path / "data", embedding_batch_size=2)
    stages = RayStages(None, settings, embedder.dimension, workers=2)
    try:
        report = ingest([docs], "default", settings, embedder, progress=False, stages=stages)
    finally:
        stages.close()
    assert report.chunks_added > 50 and not report.failed
    _same_index(tmp_path / "data", local_dir, embedder)
    again = RayStages(None, settings, embedder.dimension, workers=2)
    try:  # incremental: nothing changed, nothing embedded
        assert ingest([docs], "default", settings, embedder, progress=False, stages=again).chunks_added == 0
    finally:
        again.close()


def test_a_node_killed_mid_ingest_still_gives_a_complete_duplicate_free_index(
    cluster: Any, docs: Path, local_dir: Path, embedder: Any, tmp_path: Path
) -> None:
    from ingest.distributed import RayStages

    cluster_, nodes = cluster
    settings = make_settings(tmp_path / "data", embedding_batch_size=2)
    stages = RayStages(None, settings, embedder.dimension, workers=2)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = ingest([docs], "default", settings, embedder, progress=False, stages=stages)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    while stages.embedded == 0 and worker.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    embedded_at_kill = stages.embedded
    cluster_.remove_node(nodes[1], allow_graceful=False)  # SIGKILL: the node's raylet and workers
    worker.join(600)
    stages.close()
    assert "error" not in outcome, outcome.get("error")
    total = outcome["report"].chunks_added
    assert 0 < embedded_at_kill < total  # the kill came mid-run
    _same_index(tmp_path / "data", local_dir, embedder)
    nodes[1] = cluster_.add_node(num_cpus=2)  # back, for any later test
