"""Batched decision-token scoring with transformers.

An input longer than ``max_input_tokens`` tokens is scored as overlapping windows, the same
prompt around each, all in the same batches, and reads as its highest-P(unsafe) window
(``core.windows``); nothing is cut. Direct mode: one forward pass over the rendered prompt, read the last
position. Reasoning mode: generate up to ``max_new_tokens`` tokens, cut at
``</think>`` (appending it when the model never closed the block), append
``Classification:`` and read the next position; that read runs on top of the
generation's KV cache (each row reuses the longest token prefix the generation
already computed), so it costs a few tokens instead of the whole sequence. Either
way the logits at the decision position go through ``core.confidence``.

With ``prefix_cache=True`` (the serving backend) the instruction prefix that every prompt
shares is run once and its KV cache reused, so each forward computes only the per-request
tokens (see ``scoring.prefix_cache``); results equal the full forward within float noise.
In direct mode those tokens are also packed (``scoring.packed``): a batch's requests run end
to end in one row with no padding, unless ``packing=False`` or the packed read fails its own
self-check, in which case they are left-padded as below.
It is off by default: evaluation and training evaluation run the full prompt (training
changes the weights between calls, which would make a cached prefix stale).

Padded batches are cut by length as well as by ``batch_size``: inputs are sorted longest first
and a new forward starts when left-padding would waste more than a quarter of the batch's tokens
(plus a small allowance), so one long input does not pad a batch of short ones. Packed batches
have no padding and are cut by ``batch_size`` only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guardcal.core.confidence import Scores, from_label_logprobs
from guardcal.core.labels import LabelSpec
from guardcal.core.pooled_head import PooledHead, input_spans
from guardcal.core.prompt import THINK_CLOSE, Item, PromptTemplate
from guardcal.core.windows import (
    DEFAULT_MAX_TOKENS,
    Windowed,
    WindowedScores,
    WindowPolicy,
    decisive,
    split_texts,
)
from guardcal.errors import ModelError
from guardcal.scoring.packed import disable_packing, enable_packing, forward_packed
from guardcal.scoring.prefix_cache import (
    PrefixKV,
    build_prefix_kv,
    forward_on_cache,
    forward_with_prefix,
    prefix_token_ids,
    template_prefix,
)

_log = logging.getLogger("guardcal.scoring.scorer")

#: a forward is split when padding would exceed this share of its real characters ...
PAD_SLACK = 0.25
#: ... plus this many characters (about 64 tokens): tiny batches are not worth splitting
PAD_ALLOWANCE_CHARS = 256
#: the cached path must agree with the full forward this closely (max |delta p| on the label
#: tokens) on a probe input, or the cache is switched off; by the model's dtype
SELF_CHECK_TOL = {"float32": 1e-3, "float64": 1e-6}
SELF_CHECK_TOL_HALF = 5e-2  # bf16 noise alone: 1.5e-2 measured on SmolLM2
PROBE_TEXTS = ("hello", 'He said "I will hurt you" and left.')


@dataclass(frozen=True)
class _Generated:
    """What ``generate`` left behind: the sequences (left-padded prompt + new tokens), the prompt's
    attention mask and the KV cache (None when the model returned none)."""

    sequences: Any
    prompt_mask: Any
    cache: Any


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Scored:
    """Scores for a batch of inputs, plus the reasoning text in reasoning mode."""

    scores: Scores
    reasoning: list[str] | None = None


class HFScorer:
    """Scores texts with a loaded transformers model (optionally PEFT-wrapped)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: PromptTemplate | None = None,
        spec: LabelSpec | None = None,
        batch_size: int = 8,
        max_input_tokens: int = DEFAULT_MAX_TOKENS,
        max_new_tokens: int = 256,
        prefix_cache: bool = False,
        packing: bool = True,
        max_windows: int | None = None,
        head: PooledHead | None = None,
    ) -> None:
        if head is not None and template is not None and template.reasoning:
            raise ModelError("a pooled head reads direct-mode prompts; serve or evaluate it without --reasoning")
        #: read this head over the input's pooled states instead of the decision token (``core.pooled_head``)
        self.head = head
        prefix_cache = prefix_cache and head is None  # the head reads every token's state, prefix included
        self.model = model
        self.tokenizer = tokenizer
        self.template = (template or PromptTemplate()).bind(tokenizer)
        self.spec = spec or LabelSpec.from_tokenizer(tokenizer, self.template.spec.surfaces())
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        #: how inputs are split (``core.windows``): windows of ``max_input_tokens`` tokens, capped for serving
        self.windows = WindowPolicy(max_input_tokens, max_windows=max_windows)
        self.max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        #: pack direct-mode reads on the prefix cache (scoring.packed); settled when the cache is built
        self.packing = prefix_cache and packing and not self.template.reasoning
        #: why the prefix cache is on or off ("on: 72 tokens", "off: ...")
        self.prefix_status = "off: not asked for" if not prefix_cache else "not built yet"
        if head is not None:
            self.prefix_status = "off: a pooled head reads the input's own states"
        #: decision reads that used the cached prefix / the full prompt
        self.rows_cached = 0
        self.rows_full = 0
        #: reasoning-mode decision reads run on top of the generation's cache, and the tokens they skipped
        self.rows_reused = 0
        self.tokens_reused = 0
        self._prefix: PrefixKV | None = None
        self._prefix_built = False
        self._prefix_lock = threading.Lock()
        self._stop_criteria: Any = None  # built once: transformers rebuilds it per call (~0.7 s here)
        self._prefix_chars = len(template_prefix(self.template)) if prefix_cache else 0

    def split(self, texts: Sequence[Item]) -> list[Windowed]:
        """Each text's windows (``core.windows``); InputTooLongError past ``max_windows``."""
        return split_texts(texts, self.tokenizer, self.windows)

    def prompts(self, texts: Sequence[Item]) -> list[str]:
        """The prompt around each text (or conversation) as given (a window, or an input that fits)."""
        return [self.template.render(t) for t in texts]

    def window_prompts(self, texts: Sequence[Item]) -> list[str]:
        """Every prompt scoring ``texts`` runs: each input's windows, input after input."""
        return self.prompts([w for part in self.split(texts) for w in part.texts])

    def score(self, texts: Sequence[Item], progress: bool = False) -> Scored:
        """Score every window of every text; each text reads as its highest-P(unsafe) window
        (``core.windows``), and the result says what was scored. Results keep input order."""
        return self.score_split(self.split(texts), progress)

    def score_split(self, parts: Sequence[Windowed], progress: bool = False) -> Scored:
        """:meth:`score` on texts already split (all windows in the same batches)."""
        rows = [w for part in parts for w in part.texts]
        counts, tokens = [len(p.texts) for p in parts], [p.input_tokens for p in parts]
        if not rows:
            empty = WindowedScores.from_windows(Scores.concat([]), [], [])
            return Scored(empty, [] if self.template.reasoning else None)
        scored = self._score_rows(rows, progress)
        scores = WindowedScores.from_windows(scored.scores, counts, tokens)
        if scored.reasoning is None:
            return Scored(scores)
        pick = decisive(scored.scores.p_unsafe_norm, scored.scores.decided, counts)
        return Scored(scores, [scored.reasoning[i] for i in pick])  # the deciding window's reasoning

    def _score_rows(self, texts: Sequence[Item], progress: bool = False) -> Scored:
        """Score ``texts`` (each rendered as given) in length-sorted batches; results keep input order."""
        if self.head is not None:
            return Scored(self._read_head(texts, progress))
        prompts = self.prompts(texts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        parts: list[Scores] = []
        reasoning: list[str] = []
        lengths = [max(len(p) - self._prefix_chars, 1) for p in prompts]
        by_length = not (self.packing and self.prefix() is not None)  # builds the cache on first use
        for chunk in _progress(self._chunks(order, lengths, by_length), progress):
            batch = [prompts[i] for i in chunk]
            if not self.template.reasoning:
                parts.append(self._read_decision(batch))
                continue
            thoughts, generated = self._generate_reasoning(batch)
            reasoning.extend(thoughts)
            suffix = self.template.decision_suffix()
            batch = [p + t + suffix for p, t in zip(batch, thoughts, strict=True)]
            parts.append(self._read_after_generation(batch, generated))
        merged = Scores.concat(parts)
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        scores = merged.take(inverse)
        if not self.template.reasoning:
            return Scored(scores)
        return Scored(scores, [reasoning[i] for i in inverse])

    def _read_head(self, texts: Sequence[Item], progress: bool) -> Scores:
        """The pooled head's reading of each text, one prompt per forward: on CPU that is faster than
        right-padded forwards of 16 and than the served decision token (``benchmarks/head_speed.py``)."""
        from guardcal.scoring.pooled import pooled_features

        assert self.head is not None
        spans = input_spans(self.template, self.tokenizer, texts, self.prompts(texts))
        feats = [pooled_features(self.model, [span], self.head.readouts) for span in _progress(spans, progress)]
        self.rows_full += len(texts)
        return self.head.scores(np.concatenate(feats) if feats else np.zeros((0, len(self.head.weight))))

    def _encode(self, batch: list[str]) -> dict[str, Any]:
        import torch

        enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        out = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": positions}
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def _chunks(self, order: list[int], lengths: list[int], by_length: bool = True) -> list[list[int]]:
        """Cut ``order`` (longest first) into forwards of at most ``batch_size`` with little padding."""
        if not by_length:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        chunks: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            if current:
                padded = lengths[current[0]] * (len(current) + 1)
                limit = (1 + PAD_SLACK) * (real + lengths[i]) + PAD_ALLOWANCE_CHARS
                if len(current) >= self.batch_size or padded > limit:
                    chunks.append(current)
                    current, real = [], 0
            current.append(i)
            real += lengths[i]
        if current:
            chunks.append(current)
        return chunks

    def _read_decision(self, batch: list[str]) -> Scores:
        prefix = self.prefix()
        if prefix is None:
            self.rows_full += len(batch)
            return from_label_logprobs(self._full_label_logprobs(batch), self.spec)
        rows = self.tokenizer(batch, add_special_tokens=False)["input_ids"]
        hit = [i for i, row in enumerate(rows) if prefix.covers(row)]
        miss = sorted(set(range(len(batch))) - set(hit))
        label_lp = np.empty((len(batch), len(self.spec.all_ids)), dtype=np.float64)
        if hit:
            logits = self._cached_logits(prefix, [rows[i] for i in hit])
            label_lp[hit] = self._label_logprobs(logits)
        if miss:  # the tokenizer merged across the split point: run these prompts whole
            label_lp[miss] = self._full_label_logprobs([batch[i] for i in miss])
        self.rows_cached += len(hit)
        self.rows_full += len(miss)
        return from_label_logprobs(label_lp, self.spec)

    def _cached_logits(self, prefix: PrefixKV, rows: list[list[int]]) -> Any:
        if self.packing:
            return forward_packed(self.model, prefix, rows)
        return forward_with_prefix(self.model, prefix, rows, self.pad_id())

    def _full_label_logprobs(self, batch: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(**self._encode(batch), logits_to_keep=1, use_cache=False)
            return self._label_logprobs(out.logits[:, -1, :])

    def _label_logprobs(self, logits: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            return np.asarray(logprobs[:, list(self.spec.all_ids)].cpu().double().numpy())

    def pad_id(self) -> int:
        """The id right-padded batches are filled with: the pad token, else end-of-sequence."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def prefix(self) -> PrefixKV | None:
        """The cached instruction prefix (built on first use), or None when caching is off or unusable."""
        if not self.prefix_cache:
            return None
        if self._prefix_built:
            return self._prefix
        with self._prefix_lock:
            if not self._prefix_built:
                self._prefix, self.prefix_status = self._build_prefix()
                self.packing = self.packing and self._prefix is not None
                self._prefix_built = True
                _log.info("instruction-prefix KV cache %s", self.prefix_status)
        return self._prefix

    def _build_prefix(self) -> tuple[PrefixKV | None, str]:
        """Build the prefix cache and check it against the full forward on probe inputs."""
        try:
            prefix = build_prefix_kv(self.model, prefix_token_ids(self.tokenizer, self.template))
            probes = [self.template.render(t) for t in PROBE_TEXTS]
            rows = self.tokenizer(probes, add_special_tokens=False)["input_ids"]
            if not all(prefix.covers(r) for r in rows):
                return None, "off: the tokenizer merges the prefix with the input, so no prompt could use it"
            cached = np.exp(self._label_logprobs(forward_with_prefix(self.model, prefix, rows, self.pad_id())))
            full = np.exp(self._full_label_logprobs(probes))
        except Exception as exc:  # noqa: BLE001 - an architecture without a reusable cache runs uncached
            return None, f"off: {type(exc).__name__}: {exc}"
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        tol = SELF_CHECK_TOL.get(dtype, SELF_CHECK_TOL_HALF)
        gap = float(np.abs(cached - full).max())
        if not gap <= tol:
            return None, f"off: cached and full forwards differ by {gap:.2e} > {tol:.0e} on probe inputs"
        layout = self._settle_packing(prefix, rows, full, tol)
        return prefix, f"on: {len(prefix)} tokens, self-check gap {gap:.1e}, {layout}"

    def _settle_packing(self, prefix: PrefixKV, rows: list[list[int]], full: np.ndarray, tol: float) -> str:
        """Turn packing on when asked for and the packed read agrees with the full forward; say which."""
        if not self.packing:
            return "padded"
        why = enable_packing(self.model)
        if why is None:
            try:
                packed = np.exp(self._label_logprobs(forward_packed(self.model, prefix, rows)))
                gap = float(np.abs(packed - full).max())
                why = None if gap <= tol else f"packed and full forwards differ by {gap:.2e} > {tol:.0e}"
            except Exception as exc:  # noqa: BLE001 - an architecture the packed read does not fit: padded
                why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            disable_packing(self.model)
            self.packing = False
            return f"padded (packing off: {why})"
        return "packed"

    def _generate_reasoning(self, batch: list[str]) -> tuple[list[str], _Generated]:
        import torch

        enc = self._encode(batch)
        enc.pop("position_ids")
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                stopping_criteria=self._stop_at_think_close(),
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        generated = _Generated(out.sequences, enc["attention_mask"], getattr(out, "past_key_values", None))
        return [t.split(THINK_CLOSE, 1)[0].rstrip() for t in texts], generated

    def _stop_at_think_close(self) -> Any:
        """Stop a row at ``</think>``: the same criterion ``generate(stop_strings=...)`` builds, built once."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        if self._stop_criteria is None:
            self._stop_criteria = StoppingCriteriaList([StopStringCriteria(self.tokenizer, [THINK_CLOSE])])
        return self._stop_criteria

    def _read_after_generation(self, batch: list[str], generated: _Generated) -> Scores:
        """Read the decision of ``prompt + reasoning + suffix`` on top of the generation's KV cache.

        The read is tokenised from the text, exactly as :meth:`_read_decision` would; each row
        reuses the cached keys and values of its longest token prefix that the generation already
        computed (the prompt and usually most of the reasoning) and runs only the rest, so the
        result equals the full forward within float noise. Without a usable cache, the full read.
        """
        import torch

        cache = generated.cache
        if cache is None or not callable(getattr(cache, "get_seq_length", None)):
            return self._read_decision(batch)
        rows = self.tokenizer(batch, add_special_tokens=False)["input_ids"]
        width, cached = generated.prompt_mask.shape[1], int(cache.get_seq_length())
        pads = (width - generated.prompt_mask.sum(-1)).tolist()
        reuse, tails = [], []
        for row, pad, seq in zip(rows, pads, generated.sequences[:, :cached].tolist(), strict=True):
            n = _common_prefix(row, seq[pad:])
            n = min(n, len(row) - 1)  # the last token must run, its logits are the decision
            reuse.append(n)
            tails.append(row[n:])
        cached_mask = torch.zeros((len(rows), cached), dtype=torch.long)
        for i, (n, pad) in enumerate(zip(reuse, pads, strict=True)):
            cached_mask[i, pad : pad + n] = 1  # the reused part of the row; the rest is hidden
        device = next(self.model.parameters()).device
        try:
            with torch.inference_mode():
                logits = forward_on_cache(self.model, cache, cached_mask.to(device), tails, reuse, self.pad_id())
        except Exception as exc:  # noqa: BLE001 - a cache that cannot grow (static, sliding): read in full
            _log.info("decision read without the generation's cache: %s: %s", type(exc).__name__, exc)
            return self._read_decision(batch)
        label_lp = self._label_logprobs(logits)
        self.rows_reused += len(rows)
        self.tokens_reused += sum(reuse)
        return from_label_logprobs(label_lp, self.spec)


def _progress(items: Sequence[Any], enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="scoring", unit="batch")
