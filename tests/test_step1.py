"""The native Step1 LLM against the checkpoint-style remote code, its static cache, padding,
and guided decoding through the continuous-batching decoder."""

from __future__ import annotations

import pytest
import torch

from editx_cli.engine.stepaudio import generate
from editx_cli.engine.stepaudio.decoder import Decoder
from editx_cli.engine.stepaudio.generate import EOS, Job, Sampling, guide, probabilities
from editx_cli.engine.stepaudio.runners import NativeRunner, UnpaddedRunner
from editx_cli.engine.stepaudio.step1 import StaticCache, Step1ForCausalLM, alibi_slopes


@pytest.fixture(scope="module")
def native(tiny):
    return Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32)


@pytest.fixture(scope="module")
def remote(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny / "Step-Audio-EditX"), trust_remote_code=True,
                                                local_files_only=True, dtype=torch.float32).eval()


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1, 4] + torch.randint(65536, 70656, (n - 2,), generator=g).tolist()


def decode(model, jobs, slots=8, **kw):
    with torch.inference_mode():
        Decoder(NativeRunner(model, 8192), slots, Sampling(), "cpu", **kw).run(jobs)
    return jobs


def test_alibi_slopes_for_48_heads():
    s = alibi_slopes(48)
    assert len(s) == 48
    assert s[0] == pytest.approx(2 ** -0.25) and s[31] == pytest.approx(2 ** -8)
    assert s[32] == pytest.approx(2 ** -0.125) and s[47] == pytest.approx(2 ** (-31 / 8))


def test_native_logits_equal_the_checkpoint_code_on_an_unpadded_prompt(native, remote):
    ids = torch.tensor([prompt(40, 0)])
    with torch.no_grad():
        mine, _ = native(ids, torch.ones_like(ids, dtype=torch.bool), all_logits=True)
        theirs = remote(input_ids=ids).logits
    assert torch.allclose(mine, theirs.float(), atol=1e-4, rtol=1e-4)


def test_kv_cache_gives_the_same_logits_as_a_full_pass(native):
    ids = torch.tensor([prompt(30, 1)])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        full, _ = native(ids, mask, all_logits=True)
        _, past = native(ids[:, :20], mask[:, :20])
        step, _ = native(ids[:, 20:], mask, past, all_logits=True)
    assert torch.allclose(full[:, 20:], step, atol=1e-5)


def test_static_cache_prefill_and_decode_equal_a_full_pass(native):
    ids = prompt(40, 0)
    with torch.no_grad():
        full, _ = native(torch.tensor([ids]), torch.ones(1, 40, dtype=torch.bool), all_logits=True)
        cache = StaticCache(native.config, 3, 64, "cpu", torch.float32)
        # two rows prefilled together into slots 2 and 0, right-padded to one width
        first = native.prefill(torch.tensor([ids[:30], ids[:20] + [0] * 10]), [29, 19],
                               torch.tensor([2, 0]), cache)
        assert torch.allclose(first, full[0, [29, 19]], atol=1e-4)
        for i in range(30, 40):  # slot 2 decodes on; slots 0 and 1 take part with junk
            step = native.decode(torch.tensor([5, 6, ids[i]]), torch.tensor([20, 0, i]), cache, 64)
            assert torch.allclose(step[2], full[0, i], atol=1e-4), i


def test_the_fused_decode_step_equals_the_plain_one_for_rows_of_different_lengths(tiny):
    """q/k/v and gate/up as one product each, the residual adds inside the output products, the
    cache indices made once a step: float32 logits within 1e-5 of the plain step's, at prefill
    and at every decode step, for rows whose lengths differ; and the weights held once."""
    plain, fused = (Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32) for _ in range(2))
    fused.fuse()
    assert fused.fused and not plain.fused
    attn = fused.model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv.untyped_storage().data_ptr()
    rows = [prompt(31, 4), prompt(12, 5), prompt(47, 6)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    caches = [StaticCache(plain.config, 3, 96, "cpu", torch.float32) for _ in range(2)]
    with torch.inference_mode():
        first = [m.prefill(ids, [len(r) - 1 for r in rows], torch.tensor([0, 1, 2]), c)
                 for m, c in zip((plain, fused), caches, strict=True)]
        assert torch.allclose(first[0], first[1], atol=1e-5)
        pos = torch.tensor([len(r) for r in rows])
        for step in range(20):
            tokens = torch.tensor([65600 + step, 66000 + step, 67000 + step])
            a, b = (m.decode(tokens, pos, c, 96) for m, c in zip((plain, fused), caches, strict=True))
            assert (a - b).abs().max() <= 1e-5, step
            pos = pos + 1


def _decode_side_by_side(runners, steps: list[tuple[int, int]]) -> None:
    """Three rows of different lengths prefilled into each runner, then decode steps of the
    given (rows, keys): the runners' float32 logits agree within 1e-5 at every step."""
    rows = [prompt(31, 4), prompt(12, 5), prompt(47, 6)]
    for runner in runners:
        runner.allocate(3, 96, "cpu")
        with torch.inference_mode():
            runner.prefill(rows, [0, 1, 2], 0, "cpu")
    with torch.inference_mode():
        pos = torch.tensor([len(r) for r in rows])
        for step, (width, keys) in enumerate(steps):
            tokens = torch.tensor([65600 + step, 66000 + step, 67000 + step])[:width]
            a, b = (r.decode(tokens, pos[:width], keys) for r in runners)
            assert a.shape == b.shape == (width, runners[0].vocab) and (a - b).abs().max() <= 1e-5, step
            pos = pos + 1


def test_the_compiled_decode_step_equals_the_eager_one(tiny, tmp_path):
    """--compile: the runner's decode step through torch.compile gives float32 logits within
    1e-5 of the eager step's, step after step, for rows of different lengths; its first call
    of a shape is counted as compile time, and the compiler's cache lands in the folder given."""
    from editx_cli.engine.stepaudio.runners import NativeRunner

    eager, fast = (NativeRunner(Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32), 96,
                                compile_into) for compile_into in (None, tmp_path / "compiled"))
    _decode_side_by_side((eager, fast), [(3, 96)] * 6)
    assert eager.compile_seconds == 0 and fast.compile_seconds > 0 and fast.compiled == {((3,), 96)}
    assert any((tmp_path / "compiled").rglob("*")), "the compiler's cache is not in the folder given"


def test_flex_attention_decodes_as_the_folded_sdpa(tiny):
    """The decode step through FlexAttention (bias and causal limit inside the kernel, from the
    rows' positions) gives float32 logits within 1e-5 of the folded SDPA's, for rows of different
    lengths, while the key bucket and the rows change (the kernel is compiled for them)."""
    from editx_cli.engine.stepaudio.runners import NativeRunner

    sdpa, flex = (NativeRunner(Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32), 96)
                  for _ in range(2))
    flex.model.use_flex()
    assert flex.attention == "flex over live-key buckets" != sdpa.attention
    _decode_side_by_side((sdpa, flex), [(3, 64), (3, 64), (3, 80), (2, 80), (3, 96)])


def test_a_row_decodes_the_same_alone_or_among_others(native, remote):
    short, long = prompt(25, 2), prompt(60, 3)
    alone = decode(native, [Job(short, seed=7, budget=30)])[0].tokens
    others = [Job(prompt(30 + 9 * i, 20 + i), seed=i, budget=5 + 7 * i) for i in range(6)]
    batched = decode(native, [Job(long, seed=5, budget=30), *others, Job(short, seed=7, budget=30)], slots=3)
    assert batched[-1].tokens == alone and len(alone) > 1
    # The checkpoint's own code lets real tokens attend to left padding: a padded row differs.
    padded = torch.tensor([[0] * 35 + short])
    mask = torch.tensor([[0] * 35 + [1] * 25])
    with torch.no_grad():
        theirs_padded = remote(input_ids=padded, attention_mask=mask).logits[0, -1]
        theirs_alone = remote(input_ids=torch.tensor([short])).logits[0, -1]
        mine_padded, _ = native(padded, mask.bool())
    assert not torch.allclose(theirs_padded, theirs_alone, atol=1e-3)
    assert torch.allclose(mine_padded[0, -1], theirs_alone.float(), atol=1e-4)


def test_the_checkpoint_code_decodes_unpadded_rows_as_one_at_a_time(remote):
    """Through UnpaddedRunner each row runs alone, so mask-ignoring code batches correctly."""
    def run(jobs, slots):
        with torch.inference_mode():
            Decoder(UnpaddedRunner(remote, 74752, 8192), slots, Sampling(), "cpu").run(jobs)
        return [j.tokens for j in jobs]

    def make():
        return [Job(prompt(20 + 11 * i, 40 + i), seed=i, budget=12, guidance=1.5 if i % 2 else 1.0,
                    reference=prompt(33, 50 + i)) for i in range(4)]

    together = run(make(), 4)
    assert together == [run([j], 1)[0] for j in make()]


def test_guided_tokens_follow_l_ref_plus_w_times_the_difference(native):
    """Decode with guidance among other rows, then replay each step on the prompts alone:
    every token is the draw, with the task's own uniform, from l_ref + w (l_edit - l_ref)."""
    edit, ref, w = prompt(30, 4), prompt(45, 5), 2.0
    job = decode(native, [Job(prompt(50, 6), seed=3, budget=8), Job(edit, seed=11, budget=12, guidance=w,
                                                                     reference=ref)])[1]
    uniforms = Job(edit, seed=11, budget=12).uniforms()
    with torch.no_grad():
        for k, token in enumerate(job.tokens):
            l_edit = native(torch.tensor([edit + job.tokens[:k]]), torch.ones(1, 30 + k, dtype=torch.bool))[0][0, -1]
            l_ref = native(torch.tensor([ref + job.tokens[:k]]), torch.ones(1, 45 + k, dtype=torch.bool))[0][0, -1]
            history = edit + job.tokens[:k]
            probs = probabilities(guide(l_edit, l_ref, w), history)
            top, order = probs.sort(descending=True)  # the sampler walks the CDF largest first
            expected = int(order[torch.searchsorted(top.cumsum(0), uniforms[k] * top.sum(), right=True)])
            assert token == expected, k
    # w = 1 needs no reference row: it is the plain model
    plain = decode(native, [Job(edit, seed=11, budget=12, guidance=1.0, reference=ref)])[0]
    alone = decode(native, [Job(edit, seed=11, budget=12)])[0]
    assert plain.tokens == alone.tokens != job.tokens


def test_budget_ends_a_runaway_decode(native):
    jobs = decode(native, [Job(prompt(40, s), seed=s, budget=25) for s in range(4)])
    assert all(len(j.tokens) <= 25 for j in jobs)
    assert any(len(j.tokens) == 25 and j.tokens[-1] != EOS for j in jobs)


def test_repetition_mask():
    logits = torch.zeros(10)
    assert torch.isinf(generate.mask_repetition(logits, [1, 2, 3, 4, 5, 6, 7, 8, 5, 5])[5])
    assert torch.isinf(generate.mask_repetition(logits, [5, 2, 3, 4, 1, 6, 7, 8, 9, 5])[5])
    assert not torch.isinf(generate.mask_repetition(logits, [1, 2, 3, 4, 0, 6, 7, 8, 9, 5])).any()
    assert not torch.isinf(generate.mask_repetition(logits, [5, 5, 5])).any()  # fewer than 10 ids


def test_rms_norm_rounds_as_the_checkpoint_code_in_bf16(native, remote):
    import copy

    x = torch.randn(4, 7, native.config.hidden_size, generator=torch.Generator().manual_seed(3)).bfloat16()
    mine = copy.deepcopy(native.model.norm).bfloat16()
    theirs = copy.deepcopy(remote.model.norm).bfloat16()
    with torch.no_grad():
        mine.weight.normal_(1.0, 0.1, generator=torch.Generator().manual_seed(4))
        theirs.weight.copy_(mine.weight)
        assert torch.equal(mine(x), theirs(x))
        # rounding the product instead of the rsqrt is a different function in bf16
        var = x.float().pow(2).mean(-1, keepdim=True)
        other = (x.float() * torch.rsqrt(var + mine.eps)).bfloat16() * mine.weight
        assert not torch.equal(mine(x), other)


def test_missing_lm_head_is_tied_to_the_embedding(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(tiny / "Step-Audio-EditX", folder)
    path = folder / "model-00001.safetensors"
    state = load_file(str(path))
    del state["lm_head.weight"]
    save_file(state, str(path))
    model = Step1ForCausalLM.from_folder(folder, "cpu", torch.float32)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
