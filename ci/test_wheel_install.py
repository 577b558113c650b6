"""The built wheel installs into a fresh venv and runs Serve on a 2-node cluster."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ray._common.network_utils import find_free_port

ROOT = Path(__file__).resolve().parent.parent

SMOKE = textwrap.dedent(
    """
    import json, importlib.metadata, sys
    from dataclasses import dataclass

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.config import RequestRouterConfig

    ROUTER = (
        "ray.llm._internal.serve.routing_policies.prefix_aware."
        "prefix_aware_router:PrefixCacheAffinityRouter"
    )

    @dataclass
    class Req:
        prompt: str

    # One CPU per node and per replica: one replica on each node.
    @serve.deployment(
        num_replicas=2,
        ray_actor_options={"num_cpus": 1},
        request_router_config=RequestRouterConfig(request_router_class=ROUTER),
    )
    class Model:
        async def __call__(self, req):
            return serve.get_replica_context().replica_id.unique_id

    cluster = Cluster()
    cluster.add_node(num_cpus=1, include_dashboard=False)
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, include_dashboard=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
        handle = serve.run(Model.bind(), name="smoke", route_prefix=None)
        served = [
            handle.remote(Req(prompt="shared prefix " * 20 + str(i))).result(
                timeout_s=60
            )
            for i in range(20)
        ]
        details = serve.context._get_global_client().get_serve_details()
        replicas = details["applications"]["smoke"]["deployments"]["Model"][
            "replicas"
        ]
        dist = importlib.metadata.distribution("ray")
        open(sys.argv[2], "w").write(json.dumps({
            "version": dist.version,
            "ray_version": ray.__version__,
            "commit": ray.__commit__,
            "patchset": json.loads(dist.read_text("PATCHSET.json")),
            "alive_nodes": len(nodes),
            "served": served,
            "replica_nodes": {r["replica_id"]: r["node_id"] for r in replicas},
        }))
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    wheels = sorted((ROOT / "dist").glob("ray-*.whl"))
    assert len(wheels) == 1, f"run `make wheel` first: {wheels}"
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"ray[serve] @ {wheels[0].resolve().as_uri()}",
        ],
        check=True,
    )
    return venv


def test_wheel_installs_and_serves_on_two_nodes(fresh_venv, tmp_path):
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    proc = subprocess.run(
        [
            str(fresh_venv / "bin" / "python"),
            str(script),
            str(find_free_port()),
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    base = (ROOT / "patches" / "ray" / "base.toml").read_text()
    assert result["version"].startswith("2.60.0+")
    assert result["ray_version"] == "2.60.0"
    assert result["commit"] == "b7f4259e944bf6959f721b106adc366ddfa0c356"
    assert result["patchset"]["base"]["sha256"] in base
    series = (ROOT / "patches" / "ray" / ".patches").read_text().split()
    assert result["patchset"]["patches"] == series
    assert result["alive_nodes"] == 2
    # The two replicas run on the two nodes...
    assert len(set(result["replica_nodes"].values())) == 2
    # ...and the prefix-aware router sends the shared prefix to one of them.
    assert len(set(result["served"])) == 1
    assert set(result["served"]) <= set(result["replica_nodes"])


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
