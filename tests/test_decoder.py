"""The batched on-device sampler and the continuous-batching decoder: distribution, no host
syncs on a step, torch ops per step independent of the batch, slots refilled as rows end."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from editx_cli.engine.stepaudio.decoder import SYNC_EVERY, SYNC_LABEL, Decoder
from editx_cli.engine.stepaudio.generate import EOS, Job, Sampling, guide, probabilities, sample
from editx_cli.engine.stepaudio.runners import NativeRunner
from editx_cli.engine.stepaudio.step1 import Step1ForCausalLM


def _frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / len(tokens)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.3, top_k=0, repetition_window=0),
                                      Sampling(top_k=0, top_p=0.8), Sampling(top_k=40, top_p=0.5)],
                         ids=["reference", "plain", "nucleus", "top-k-and-nucleus"])
def test_guided_masked_draws_follow_the_exact_distribution(sampling):
    """40,000 draws, each its own row with its own uniform, guided by a partner row, against
    the exact top-k softmax of l_ref + w (l_edit - l_ref) with the repetition mask."""
    vocab, n, w = 300, 40_000, 1.5
    g = torch.Generator().manual_seed(0)
    l_edit, l_ref = torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 3
    guided = guide(l_edit, l_ref, w)
    masked = int(guided.argmax())  # the likeliest id, repeated at the end of the history: forbidden
    history = [7, 8, 9, 10, 11, 12, 13, masked, 14, masked]
    expected = probabilities(guided, history, sampling).double()

    logits = torch.cat([l_edit.expand(n, vocab), l_ref.expand(n, vocab)])  # rows n.. are the references
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n, 2 * n)])
    weight = torch.cat([torch.full((n,), w), torch.ones(n)])
    hist = torch.tensor(history).expand(2 * n, 10)
    seen = torch.full((2 * n,), 500)
    tokens = sample(logits, partner, weight, hist, seen, torch.rand(2 * n, generator=g), sampling)[:n]

    freq = _frequencies(tokens, vocab)
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sigma + 1e-12).all()
    assert freq[expected == 0].sum() == 0  # nothing outside the top k, never the masked id
    if sampling.repetition_window and sampling.top_p == 1:
        assert expected[masked] == 0 and (expected > 0).sum() == sampling.top_k
    elif sampling.repetition_window:
        assert expected[masked] == 0 and (expected > 0).sum() < (sampling.top_k or vocab)
    else:
        assert expected[masked] > 0.05 and freq[masked] > 0


def test_the_repetition_mask_needs_a_full_window():
    logits = torch.zeros(2, 20)
    logits[:, 5] = 50.0  # id 5 is certain unless masked
    hist = torch.tensor([[1, 2, 3, 4, 6, 7, 8, 9, 5, 5]] * 2)
    out = sample(logits, None, torch.ones(2), hist, torch.tensor([10, 9]), torch.full((2,), 0.5), Sampling())
    assert out.tolist()[0] != 5 and out.tolist()[1] == 5  # the second row has seen only 9 ids


def test_sampling_options_are_checked_once():
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        Sampling(top_k=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)


@pytest.fixture(scope="module")
def endless(tiny):
    """The tiny LM with end-of-turn never in its top 50: every row decodes its whole budget."""
    model = Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32)
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight[EOS] = 0.0
    return model


def _jobs(n: int, budget: int) -> list[Job]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        out.append(Job([1, 4] + torch.randint(65536, 70656, (40 + 5 * i,), generator=g).tolist(), i, budget))
    return out


def _counts(model, slots: int, budget: int) -> tuple[int, int, int]:
    jobs = _jobs(slots, budget)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fig = Decoder(NativeRunner(model, 8192), slots, Sampling(), "cpu").run(jobs)
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    syncs = sum(e.count for e in prof.key_averages() if e.key in (SYNC_LABEL, "aten::_local_scalar_dense"))
    assert all(len(j.tokens) == budget for j in jobs)
    return ops, syncs, fig.steps


@pytest.mark.slow
def test_a_step_costs_the_same_torch_ops_at_any_batch_and_never_syncs(endless):
    """The GPU costs a tiny model's wall time hides: ops launched and host syncs per step."""
    per_step = {}
    for slots in (1, 8):
        (o1, s1, n1), (o2, s2, n2) = _counts(endless, slots, 16), _counts(endless, slots, 48)
        per_step[slots] = ((o2 - o1) / (n2 - n1), (s2 - s1) / (n2 - n1))
    (ops1, syncs1), (ops8, syncs8) = per_step[1], per_step[8]
    assert ops8 <= 1.2 * ops1
    assert syncs1 == syncs8 == 1 / SYNC_EVERY  # one read-back of the done flags every SYNC_EVERY steps


def test_slots_are_refilled_and_compacted_as_rows_end(endless):
    budgets = [60, 8, 8, 8, 8, 8, 8, 30, 8]
    jobs = [Job(j.prompt, j.seed, b) for j, b in zip(_jobs(len(budgets), 1), budgets, strict=True)]
    with torch.inference_mode():
        fig = Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu").run(jobs)
    assert [len(j.tokens) for j in jobs] == budgets
    # one long row holds one slot while the others cycle through the short tasks: far fewer
    # steps than fixed batches of four (each as long as its longest row) would take
    assert fig.steps <= 72 and fig.occupancy > 0.5
    alone = [Job(j.prompt, j.seed, j.budget) for j in jobs]
    with torch.inference_mode():
        for j in alone:
            Decoder(NativeRunner(endless, 8192), 1, Sampling(), "cpu").run([j])
    assert [j.tokens for j in alone] == [j.tokens for j in jobs]


# -- reading only live keys; prefill in chunks; one decoder kept across runs -------------------


def _full_bias_decode(model, tokens, pos, cache):
    """The step as it was: every row against the whole cache, one bias of the cache's length."""
    return model.decode(tokens, pos, cache, cache.length)


def test_attention_over_a_bucket_equals_attention_over_the_whole_cache(endless):
    from editx_cli.engine.stepaudio.step1 import StaticCache

    g = torch.Generator().manual_seed(3)
    lengths = [70, 23, 51]
    cache = StaticCache(endless.config, 3, 1024, "cpu", torch.float32)
    with torch.no_grad():
        rows = [torch.randint(65536, 70656, (n,), generator=g).tolist() for n in lengths]
        width = max(lengths)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        one_shot = endless.prefill(ids, [n - 1 for n in lengths], torch.arange(3), cache, chunk=width)
        tokens, pos = torch.tensor([70000, 70001, 70002]), torch.tensor(lengths)
        bucket = endless.decode(tokens, pos, cache, 128)
        full = _full_bias_decode(endless, tokens, pos, cache)
    assert (bucket - full).abs().max() <= 1e-5
    # chunked prefill (13 positions a forward, into other slots of the same cache) equals one shot
    cache2 = StaticCache(endless.config, 3, 1024, "cpu", torch.float32)
    with torch.no_grad():
        chunked = endless.prefill(ids, [n - 1 for n in lengths], torch.tensor([2, 0, 1]), cache2, chunk=13)
    assert (chunked - one_shot).abs().max() <= 1e-5
    for k in (cache2.k, cache2.v):
        a = k[:, [2, 0, 1]]
        b = (cache.k if k is cache2.k else cache.v)[:, :3]
        for r, n in enumerate(lengths):
            assert (a[:, r, :, :n] - b[:, r, :, :n]).abs().max() <= 1e-5


def test_buckets_grow_by_at_most_half_and_end_at_the_cache_length():
    from editx_cli.engine.stepaudio.decoder import buckets

    b = buckets(8192)
    assert b[:5] == [256, 384, 512, 768, 1024] and b[-1] == 8192
    assert all(1 < y / x <= 1.5 for x, y in zip(b, b[1:], strict=False))
    assert buckets(100) == [100]


@pytest.mark.slow
def test_one_decoder_serves_many_runs_with_one_cache(endless):
    """Later runs reuse the cache (and, on CUDA, the graphs); a longer job grows it once; the
    tokens are the same as from fresh decoders."""
    decoder = Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu")
    figs, got = [], []
    for budget in (20, 12, 1500, 30):
        jobs = _jobs(5, budget)
        with torch.inference_mode():
            figs.append(decoder.run(jobs))
        got.append([j.tokens for j in jobs])
    assert [f.allocations for f in figs] == [1, 0, 1, 0]
    assert [f.cache_length for f in figs] == [1024, 1024, 2048, 2048]
    assert figs[2].keys[-1] > 1024 and figs[0].keys == [256]  # steps read the keys rows have
    for budget, tokens in zip((20, 12, 1500, 30), got, strict=True):
        fresh = _jobs(5, budget)
        with torch.inference_mode():
            Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu").run(fresh)
        assert [j.tokens for j in fresh] == tokens


def test_newcomers_prefilled_in_chunks_beside_decoding_rows_change_no_token(endless):
    """Prompts of several chunks, admitted while other rows decode, a share of the time at a
    time; every task decodes as it does alone."""
    runner = NativeRunner(endless, 8192)
    runner.chunk = 16
    budgets = [40, 12, 25, 9, 33, 18, 12, 27]
    jobs = [Job(j.prompt, j.seed, b) for j, b in zip(_jobs(len(budgets), 1), budgets, strict=True)]
    with torch.inference_mode():
        fig = Decoder(runner, 4, Sampling(), "cpu").run(jobs)
    assert fig.prefill_chunks >= 12 and fig.prefill_seconds > 0  # 3-5 chunks a prompt, some beside decoding
    assert fig.task_tokens == sum(budgets) == fig.row_tokens
    alone = [Job(j.prompt, j.seed, j.budget) for j in jobs]
    with torch.inference_mode():
        for j in alone:
            Decoder(NativeRunner(endless, 8192), 1, Sampling(), "cpu").run([j])
    assert [j.tokens for j in alone] == [j.tokens for j in jobs]


class _Rehearsing(Decoder):
    """Warms every new shape mid-run as a CUDA capture does (two steps, state put back)."""

    def _graph(self, shape, fig):
        if shape not in self.graphs:
            self.trial(shape)
            self.graphs[shape] = None
        return None


def test_warming_a_new_shape_mid_run_changes_no_token(endless):
    budgets = [60, 8, 8, 8, 30, 8, 300]
    make = lambda: [Job(j.prompt, j.seed, b, guidance=1.5 if i % 3 == 0 else 1.0,  # noqa: E731
                        reference=j.prompt[:30]) for i, (j, b) in enumerate(zip(_jobs(7, 1), budgets, strict=True))]
    plain, warmed = make(), make()
    with torch.inference_mode():
        Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu").run(plain)
        decoder = _Rehearsing(NativeRunner(endless, 8192), 4, Sampling(), "cpu")
        decoder.run(warmed)
    assert len(decoder.graphs) >= 3  # widths and key buckets changed during the run
    assert [j.tokens for j in warmed] == [j.tokens for j in plain]
