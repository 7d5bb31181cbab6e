"""Sampling as the reference does it, batched, with guidance for intensity.

Per step and per task: logits (guided: l_ref + w * (l_edit - l_ref), where the
reference row is decoded in the same batch and gets the same sampled token),
then the repetition-aware mask, then temperature 0.7 and top-k 50, then one
draw from the task's own seeded generator. A task's tokens therefore do not
depend on what else is in the batch. Rows leave the batch when they end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

EOS = 3
PAD = 0
TEMPERATURE = 0.7
TOP_K = 50
REPEAT_WINDOW = 10


@dataclass
class Job:
    prompt: list[int]
    seed: int
    budget: int  # most new tokens, end-of-turn included
    guidance: float = 1.0
    reference: list[int] | None = None  # the unedited prompt, decoded beside `prompt` when guidance != 1
    tokens: list[int] = field(default_factory=list)  # generated, end-of-turn included when reached

    @property
    def guided(self) -> bool:
        return self.reference is not None and self.guidance != 1.0


Forward = Callable[[torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, object]]


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


def run(jobs: list[Job], forward: Forward, reorder: Callable[[object, torch.Tensor], object],
        device: str) -> list[Job]:
    """Decode every job to its end or its budget, all in one batch.

    `forward(ids, key_mask, past)` returns last-position logits (rows, vocab) and the new
    past; `reorder(past, rows)` keeps only the given batch rows of the past.
    """
    rows: list[tuple[int, bool]] = []  # (job index, is reference row)
    for j, job in enumerate(jobs):
        rows.append((j, False))
        if job.guided:
            rows.append((j, True))
    seqs = [jobs[j].reference if ref else jobs[j].prompt for j, ref in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):  # left padding: real tokens end at the same column
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = True
    ids, mask = ids.to(device), mask.to(device)
    gens = [torch.Generator(device=device).manual_seed(int(job.seed)) for job in jobs]
    histories = [list(job.prompt) for job in jobs]

    with torch.inference_mode():
        logits, past = forward(ids, mask, None)
        while rows:
            row_of = {(j, ref): r for r, (j, ref) in enumerate(rows)}
            step: dict[int, int] = {}
            for j in dict.fromkeys(j for j, _ in rows):
                job = jobs[j]
                lg = logits[row_of[(j, False)]]
                if job.guided:
                    lg = guide(lg, logits[row_of[(j, True)]], job.guidance)
                token = draw(mask_repetition(lg, histories[j]), gens[j])
                job.tokens.append(token)
                histories[j].append(token)
                step[j] = token
            keep = [r for r, (j, _) in enumerate(rows) if step[j] != EOS and len(jobs[j].tokens) < jobs[j].budget]
            if not keep:
                break
            rows = [rows[r] for r in keep]
            index = torch.tensor(keep, device=device)
            past = reorder(past, index)
            mask = torch.cat([mask[index], torch.ones((len(keep), 1), dtype=torch.bool, device=device)], dim=1)
            new = torch.tensor([[step[j]] for j, _ in rows], device=device)
            logits, past = forward(new, mask, past)
    return jobs
