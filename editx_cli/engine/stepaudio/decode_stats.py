"""A run's decode figures, for the report."""

from __future__ import annotations

from collections import Counter
from typing import Any


class DecodeStats:
    """Per-run decode figures for the report."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.prompt_tokens = 0
        self.padded_tokens = 0
        self.steps = 0
        self.slot_steps = 0
        self.row_tokens = 0
        self.syncs = 0
        self.allocations = 0
        self.captures = 0
        self.capture_seconds = 0.0
        self.capture_failures = 0
        self.halvings = 0  # out-of-memory slot halvings
        self.prefill_seconds = 0.0
        self.attention = ""
        self.graphs: set[str] = set()
        self.keys: set[int] = set()
        self.batch_sizes: Counter[int] = Counter()  # decoder slots -> calls

    def add(self, jobs: list, fig: Any, seconds: float) -> None:
        self.tokens += sum(len(j.tokens) for j in jobs)
        self.seconds += seconds
        self.prompt_tokens += fig.prefill_tokens
        self.padded_tokens += fig.prefill_padded
        self.steps += fig.steps
        self.slot_steps += fig.steps * fig.slots
        self.row_tokens += fig.row_tokens
        self.syncs += fig.syncs
        self.allocations += fig.allocations
        self.captures += fig.captures
        self.capture_seconds += fig.capture_seconds
        self.capture_failures += fig.capture_failures
        self.prefill_seconds += fig.prefill_seconds
        self.attention = fig.attention
        self.graphs.update(fig.graphs)
        self.keys.update(fig.keys)
        self.batch_sizes[fig.slots] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "generated_tokens": self.tokens,
            "decode_seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
            "steps": self.steps,
            # rows holding a live task, over all slot-steps (rows that ended idle until the next sync)
            "slot_occupancy": round(self.row_tokens / self.slot_steps, 4) if self.slot_steps else None,
            "padding_waste": round(1 - self.prompt_tokens / self.padded_tokens, 4) if self.padded_tokens else None,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "host_syncs_per_step": round(self.syncs / self.steps, 4) if self.steps else None,
            "attention": self.attention,
            "attended_keys": sorted(self.keys),
            "cache_allocations": self.allocations,
            "cuda_graphs": sorted(self.graphs, key=lambda g: tuple(map(int, g.split("x")))),
            "graph_captures": self.captures,
            "graph_capture_seconds": round(self.capture_seconds, 3),
            "graph_capture_failures": self.capture_failures,
            "out_of_memory_halvings": self.halvings,
            "prefill_beside_decode_seconds": round(self.prefill_seconds, 3),
        }
