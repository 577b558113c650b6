"""A cache-bound simulated model, for routing benchmarks (fork tooling).

``CacheSimModel`` stands in for an LLM engine with a prefix KV cache:

* a prompt is cut into blocks of ``block_chars`` characters, each identified
  by a chained hash (of the previous block's hash and its text), so a block
  is cached only if everything before it is;
* an LRU of ``cache_blocks`` blocks per replica;
* ``slots`` sequences run at once; the others queue (so load is real);
* a request costs ``prefill_ms_per_block`` per uncached block plus
  ``decode_ms``; it answers how long it queued for a slot and how long it
  spent in the engine in all, so the bench can tell the engine's share of
  the latency from Serve's and the router's.

Requests only need a ``prompt`` attribute, as the prefix-aware router reads.
"""

import asyncio
import base64
import random
import string
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

from ray import serve


@dataclass(frozen=True)
class EngineConfig:
    cache_blocks: int = 640
    block_chars: int = 64
    slots: int = 4
    decode_ms: float = 20.0
    prefill_ms_per_block: float = 1.0


class CacheSimModel:
    def __init__(self, config: EngineConfig):
        self._config = config
        self._lru: "OrderedDict[int, None]" = OrderedDict()
        self._slots = asyncio.Semaphore(config.slots)
        self._replica = serve.get_replica_context().replica_id.to_full_id_str()

    def _blocks(self, text: str) -> List[int]:
        size = self._config.block_chars
        hashes, h = [], 0
        for i in range(len(text) // size):
            h = hash((h, text[i * size : (i + 1) * size]))
            hashes.append(h)
        return hashes

    async def __call__(self, request) -> dict:
        blocks = self._blocks(request.prompt)
        arrived = time.monotonic()
        async with self._slots:
            started = time.monotonic()
            hit = 0
            for h in blocks:
                if h not in self._lru:
                    break
                hit += 1
            miss = len(blocks) - hit
            await asyncio.sleep(
                (miss * self._config.prefill_ms_per_block + self._config.decode_ms)
                / 1000
            )
            for h in blocks:
                self._lru[h] = None
                self._lru.move_to_end(h)
            while len(self._lru) > self._config.cache_blocks:
                self._lru.popitem(last=False)
        return {
            "replica": self._replica,
            "hit": hit,
            "blocks": len(blocks),
            "wait_s": started - arrived,
            "engine_s": time.monotonic() - arrived,
        }


def deployment(
    name: str,
    router: Optional[str],
    num_replicas: int = 2,
    config: Optional[EngineConfig] = EngineConfig(),
    router_kwargs: Optional[dict] = None,
    model: type = CacheSimModel,
):
    """``model`` as a Serve application, routed by ``router`` (None: pow2).

    ``config`` is the model's constructor argument (None: it takes none).
    """
    from ray.serve.config import RequestRouterConfig

    options = dict(
        name=name,
        num_replicas=num_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 0},
    )
    if router is not None:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=router,
            request_router_kwargs=router_kwargs or {},
        )
    model = serve.deployment(model).options(**options)
    return model.bind() if config is None else model.bind(config)


class PromptMix:
    """Prompts that share one of ``num_prefixes`` prefixes, plus a unique suffix.

    ``skew`` 0 picks prefixes uniformly; otherwise by Zipf with exponent
    ``skew``. ``num_prefixes=1`` is one shared system prompt.
    """

    def __init__(
        self,
        num_prefixes: int = 16,
        prefix_chars: int = 4000,
        suffix_chars: int = 200,
        skew: float = 0.0,
        seed: int = 0,
    ):
        rng = random.Random(seed)
        letters = string.ascii_letters
        self.prefixes = [
            "".join(rng.choice(letters) for _ in range(prefix_chars))
            for _ in range(num_prefixes)
        ]
        self.weights = [1 / (k + 1) ** skew for k in range(num_prefixes)]
        self.suffix_chars = suffix_chars
        self._rng = random.Random(seed + 1)

    def next(self) -> SimpleNamespace:
        index = self._rng.choices(range(len(self.prefixes)), self.weights)[0]
        # Random bytes in base64: as unique as random letters, at a fraction
        # of the load generator's CPU (it shares the driver with the router).
        raw = self._rng.randbytes(self.suffix_chars * 3 // 4 + 3)
        suffix = base64.b64encode(raw).decode()[: self.suffix_chars]
        return SimpleNamespace(prompt=self.prefixes[index] + suffix, key=str(index))

    def oracle_hit_rate(self, block_chars: int) -> float:
        """Hit rate if every prefix were always cached where it is sent."""
        total = (len(self.prefixes[0]) + self.suffix_chars) // block_chars
        return (len(self.prefixes[0]) // block_chars) / total
