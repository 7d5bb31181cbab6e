"""What the decoder runs a model through: the native Step1 over its static cache (rows of any
length at once, padding masked), or a model that ignores padding masks, a row at a time."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from editx_cli.engine.stepaudio.generate import PAD


class NativeRunner:
    """The native Step1 over a static cache."""

    def __init__(self, model: Any, window: int, compile_into: Path | None = None) -> None:
        """compile_into: compile the decode step with torch.compile, its cache in that folder."""
        from editx_cli.engine.stepaudio.step1 import PREFILL_CHUNK

        self.model = model
        self.vocab = model.config.vocab_size
        self.window = min(window, model.config.max_seq_len - 1)  # one position more is the scratch row
        self.chunk = PREFILL_CHUNK
        model.fuse()  # one product for q/k/v and one for gate/up a decode step
        self.can_capture = True
        self.cache = None
        self.compiling = compile_into is not None
        self.step = compiled(model.decode, compile_into) if compile_into is not None else model.decode
        self.compiled: set[tuple] = set()  # the shapes compiled so far
        self.compile_seconds = 0.0

    @property
    def attention(self) -> str:
        return f"{'flex' if self.model.flex is not None else 'sdpa'} over live-key buckets"

    def allocate(self, slots: int, length: int, device: str) -> None:
        from editx_cli.engine.stepaudio.step1 import StaticCache

        self.cache = None  # free the old cache before allocating the new one
        self.cache = StaticCache(self.model.config, slots, length, device, self.model.lm_head.weight.dtype)

    def prefill(self, rows: list[list[int]], slots: list[int], start: int,
                device: str) -> tuple[list[int], torch.Tensor]:
        """Positions start..start+chunk-1 of each row into its slot; the rows whose prompt ends
        in this chunk (their indices) and the logits at their last position."""
        width = min(self.chunk, max(len(r) for r in rows) - start)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            part = r[start:start + width]
            ids[i, : len(part)] = torch.tensor(part, dtype=torch.long)
        h = self.model.extend(to_device(ids, device), start, to_device(torch.tensor(slots), device), self.cache)
        ended = [i for i, r in enumerate(rows) if start <= len(r) - 1 < start + width]
        at = [len(rows[i]) - 1 - start for i in ended]
        return ended, self.model.lm_head(h[ended, at]).float()

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, keys: int) -> torch.Tensor:
        if not self.compiling:
            return self.step(tokens, pos, self.cache, keys)
        shape = (tuple(tokens.shape), keys)
        if shape in self.compiled:
            return self.step(tokens, pos, self.cache, keys)
        start = time.perf_counter()  # a shape's first call compiles it (or reads it from the cache)
        logits = self.step(tokens, pos, self.cache, keys)
        self.compile_seconds += time.perf_counter() - start
        self.compiled.add(shape)
        return logits

    def move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst)

    def release(self, slot: int) -> None:
        pass

    def close(self) -> None:
        self.cache = None


class UnpaddedRunner:
    """A model that ignores attention masks (the checkpoint's own code): no cache, and
    every row runs alone over its whole sequence each step, so padding never reaches it.
    Slow; a comparison path."""

    attention = "checkpoint code over each whole sequence"

    def __init__(self, model: Any, vocab: int, window: int) -> None:
        self.model, self.vocab, self.window = model, vocab, window
        self.chunk = window  # a prompt in one piece: there is no cache to extend
        self.can_capture = False
        self.seqs: list[list[int] | None] = []

    def allocate(self, slots: int, length: int, device: str) -> None:
        self.seqs = [None] * slots

    def _logits(self, seq: list[int], device: str) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([seq], device=device)).logits[0, -1].float()

    def prefill(self, rows: list[list[int]], slots: list[int], start: int,
                device: str) -> tuple[list[int], torch.Tensor]:
        for row, s in zip(rows, slots, strict=True):
            self.seqs[s] = list(row)
        return list(range(len(rows))), torch.stack([self._logits(r, device) for r in rows])

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, keys: int) -> torch.Tensor:
        out = torch.zeros(len(tokens), self.vocab, device=tokens.device)
        for r, t in enumerate(tokens.tolist()):
            if self.seqs[r] is not None:
                self.seqs[r].append(t)
                out[r] = self._logits(self.seqs[r], str(tokens.device))
        return out

    def move(self, src: int, dst: int) -> None:
        self.seqs[dst], self.seqs[src] = self.seqs[src], None

    def release(self, slot: int) -> None:
        self.seqs[slot] = None

    def close(self) -> None:
        self.seqs = []


def compiled(step: Any, folder: Path) -> Any:
    """step compiled by torch.compile, a function of fixed shapes (one graph a row count and key
    bucket, as the decoder's CUDA graphs are), its compiled code cached in `folder`, so a
    later process reads it instead of compiling again."""
    folder.mkdir(parents=True, exist_ok=True)
    # read by the compiler whenever it looks for its cache (torch sets them itself, to a temporary
    # folder, on first use: so they are set here, not defaulted)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    return torch.compile(step, dynamic=False)


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """A host tensor onto the device without the host waiting: pinned, then an async copy."""
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
