"""A simulated LLM engine for Ray Serve LLM (CPU only, no model, no vLLM).

``SimulatedEngine`` implements ``ray.llm._internal.serve.core.engine.protocol.LLMEngine``
and yields exactly what ``VLLMEngine`` yields (``engines/vllm/vllm_engine.py``):

* non-streaming: one ``ChatCompletionResponse`` / ``CompletionResponse`` (Serve LLM's
  own wrapper classes from ``core/configs/openai_api_models.py``, so the ingress's
  ``NON_STREAMING_RESPONSE_TYPES`` check matches);
* streaming: OpenAI SSE strings ``"data: <json>\\n\\n"`` (a role chunk, one chunk per
  ``tokens_per_chunk`` output tokens, the ``finish_reason`` on the last token chunk,
  a usage chunk when ``stream_options.include_usage``), then ``"data: [DONE]\\n\\n"``;
* errors: one ``ErrorResponse``.

Model of a replica (all knobs in ``SimEngineConfig``, see there for defaults):

* Tokenization (``tokenizer``):
    - ``"regex"`` (default): ``\\w+|[^\\w\\s]`` pieces (a word or one punctuation
      character is one token); token id = crc32 of the piece. Deterministic across
      processes, no model files, ~1 us per token.
    - ``"chars"``: one token per ``chars_per_token`` characters (id = crc32 of chunk).
    - a path to a directory with ``tokenizer.json`` (e.g. the one written by
      ``make_tokenizer.py``): loaded with the ``tokenizers`` library (not
      transformers), ``encode(text, add_special_tokens=False)`` - the same count the
      upstream benchmark client uses, so ``--isl`` means engine tokens.
  Chat prompts are the concatenation of the per-message token lists (each message's
  content tokenized on its own and memoized), plus ``template_tokens_per_message``
  role-marker tokens per message (default 0, so an empty message has 0 tokens).
  Tokenizing per message keeps a shared prefix (system prompt, earlier turns)
  token-identical across requests, like a chat template with special tokens does.
* Prefix KV cache: the prompt is cut into full blocks of ``block_size`` tokens; block
  i's hash is ``hash((hash_{i-1}, tokens of block i))`` (chained, like vLLM); an LRU
  of ``num_blocks`` block hashes. A prompt's cached prefix is the longest run of
  leading blocks present, capped at ``prompt_tokens - 1`` (vLLM always recomputes
  the last prompt token). The lookup happens when the sequence gets a slot; the
  prompt's blocks are inserted (and touched) when its prefill ends; with
  ``cache_output_tokens`` the full blocks of prompt + generated text are inserted when
  it finishes (the next turn of a conversation reuses them, as in vLLM). Blocks in
  use are not pinned (the LRU may evict them; a simplification).
* Timing: a sequence waits for one of ``max_num_seqs`` slots (asyncio.Semaphore, FIFO),
  then prefill takes ``overhead_ms + uncached_prompt_tokens * prefill_ms_per_token``
  and yields the first output token (TTFT); every further output token takes
  ``decode_ms_per_token`` (deadline-based, no drift). With ``serialize_prefill`` the
  prefills of one replica run one at a time (models a GPU busy with a prefill).
* Output: ``max_completion_tokens`` / ``max_tokens`` tokens (``default_max_tokens`` if
  unset), capped by ``max_model_len``; text is a deterministic cycle of words;
  ``finish_reason="length"``. ``usage`` carries ``prompt_tokens``,
  ``completion_tokens``, ``total_tokens`` and ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import re
import time
import uuid
import zlib
from typing import Any, AsyncGenerator, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.engine.protocol import LLMEngine

# Keys that Serve LLM itself may write into llm_config.engine_kwargs (DP, KV-aware
# routing, P/D, validators). They mean nothing to the simulator and are ignored.
_SERVE_OWNED_ENGINE_KWARGS = {
    "data_parallel_rank",
    "data_parallel_size",
    "kv_events_config",
    "kv_transfer_config",
    "enable_prefix_caching",
    "disable_log_stats",
    "load_format",
}


class SimEngineConfig(BaseModel):
    """Simulated-engine parameters. Pass them as ``LLMConfig(engine_kwargs={...})``."""

    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(16, gt=0, description="tokens per KV block")
    num_blocks: int = Field(
        4096, ge=0, description="LRU capacity in blocks per replica"
    )
    overhead_ms: float = Field(
        10.0, ge=0, description="fixed prefill cost per sequence"
    )
    prefill_ms_per_token: float = Field(
        0.25, ge=0, description="per uncached prompt token"
    )
    decode_ms_per_token: float = Field(
        8.0, ge=0, description="per output token after the first"
    )
    max_num_seqs: int = Field(8, gt=0, description="concurrent sequences per replica")
    serialize_prefill: bool = Field(
        False, description="one prefill at a time per replica"
    )
    default_max_tokens: int = Field(16, gt=0, description="output tokens when unset")
    max_model_len: Optional[int] = Field(None, gt=0, description="cap on prompt+output")
    tokenizer: str = Field("regex", description='"regex", "chars" or a tokenizer dir')
    chars_per_token: int = Field(4, gt=0, description='for tokenizer="chars"')
    template_tokens_per_message: int = Field(
        0, ge=0, description="role tokens per message"
    )
    cache_output_tokens: bool = Field(
        True, description="cache prompt+output blocks at end"
    )
    tokens_per_chunk: int = Field(
        1, gt=0, description="output tokens per streamed chunk"
    )
    output_words: List[str] = Field(
        default_factory=lambda: [
            "sim",
            "token",
            "lorem",
            "ipsum",
            "dolor",
            "sit",
            "amet",
        ],
        description="output text cycles through these words",
    )

    @field_validator("output_words")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("output_words must not be empty")
        return v

    @classmethod
    def from_engine_kwargs(
        cls, engine_kwargs: Optional[Dict[str, Any]]
    ) -> "SimEngineConfig":
        kwargs = {
            k: v
            for k, v in (engine_kwargs or {}).items()
            if k not in _SERVE_OWNED_ENGINE_KWARGS
        }
        return cls.model_validate(kwargs)


# ----------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------
_PIECE_RE = re.compile(r"\w+|[^\w\s]")


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


class _Tokenizer:
    """Deterministic text -> token ids, memoized per distinct text."""

    def __init__(self, cfg: SimEngineConfig):
        self.kind = cfg.tokenizer
        self._hf = None
        if cfg.tokenizer == "regex":
            self._encode = lambda text: [_crc(p) for p in _PIECE_RE.findall(text)]
        elif cfg.tokenizer == "chars":
            n = cfg.chars_per_token
            self._encode = lambda text: [
                _crc(text[i : i + n]) for i in range(0, len(text), n)
            ]
        else:
            path = cfg.tokenizer
            if os.path.isdir(path):
                path = os.path.join(path, "tokenizer.json")
            if not os.path.exists(path):
                raise ValueError(f"tokenizer file not found: {path}")
            from tokenizers import Tokenizer  # only needed for this mode

            self._hf = Tokenizer.from_file(path)
            self._encode = lambda text: self._hf.encode(
                text, add_special_tokens=False
            ).ids
        self.encode = functools.lru_cache(maxsize=8192)(self._encode_tuple)

    def _encode_tuple(self, text: str) -> Tuple[int, ...]:
        return tuple(self._encode(text)) if text else ()


# ----------------------------------------------------------------------------------
# Prefix cache
# ----------------------------------------------------------------------------------
class PrefixBlockCache:
    """Chained block hashes in an LRU of fixed capacity (in blocks)."""

    def __init__(self, block_size: int, num_blocks: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._lru: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self.evictions = 0

    def block_hashes(self, tokens: Sequence[int]) -> List[int]:
        bs = self.block_size
        out, prev = [], 0
        for i in range(0, len(tokens) - bs + 1, bs):
            prev = hash((prev, tuple(tokens[i : i + bs])))
            out.append(prev)
        return out

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading blocks present (touches them in the LRU)."""
        n = 0
        for h in hashes:
            if h not in self._lru:
                break
            self._lru.move_to_end(h)
            n += 1
        return n

    def insert(self, hashes: Sequence[int]) -> None:
        if self.num_blocks == 0:
            return
        lru = self._lru
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                if len(lru) > self.num_blocks:
                    lru.popitem(last=False)
                    self.evictions += 1

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)


# ----------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------
class _Seq:
    """One sequence (one choice) of a request."""

    __slots__ = ("index", "prompt", "max_tokens", "cached", "text_parts", "n_out")

    def __init__(self, index: int, prompt: Tuple[int, ...], max_tokens: int):
        self.index = index
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.cached = 0
        self.text_parts: List[str] = []
        self.n_out = 0


class SimulatedEngine(LLMEngine):
    """LLMEngine that simulates prefill/decode timing and a block prefix cache."""

    def __init__(self, llm_config: LLMConfig):
        self._llm_config = llm_config
        self.config = SimEngineConfig.from_engine_kwargs(llm_config.engine_kwargs)
        self._model_id = llm_config.model_id
        self._tok: Optional[_Tokenizer] = None
        self._cache = PrefixBlockCache(self.config.block_size, self.config.num_blocks)
        self._slots: Optional[asyncio.Semaphore] = None
        self._prefill_lock: Optional[asyncio.Lock] = None
        self._running = 0  # sequences holding a slot
        self._waiting = 0  # sequences queued for a slot
        self.reset_stats()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self):
        self._tok = _Tokenizer(self.config)
        self._slots = asyncio.Semaphore(self.config.max_num_seqs)
        self._prefill_lock = asyncio.Lock()

    def routing_stats(self) -> dict:
        return {}

    async def resolve_lora(self, lora_model):
        return None

    async def check_health(self) -> None:
        return None

    async def reset_prefix_cache(self) -> None:
        self._cache.clear()

    # --- stats -----------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero the counters (the cache content and in-flight sequences are kept)."""
        self._stats = {
            "requests": 0,  # chat/completions requests
            "sequences": 0,  # choices (n * prompts); one cache lookup each
            "prompt_tokens": 0,
            "hit_tokens": 0,
            "output_tokens": 0,
            "queue_wait_ms_total": 0.0,
            "engine_ttft_ms_total": 0.0,  # arrival at the engine -> first token
            "max_waiting": 0,
        }
        self._evictions_at_reset = self._cache.evictions
        self._stats_since = time.time()

    def stats(self) -> Dict[str, Any]:
        s = dict(self._stats)
        n = s["sequences"]
        s["lookups"] = n
        s["hit_rate"] = (
            s["hit_tokens"] / s["prompt_tokens"] if s["prompt_tokens"] else 0.0
        )
        s["mean_queue_wait_ms"] = s.pop("queue_wait_ms_total") / n if n else 0.0
        s["mean_engine_ttft_ms"] = s.pop("engine_ttft_ms_total") / n if n else 0.0
        s["cache_blocks_used"] = len(self._cache)
        s["cache_blocks_capacity"] = self._cache.num_blocks
        s["evictions"] = self._cache.evictions - self._evictions_at_reset
        s["running"] = self._running
        s["waiting"] = self._waiting
        s["since_s"] = round(time.time() - self._stats_since, 3)
        return s

    # --- prompt handling -------------------------------------------------------------
    @staticmethod
    def _content_text(content: Any) -> str:
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, dict):
            if isinstance(content.get("text"), str):
                return content["text"]
            return SimulatedEngine._content_text(content.get("content"))
        if isinstance(content, (list, tuple)):
            return "".join(SimulatedEngine._content_text(p) for p in content)
        text = getattr(content, "text", None)
        return text if isinstance(text, str) else ""

    def _chat_prompt_tokens(self, messages: List[Any]) -> Tuple[int, ...]:
        toks: List[int] = []
        k = self.config.template_tokens_per_message
        for m in messages:
            if not isinstance(m, dict):
                m = m.model_dump() if hasattr(m, "model_dump") else dict(m)
            if k:
                # Negative ids never collide with a tokenizer's vocabulary.
                toks.extend([-(1 + _crc(str(m.get("role"))) % 1000)] * k)
            toks.extend(self._tok.encode(self._content_text(m.get("content"))))
        return tuple(toks)

    def _completion_prompts(self, prompt: Any) -> List[Tuple[int, ...]]:
        if prompt is None:
            return [()]
        if isinstance(prompt, str):
            return [self._tok.encode(prompt)]
        if isinstance(prompt, list):
            if not prompt:
                return [()]
            if all(isinstance(p, int) for p in prompt):
                return [tuple(prompt)]
            out = []
            for p in prompt:
                if isinstance(p, str):
                    out.append(self._tok.encode(p))
                elif isinstance(p, list):
                    out.append(tuple(int(x) for x in p))
                else:
                    raise ValueError(f"unsupported prompt element type {type(p)}")
            return out
        raise ValueError(f"unsupported prompt type {type(prompt)}")

    def _max_tokens(self, requested: Optional[int], prompt_len: int) -> int:
        n = requested if requested else self.config.default_max_tokens
        if self.config.max_model_len is not None:
            room = self.config.max_model_len - prompt_len
            if room <= 0:
                raise ValueError(
                    f"This model's maximum context length is {self.config.max_model_len}"
                    f" tokens; the prompt has {prompt_len} tokens."
                )
            n = min(n, room)
        return max(1, int(n))

    def _word(self, i: int) -> str:
        words = self.config.output_words
        w = words[i % len(words)]
        return w if i == 0 else " " + w

    # --- the simulated sequence ------------------------------------------------------
    async def _prefill(self, seq: _Seq, t_arrival: float, t_slot: float) -> None:
        cfg = self.config
        hashes = self._cache.block_hashes(seq.prompt)
        hit_blocks = self._cache.match(hashes)
        seq.cached = min(hit_blocks * cfg.block_size, max(len(seq.prompt) - 1, 0))
        st = self._stats
        st["prompt_tokens"] += len(seq.prompt)
        st["hit_tokens"] += seq.cached
        st["queue_wait_ms_total"] += (t_slot - t_arrival) * 1000.0
        uncached = len(seq.prompt) - seq.cached
        await asyncio.sleep(
            (cfg.overhead_ms + uncached * cfg.prefill_ms_per_token) / 1000.0
        )
        self._cache.insert(hashes)

    async def _run_seq(self, seq: _Seq) -> AsyncGenerator[Tuple[str, int], None]:
        """Async generator of (text, n_tokens) chunks for one sequence."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        t_arrival = loop.time()
        self._waiting += 1
        self._stats["max_waiting"] = max(self._stats["max_waiting"], self._waiting)
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            t_slot = loop.time()
            if cfg.serialize_prefill:
                async with self._prefill_lock:
                    await self._prefill(seq, t_arrival, t_slot)
            else:
                await self._prefill(seq, t_arrival, t_slot)
            t_first = loop.time()
            self._stats["engine_ttft_ms_total"] += (t_first - t_arrival) * 1000.0

            # Token 0 at t_first (end of prefill); token i at t_first + i * decode.
            dt = cfg.decode_ms_per_token / 1000.0
            i = 0
            while i < seq.max_tokens:
                n = 1 if i == 0 else min(cfg.tokens_per_chunk, seq.max_tokens - i)
                if i > 0:
                    delay = t_first + (i + n - 1) * dt - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                text = "".join(self._word(j) for j in range(i, i + n))
                seq.text_parts.append(text)
                i += n
                seq.n_out = i
                self._stats["output_tokens"] += n
                yield text, n

            if cfg.cache_output_tokens:
                full = seq.prompt + self._tok.encode("".join(seq.text_parts))
                self._cache.insert(self._cache.block_hashes(full))
        finally:
            self._running -= 1
            self._slots.release()

    async def _run_all(
        self, seqs: List[_Seq]
    ) -> AsyncGenerator[Tuple[_Seq, str, int, bool], None]:
        """Run sequences concurrently; yield (seq, text, n_tokens, is_last) chunks."""
        self._stats["requests"] += 1
        self._stats["sequences"] += len(seqs)
        if len(seqs) == 1:  # the common case: no extra task, no queue
            seq = seqs[0]
            async for text, n in self._run_seq(seq):
                yield seq, text, n, seq.n_out >= seq.max_tokens
            return

        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def drain(seq: _Seq):
            try:
                async for text, n in self._run_seq(seq):
                    await queue.put((seq, text, n, seq.n_out >= seq.max_tokens))
            finally:
                queue.put_nowait(done)

        tasks = [asyncio.ensure_future(drain(s)) for s in seqs]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                    continue
                yield item
            for t in tasks:
                t.result()  # surface exceptions
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()

    # --- response helpers ------------------------------------------------------------
    @staticmethod
    def _usage(seqs: List[_Seq], shared_prompt: bool) -> Dict[str, Any]:
        if shared_prompt:  # n choices over one prompt: the prompt counts once
            prompt = len(seqs[0].prompt)
            cached = max(s.cached for s in seqs)
        else:
            prompt = sum(len(s.prompt) for s in seqs)
            cached = sum(s.cached for s in seqs)
        completion = sum(s.n_out for s in seqs)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    @staticmethod
    def _error(message: str, code: int = 400, type_: str = "BadRequestError"):
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ErrorInfo,
            ErrorResponse,
        )

        return ErrorResponse(error=ErrorInfo(message=message, type=type_, code=code))

    @staticmethod
    def _sse(obj: BaseModel) -> str:
        return f"data: {obj.model_dump_json()}\n\n"

    @staticmethod
    def _request_id(request: Any, prefix: str) -> str:
        rid = getattr(request, "request_id", None) or getattr(request, "rid", None)
        if not isinstance(rid, str) or not rid:
            rid = uuid.uuid4().hex
        return f"{prefix}-{rid}"

    @staticmethod
    def _stream_usage_flags(request: Any) -> Tuple[bool, bool]:
        so = getattr(request, "stream_options", None)
        if so is None:
            return False, False
        if isinstance(so, dict):
            return bool(so.get("include_usage")), bool(so.get("continuous_usage_stats"))
        return bool(getattr(so, "include_usage", False)), bool(
            getattr(so, "continuous_usage_stats", False)
        )

    # --- chat --------------------------------------------------------------------------
    async def chat(self, request, raw_request_info=None):
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionResponse,
            ChatCompletionStreamResponse,
        )

        try:
            prompt = self._chat_prompt_tokens(list(request.messages or []))
            # max_tokens is a deprecated field on the SGLang model; read it raw.
            requested = getattr(
                request, "max_completion_tokens", None
            ) or request.__dict__.get("max_tokens")
            max_tokens = self._max_tokens(requested, len(prompt))
            n = int(getattr(request, "n", 1) or 1)
        except ValueError as e:
            yield self._error(str(e))
            return

        seqs = [_Seq(i, prompt, max_tokens) for i in range(n)]
        rid = self._request_id(request, "chatcmpl")
        created = int(time.time())
        model = request.model or self._model_id

        if not request.stream:
            async for _ in self._run_all(seqs):
                pass
            yield ChatCompletionResponse(
                id=rid,
                created=created,
                model=model,
                choices=[
                    {
                        "index": s.index,
                        "message": {
                            "role": "assistant",
                            "content": "".join(s.text_parts),
                        },
                        "finish_reason": "length",
                    }
                    for s in seqs
                ],
                usage=self._usage(seqs, shared_prompt=True),
            )
            return

        include_usage, continuous = self._stream_usage_flags(request)

        def chunk(choices, usage=None):
            return self._sse(
                ChatCompletionStreamResponse(
                    id=rid, created=created, model=model, choices=choices, usage=usage
                )
            )

        role_sent = set()
        async for s, text, _n, last in self._run_all(seqs):
            if s.index not in role_sent:  # like vLLM: a role chunk, then content
                role_sent.add(s.index)
                yield chunk(
                    [{"index": s.index, "delta": {"role": "assistant", "content": ""}}]
                )
            yield chunk(
                [
                    {
                        "index": s.index,
                        "delta": {"content": text},
                        "finish_reason": "length" if last else None,
                    }
                ],
                usage=self._usage([s], True) if continuous else None,
            )
        if include_usage:
            yield chunk([], usage=self._usage(seqs, shared_prompt=True))
        yield "data: [DONE]\n\n"

    # --- completions -----------------------------------------------------------------
    async def completions(self, request, raw_request_info=None):
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            CompletionResponse,
            CompletionStreamResponse,
        )

        try:
            prompts = self._completion_prompts(request.prompt)
            n = int(getattr(request, "n", 1) or 1)
            seqs: List[_Seq] = []
            for p in prompts:
                mt = self._max_tokens(getattr(request, "max_tokens", None), len(p))
                for _ in range(n):
                    seqs.append(_Seq(len(seqs), p, mt))
        except ValueError as e:
            yield self._error(str(e))
            return

        rid = self._request_id(request, "cmpl")
        created = int(time.time())
        model = request.model or self._model_id
        echo_text = (
            request.prompt
            if (getattr(request, "echo", False) and isinstance(request.prompt, str))
            else ""
        )

        if not request.stream:
            async for _ in self._run_all(seqs):
                pass
            yield CompletionResponse(
                id=rid,
                created=created,
                model=model,
                choices=[
                    {
                        "index": s.index,
                        "text": echo_text + "".join(s.text_parts),
                        "finish_reason": "length",
                    }
                    for s in seqs
                ],
                usage=self._usage(seqs, shared_prompt=False),
            )
            return

        include_usage, continuous = self._stream_usage_flags(request)

        def chunk(choices, usage=None):
            return self._sse(
                CompletionStreamResponse(
                    id=rid, created=created, model=model, choices=choices, usage=usage
                )
            )

        async for s, text, _n, last in self._run_all(seqs):
            yield chunk(
                [
                    {
                        "index": s.index,
                        "text": text,
                        "finish_reason": "length" if last else None,
                    }
                ],
                usage=self._usage([s], False) if continuous else None,
            )
        if include_usage:
            yield chunk([], usage=self._usage(seqs, shared_prompt=False))
        yield "data: [DONE]\n\n"

    # --- tokenize / unsupported ------------------------------------------------------
    async def tokenize(self, request, raw_request_info=None):
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            TokenizeResponse,
        )

        if getattr(request, "messages", None):
            tokens = list(self._chat_prompt_tokens(list(request.messages)))
        else:
            prompts = self._completion_prompts(getattr(request, "prompt", ""))
            tokens = list(prompts[0])
        yield TokenizeResponse(
            tokens=tokens,
            count=len(tokens),
            max_model_len=self.config.max_model_len or 0,
        )

    async def detokenize(self, request, raw_request_info=None):
        yield self._error("detokenize is not supported by the simulated engine")

    async def embeddings(self, request, raw_request_info=None):
        yield self._error("embeddings are not supported by the simulated engine")

    async def transcriptions(self, request, raw_request_info=None):
        yield self._error("transcriptions are not supported by the simulated engine")

    async def score(self, request, raw_request_info=None):
        yield self._error("score is not supported by the simulated engine")
