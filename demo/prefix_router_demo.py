"""Demo: Serve LLM's prefix-aware router next to power of two, on the OpenAI API.

Two Serve LLM OpenAI apps (``build_openai_app`` around bench/sim_llm's simulated
engine) run side by side behind one Serve proxy, 2 replicas each: ``/prefix``
routed by ``PrefixCacheAffinityRouter``, ``/pow2`` by power of two choices. The
engine's prefix KV cache holds about 5 of the 8 system prompts, prefill costs
0.5 ms per uncached token, one prefill at a time: where a request lands decides
what it costs, and one replica alone falls behind.

The same closed-loop users talk to both apps through ``openai.AsyncOpenAI``
(streamed chat): sessions that start with one of the system prompts and grow
turn by turn. Every 5 s one line per router: TTFT p50/p99 (to the first content
chunk), hit rate (usage ``cached_tokens / prompt_tokens``), requests per replica
(the engines' counters) and failed requests. With the users still talking, the
prefix app gets faults, each announced: a replica killed for good, the Serve
controller killed, the prefix tree killed (the runtime deployment actor holding
the router's shared tree). Then the prefix app is deleted while pow2 keeps
serving (its tree actor is dead, no actor of the app left) and Serve is shut
down (no Serve actor left). Report: out/demo/report.md and report.json (per
router TTFT p50/p99, hit rate, requests per replica, failed/hung per phase) and
out/demo/timeline.png (TTFT p50 and hit rate per second, phases marked).

Noise is cut at its source (see ``quiet``): library loggers at WARNING, Ray's
"task will be retried" messages off, and the replicas' output, among it the
traceback Serve LLM's telemetry logs on engine start (it imports vLLM, absent
here), stays in Ray's log files (``log_to_driver=False``).

Usage: .venv/bin/python demo/prefix_router_demo.py [--users 12] [--phase-s 20]
"""

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import threading
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # "PyTorch was not found"
# The driver's calls to a killed controller are retried: don't print each retry.
os.environ.setdefault("RAY_enable_output_error_log_if_still_retry", "0")
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import openai  # noqa: E402
from pydantic.warnings import PydanticDeprecationWarning  # noqa: E402

from bench import toolkit  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray._common.test_utils import wait_for_condition  # noqa: E402
from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve._private.constants import SERVE_NAMESPACE  # noqa: E402
from ray.serve._private.utils import get_deployment_actor_name  # noqa: E402

warnings.filterwarnings("ignore", category=PydanticDeprecationWarning)
APPS, DEPLOYMENT = ("prefix", "pow2"), "SimLLMServer:sim-model"
TREE = get_deployment_actor_name(
    DeploymentID(DEPLOYMENT, "prefix"), "prefix-tree", None
)
ENGINE = {  # bench/sim_llm/engine.py SimEngineConfig
    "num_blocks": 320,  # 16-token blocks: ~5 system prompts and their sessions
    "prefill_ms_per_token": 0.5,  # per uncached prompt token (a prompt: 0.45 s)
    "serialize_prefill": True,  # one prefill at a time per replica
    "overhead_ms": 5.0,
    "decode_ms_per_token": 10.0,
    "max_num_seqs": 8,
    "tokens_per_chunk": 8,
}
VOCAB = "ray serve replica router prefix cache token model batch queue actor".split()
SYSTEM_PROMPTS = [  # ~900 tokens each
    f"You are assistant {k}. " + " ".join(random.Random(k).choices(VOCAB, k=900))
    for k in range(8)
]
TICK_S, HUNG_S, WARMUP_S, DELETE_S = 5.0, 20.0, 12.0, 10.0


class User:
    """A closed-loop user: chat sessions of 3-8 turns, one after another."""

    def __init__(self, seed: int):
        self.rng, self.messages, self.turns = random.Random(seed), [], 0

    def ask(self) -> list:
        if len(self.messages) // 2 >= self.turns:  # a new session
            system = self.rng.choice(SYSTEM_PROMPTS)
            self.messages = [{"role": "system", "content": system}]
            self.turns = self.rng.randint(3, 8)
        text = " ".join(self.rng.choices(VOCAB, k=20))
        self.messages.append({"role": "user", "content": text})
        return list(self.messages)

    def answered(self, reply) -> None:
        if reply is None:
            self.messages.pop()  # no answer: the user asks something else
        else:
            self.messages.append({"role": "assistant", "content": reply})


class Load:
    """The users of one app, and every request they sent."""

    def __init__(self, app: str, port: int, users: int):
        self.users, self.records, self.done = [User(u) for u in range(users)], [], False
        self.client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/{app}/v1",
            api_key="demo",
            max_retries=0,
            timeout=HUNG_S + 5,
        )

    async def call(self, caller: int, i: int) -> toolkit.Record:
        """One streamed chat turn (the ``call`` of toolkit.closed_loop)."""
        user, record = self.users[caller], toolkit.Record(time.monotonic(), 0.0, False)
        try:
            async with asyncio.timeout(HUNG_S):
                record.extra = await self._chat(user.ask())
            record.ok = True
        except Exception as e:  # noqa: BLE001 (a failed request is a result)
            record.extra = {"error": "hung" if isinstance(e, TimeoutError) else repr(e)}
        user.answered(record.extra.pop("reply", None))
        self.records.append(record)
        if not record.ok:
            await asyncio.sleep(0.5)  # the user's pause before asking again
        return record

    async def _chat(self, messages: list) -> dict:
        start, first, parts, usage = time.monotonic(), None, [], None
        stream = await self.client.chat.completions.create(
            model="sim-model",
            messages=messages,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        if usage is None:  # e.g. the replica died mid-answer
            raise RuntimeError("stream ended without its usage chunk")
        cached = usage.prompt_tokens_details.cached_tokens
        reply = "".join(parts)
        return dict(
            ttft=first - start, prompt=usage.prompt_tokens, cached=cached, reply=reply
        )


def figures(records: list) -> dict:
    """TTFT, hit rate and failures of some requests."""
    ok = [r for r in records if r.ok]
    ttft = [r.extra["ttft"] * 1e3 for r in ok]
    prompt = sum(r.extra["prompt"] for r in ok)
    errors = Counter(r.extra["error"][:80] for r in records if not r.ok)
    return {
        "requests": len(records),
        "failed": sum(errors.values()) - errors["hung"],
        "hung": errors.pop("hung", 0),
        "ttft_p50_ms": toolkit.percentile(ttft, 50),
        "ttft_p99_ms": toolkit.percentile(ttft, 99),
        "hit_rate": sum(r.extra["cached"] for r in ok) / prompt if prompt else 0.0,
        "errors": dict(errors),
    }


class EngineCounters(threading.Thread):
    """Requests per replica, polled from the engines (sim_llm's fetch_sim_stats)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.apps, self.stop = set(APPS), threading.Event()
        self.seen = {a: {} for a in APPS}  # replica -> requests, killed ones too
        self.current = {a: [] for a in APPS}  # the replicas of the last poll

    def run(self) -> None:
        from sim_llm.app import fetch_sim_stats

        while not self.stop.wait(2.0):
            for app in list(self.apps):
                try:
                    stats = fetch_sim_stats(app)
                except Exception:  # noqa: BLE001 (a replica is down: next poll)
                    continue
                self.seen[app].update({s["replica_id"]: s["requests"] for s in stats})
                self.current[app] = [s["replica_id"] for s in stats]


def prefix_status():
    return serve.status().applications["prefix"].deployments[DEPLOYMENT]


def tree_id():
    try:
        return ray.get_actor(TREE, namespace=SERVE_NAMESPACE)._actor_id.hex()[:8]
    except ValueError:
        return None


def serve_actors(app: str = "") -> list:
    marks = (f"SERVE_REPLICA::{app}#", f"SERVE_DEPLOYMENT_ACTOR::{app}::")
    actors = ray.util.list_named_actors(all_namespaces=True)
    names = [a["name"] for a in actors if a["namespace"] == SERVE_NAMESPACE]
    return [n for n in names if not app or n.startswith(marks)]


def timed_wait(condition, timeout: float = 60) -> float:
    start = time.monotonic()
    wait_for_condition(condition, timeout=timeout, retry_interval_ms=200)
    return round(time.monotonic() - start, 1)


def kill_replica() -> dict:
    """ray.kill a replica of the prefix app (no_restart): Serve replaces it"""
    before = set(toolkit.replica_actor_names("prefix", DEPLOYMENT))
    victim = sorted(before)[0]
    toolkit.kill_actor(victim)

    def replaced():
        names = set(toolkit.replica_actor_names("prefix", DEPLOYMENT))
        running = prefix_status().replica_states.get("RUNNING", 0)
        return victim not in names and names - before and running == 2

    return {"killed": victim.split("#")[-1], "replaced_s": timed_wait(replaced)}


def kill_controller() -> dict:
    """ray.kill the Serve controller: Ray restarts it"""
    tree = tree_id()
    toolkit.kill_controller()
    back_s = timed_wait(
        lambda: serve.status().applications["prefix"].status == "RUNNING"
    )
    return {"back_s": back_s, "same_tree_after": tree_id() == tree}


def kill_tree() -> dict:
    """ray.kill the prefix-tree deployment actor: the controller recreates it"""
    old = tree_id()
    toolkit.kill_actor(TREE)

    def recreated():
        state = prefix_status().deployment_actor_states.get("prefix-tree")
        return tree_id() not in (None, old) and state == "RUNNING"

    return {"old": old, "recreated_s": timed_wait(recreated), "new": tree_id()}


def delete_prefix() -> dict:
    """serve.delete("prefix"); pow2's users go on"""
    tree = ray.get_actor(TREE, namespace=SERVE_NAMESPACE)
    start = time.monotonic()
    serve.delete("prefix")
    out = {"delete_s": round(time.monotonic() - start, 1), "tree_dead": True}
    try:
        ray.get(tree.__ray_ready__.remote(), timeout=30)
        out["tree_dead"] = False
    except ray.exceptions.RayActorError:
        pass
    out["gone_s"] = timed_wait(lambda: not serve_actors("prefix"), timeout=30)
    return {**out, "app_actors_left": serve_actors("prefix")}


def shutdown_serve() -> dict:
    serve.shutdown()
    gone_s = timed_wait(lambda: not serve_actors(), timeout=30)
    return {"gone_s": gone_s, "serve_actors_left": serve_actors()}


FAULTS = {"replica kill": kill_replica, "controller kill": kill_controller}
FAULTS.update({"tree kill": kill_tree, "delete": delete_prefix})


async def ticker(loads: dict, counters, phase_at, done: asyncio.Event) -> None:
    """Every TICK_S: one line per router about the requests of the last TICK_S."""
    seen, last = dict.fromkeys(loads, 0), {app: {} for app in loads}
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), TICK_S)
        for app, load in loads.items():
            new, seen[app] = load.records[seen[app] :], len(load.records)
            if load.done and not new:
                continue
            now = dict(counters.seen[app])
            per = [
                f"{r[:4]}:{now[r] - last[app].get(r, 0)}" for r in counters.current[app]
            ]
            last[app], f = now, figures(new)
            print(
                f"[{phase_at():15}] {app:6} TTFT p50 {f['ttft_p50_ms']:5.0f} ms "
                f"p99 {f['ttft_p99_ms']:5.0f} ms  hit {f['hit_rate']:4.0%}  "
                f"per replica {' '.join(per):19} failed {f['failed'] + f['hung']}",
                flush=True,
            )


async def run(args, port: int) -> dict:
    phases = {"warmup": WARMUP_S, "baseline": args.phase_s}
    phases.update(dict.fromkeys(list(FAULTS)[:3], args.phase_s), delete=DELETE_S)
    starts = dict(
        zip(phases, [sum(list(phases.values())[:i]) for i in range(len(phases))])
    )
    loads = {app: Load(app, port, args.users) for app in APPS}
    counters = EngineCounters()
    counters.start()
    t0, done, events = time.monotonic(), asyncio.Event(), {}

    def phase_at(t=None) -> str:
        return [n for n, s in starts.items() if (t or time.monotonic()) - t0 >= s][-1]

    tasks = {  # the prefix app's users stop when it is deleted, pow2's after
        app: asyncio.create_task(
            toolkit.closed_loop(
                load.call,
                args.users,
                starts["delete"] + (DELETE_S if app == "pow2" else 0),
                timeout_s=HUNG_S + 10,
            )
        )
        for app, load in loads.items()
    }
    tick = asyncio.create_task(ticker(loads, counters, phase_at, done))
    print(f"=== phase warmup: {args.users} users per app start chatting ===")
    for name in list(phases)[1:]:
        await asyncio.sleep(max(0.0, t0 + starts[name] - time.monotonic()))
        if name == "delete":
            await tasks["prefix"]
            loads["prefix"].done = True
            counters.apps.discard("prefix")
        what = f": {FAULTS[name].__doc__}" if name in FAULTS else ""
        print(
            f"=== phase {name} at {time.monotonic() - t0:.0f} s{what} ===", flush=True
        )
        if name in FAULTS:
            events[name] = await asyncio.to_thread(FAULTS[name])
            print(f"    {name}: {events[name]}", flush=True)
    await tasks["pow2"]
    done.set()
    await tick
    counters.stop.set()
    print("=== shutdown (no traffic) ===", flush=True)
    events["shutdown"] = await asyncio.to_thread(shutdown_serve)
    print(f"    shutdown: {events['shutdown']}", flush=True)
    routers = {}
    for app, load in loads.items():
        by_phase, by_second = defaultdict(list), defaultdict(list)
        for r in load.records:  # by when they ended (a kill fails what is running)
            by_phase[phase_at(r.start + r.latency_s)].append(r)
            by_second[int(r.start + r.latency_s - t0)].append(r)
        routers[app] = {
            "after_warmup": figures(sum((by_phase[n] for n in list(phases)[1:]), [])),
            "phases": {n: figures(by_phase[n]) for n in phases if by_phase[n]},
            "requests_per_replica": counters.seen[app],
            "timeline": [
                dict(t=t, **figures(rs)) for t, rs in sorted(by_second.items())
            ],
        }
    return {
        "engine": ENGINE,
        "users": args.users,
        "phases": phases,
        "events": events,
        "routers": routers,
    }


def write_report(data: dict, out: Path) -> str:
    lines = ["# Prefix-aware router vs power of two (Serve LLM, OpenAI API)", ""]
    for app, d in data["routers"].items():
        a = d["after_warmup"]
        lines += [
            f"## {app}: TTFT p50 {a['ttft_p50_ms']:.0f} ms, p99 {a['ttft_p99_ms']:.0f}"
            f" ms, hit rate {a['hit_rate']:.1%} (after warmup)",
            "",
            f"requests per replica: {d['requests_per_replica']}",
            "",
            "| phase | requests | failed | hung | TTFT p50 ms | p99 ms | hit rate |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {n} | {f['requests']} | {f['failed']} | {f['hung']} | "
            f"{f['ttft_p50_ms']:.0f} | {f['ttft_p99_ms']:.0f} | {f['hit_rate']:.1%} |"
            for n, f in d["phases"].items()
        ]
        lines.append("")
    lines += ["## Faults on the prefix app", ""]
    lines += [f"- {name}: {e}" for name, e in data["events"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    toolkit.write_json(str(out / "report.json"), data)
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6))
    for app, d in data["routers"].items():
        t = [p["t"] for p in d["timeline"]]
        top.plot(t, [p["ttft_p50_ms"] for p in d["timeline"]], label=app)
        bottom.plot(t, [p["hit_rate"] for p in d["timeline"]], label=app)
    start = 0
    for i, (name, length) in enumerate(data["phases"].items()):
        for ax in (top, bottom):
            ax.axvspan(start, start + length, color="0.88" if i % 2 else "1.0")
        top.text(start + 0.5, 1.02, name, transform=top.get_xaxis_transform())
        start += length
    top.set(ylabel="TTFT p50 (ms)", yscale="log")
    bottom.set(
        ylabel="hit rate", xlabel="seconds since the users started", ylim=(0, 1.05)
    )
    top.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def quiet() -> None:
    """Library loggers to WARNING (Serve LLM sets the root logger to INFO)."""
    for name in ("", "httpx", "httpx2", "matplotlib", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in (
        "ray._private.authentication.authentication_token_setup",  # "token auth on"
        "ray.llm._internal.common.utils.import_utils",  # "Could not import torch"
        "ray.serve",  # the stats handle's "replica has died": the demo says it
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=12, help="users per app")
    parser.add_argument("--phase-s", type=float, default=20, help="seconds a phase")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    quiet()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        port = toolkit.find_free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        from sim_llm.app import build_sim_openai_app

        quiet()
        serve.run_many(
            [
                serve.RunTarget(
                    build_sim_openai_app(
                        num_replicas=2, router=app, engine_config=ENGINE
                    ),
                    name=app,
                    route_prefix=f"/{app}",
                )
                for app in APPS
            ]
        )
        up_s = time.monotonic() - began
        print(f"apps up at http://127.0.0.1:{port}/{{prefix,pow2}} in {up_s:.0f} s")
        data = asyncio.run(run(args, port))
        data["ray_logs"] = ray._private.worker._global_node.get_logs_dir_path()
    finally:
        serve.shutdown()
        ray.shutdown()
    data["wall_s"] = round(time.monotonic() - began, 1)
    print("\n" + write_report(data, args.out))
    plot(data, args.out / "timeline.png")
    print(f"\nwrote {args.out}/report.md, report.json, timeline.png")
    print(f"{data['wall_s']} s in all (apps up in {up_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
