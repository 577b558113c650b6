"""One toolkit for the demo, the chaos runs and the benchmarks (fork tooling).

Closed-loop load over any async call, the figures every report needs
(throughput, percentiles, affinity, per-second timelines), fault injection
on a local cluster, and result JSON. Ray's own helpers are used where they
exist (``find_free_port``, ``wait_for_condition``).
"""

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterable, Iterator, List, Optional

import ray
from ray import serve
from ray._common.network_utils import find_free_port  # noqa: F401 (re-exported)
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE


@dataclass
class Record:
    """One request of a load run."""

    start: float  # time.monotonic() when it was sent
    latency_s: float
    ok: bool
    key: str = ""  # what the request was about (e.g. its prefix)
    replica: str = ""  # who served it
    extra: Dict[str, Any] = field(default_factory=dict)


async def closed_loop(
    call: Callable[[int, int], Awaitable[Record]],
    callers: int,
    duration_s: float,
    timeout_s: float = 60.0,
) -> List[Record]:
    """``callers`` loops that each send a request as soon as the last answered.

    Args:
        call: ``call(caller, i)`` sends request ``i`` of a caller and returns
            its record (``start``/``latency_s`` are filled in here).
        callers: Number of concurrent callers.
        duration_s: How long to send for.
        timeout_s: A request not answered by then counts as failed (hung).
    """
    records: List[Record] = []
    stop_at = time.monotonic() + duration_s

    async def caller(c: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                record = await asyncio.wait_for(call(c, i), timeout_s)
            except Exception as e:  # noqa: BLE001 (a failed request is a result)
                record = Record(start, 0.0, False, extra={"error": repr(e)[:200]})
            record.start = start
            record.latency_s = time.monotonic() - start
            records.append(record)
            i += 1

    await asyncio.gather(*(caller(c) for c in range(callers)))
    return records


def percentile(values: Iterable[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))
    return values[index]


def affinity(records: Iterable[Record]) -> float:
    """Share of each key's requests that went to its most frequent replica."""
    by_key: Dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r.ok and r.key:
            by_key[r.key][r.replica] += 1
    total = sum(sum(c.values()) for c in by_key.values())
    if not total:
        return float("nan")
    return sum(c.most_common(1)[0][1] for c in by_key.values()) / total


def summarize(records: List[Record], duration_s: float) -> Dict[str, Any]:
    ok = [r for r in records if r.ok]
    replicas = Counter(r.replica for r in ok)
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "req_s": len(ok) / duration_s if duration_s else float("nan"),
        "p50_ms": percentile((r.latency_s for r in ok), 50) * 1000,
        "p99_ms": percentile((r.latency_s for r in ok), 99) * 1000,
        "affinity": affinity(ok),
        "busiest_share": max(replicas.values()) / len(ok) if ok else float("nan"),
        "per_replica": dict(replicas),
    }


def per_second(records: List[Record], t0: float) -> List[Dict[str, Any]]:
    """Per-second timeline: requests, failures and affinity of each second."""
    buckets: Dict[int, List[Record]] = defaultdict(list)
    for r in records:
        buckets[int(r.start - t0)].append(r)
    return [
        {
            "t": t,
            "requests": len(rs),
            "failed": sum(not r.ok for r in rs),
            "affinity": affinity(rs),
        }
        for t, rs in sorted(buckets.items())
    ]


# --------------------------------------------------------------------------- #
# Faults on a local cluster (the processes this run started)
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def local_serve(**init_kwargs) -> Iterator[int]:
    """A local Ray cluster with Serve on a free port; yields the port."""
    ray.init(
        address="local", include_dashboard=False, log_to_driver=False, **init_kwargs
    )
    port = find_free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def kill_controller() -> None:
    """Kill the Serve controller; Ray restarts it (it is restartable)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    ray.kill(controller, no_restart=False)


def kill_actor(name: str, namespace: str = SERVE_NAMESPACE) -> None:
    """Kill a named actor for good (Serve recreates what it owns)."""
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


def replica_actor_names(app: str, deployment: str) -> List[str]:
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(prefix)
    )


def write_json(path: Optional[str], result: Dict[str, Any]) -> None:
    """Write a result where ``path`` (or ``TEST_OUTPUT_JSON``) says."""
    path = path or os.environ.get("TEST_OUTPUT_JSON")
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
