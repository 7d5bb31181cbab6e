"""Sampling as the reference does it, and the same rules batched on the device.

The reference, per step and per task: logits (guided: l_ref + w * (l_edit - l_ref),
the reference row decoded beside the task and given the same token), then the
repetition-aware mask, then temperature 0.7 and top-k 50, then one draw.

`guide`, `mask_repetition` and `draw` state those rules for one row; `sample`
applies them to every row of a batch at once with no host sync, and draws by
inverse CDF from a uniform the caller takes from the task's own stream (its seed
and step index alone), so a task's tokens cannot depend on what it is batched with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

EOS = 3
PAD = 0
TEMPERATURE = 0.7
TOP_K = 50
REPEAT_WINDOW = 10


@dataclass(frozen=True)
class Sampling:
    """The sampling rules, checked once."""

    temperature: float = TEMPERATURE
    top_k: int = TOP_K  # 0: the whole vocabulary
    top_p: float = 1.0  # nucleus: the smallest set of likeliest ids holding this much probability
    repetition_window: int = REPEAT_WINDOW  # 0: no repetition mask

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.top_k < 0 or self.repetition_window < 0:
            raise ValueError("top_k and repetition_window must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")


# The sampling each prompt format was released with: the legacy code sampled through
# transformers' generate (its default top-k 50) with the repetition mask; the 2026 code
# samples through vLLM with temperature 0.7 alone.
PRESETS = {"legacy": Sampling(), "chat": Sampling(top_k=0, repetition_window=0)}


@dataclass
class Job:
    prompt: list[int]
    seed: int
    budget: int  # most new tokens, end-of-turn included
    guidance: float = 1.0
    reference: list[int] | None = None  # the unedited prompt, decoded beside `prompt` when guidance != 1
    tokens: list[int] = field(default_factory=list)  # generated, end-of-turn included when reached
    seconds: float = 0.0  # its share of the decoder's device time (see Decoder.run)
    peers: int = 0  # the most tasks decoded at once with it, itself included
    started_at: float = 0.0  # perf_counter when its rows began decoding (their prompts were in)
    ended_at: float = 0.0  # perf_counter when its last token was read back

    @property
    def guided(self) -> bool:
        return self.reference is not None and self.guidance != 1.0

    def uniforms(self) -> torch.Tensor:
        """The task's random stream: uniform [0, 1) per step, from its seed alone."""
        return torch.rand(self.budget, generator=torch.Generator().manual_seed(int(self.seed)))


# -- the rules for one row ------------------------------------------------------------------


def guide(l_edit: torch.Tensor, l_ref: torch.Tensor, w: float) -> torch.Tensor:
    return l_ref + w * (l_edit - l_ref)


def mask_repetition(logits: torch.Tensor, history: list[int]) -> torch.Tensor:
    """If the last id appears twice or more in the last 10 ids, forbid it next."""
    if len(history) < REPEAT_WINDOW:
        return logits
    window = history[-REPEAT_WINDOW:]
    if window.count(window[-1]) / REPEAT_WINDOW > 0.1:
        logits = logits.clone()
        logits[window[-1]] = float("-inf")
    return logits


def draw(logits: torch.Tensor, generator: torch.Generator) -> int:
    top, idx = torch.topk(logits / TEMPERATURE, min(TOP_K, logits.shape[-1]))
    probs = torch.softmax(top, dim=-1)
    return int(idx[torch.multinomial(probs, 1, generator=generator)])


def probabilities(logits: torch.Tensor, history: list[int], sampling: Sampling = Sampling()) -> torch.Tensor:
    """The exact distribution of the next id for one row (tests hold `sample` against it)."""
    window = sampling.repetition_window
    if window and len(history) >= window and history[-window:].count(history[-1]) / window > 0.1:
        logits = logits.clone()
        logits[history[-1]] = float("-inf")
    scaled = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if sampling.top_p < 1:
        top, order = probs.sort(descending=True)
        drop = order[(top.cumsum(0) - top) >= sampling.top_p]
        probs = probs.index_fill(0, drop, 0.0)
        probs = probs / probs.sum()
    return probs


# -- every row at once, on the device --------------------------------------------------------


def sample(logits: torch.Tensor, partner: torch.Tensor | None, weight: torch.Tensor, history: torch.Tensor,
           seen: torch.Tensor, uniform: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """One token per row, with no host sync.

    logits (rows, vocab) float32; `partner[r]` the row holding r's reference logits (r itself
    when unguided; None when no row is guided), `weight[r]` its guidance weight; `history`
    (rows, window) the last ids of each row's sequence, `seen` (rows,) how many ids that
    sequence has; `uniform` (rows,) or (rows, 1) the row's draw for this step.
    """
    if partner is not None:
        ref = logits.index_select(0, partner)
        logits = ref + weight[:, None] * (logits - ref)  # exactly `logits` where partner is the row itself
    window = sampling.repetition_window
    if window:
        last = history[:, -1:]
        # the last id more than a tenth of the window: count * 10 > window, in whole numbers
        repeated = ((history == last).sum(1, keepdim=True) > window // 10) & (seen[:, None] >= window)
        logits = logits.scatter(1, last, torch.where(repeated, float("-inf"), logits.gather(1, last)))
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        top, idx = logits.topk(sampling.top_k, dim=-1)  # order is the same before or after temperature
    elif sampling.top_p < 1:
        top, idx = logits.sort(dim=-1, descending=True)
    else:
        top, idx = logits, None
    probs = torch.softmax(top / sampling.temperature, dim=-1)
    if sampling.top_p < 1:  # ids in descending order: keep those with less than top_p before them
        probs = probs * ((probs.cumsum(-1) - probs) < sampling.top_p)
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, uniform.view(-1, 1) * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return choice[:, 0] if idx is None else idx.gather(1, choice)[:, 0]
