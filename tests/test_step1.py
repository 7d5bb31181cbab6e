"""The native Step1 LLM against the checkpoint-style remote code, padding, and guided sampling."""

from __future__ import annotations

import pytest
import torch

from editx_cli.engine.stepaudio import generate
from editx_cli.engine.stepaudio.step1 import Step1ForCausalLM, alibi_slopes


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


def native_forward(model):
    def forward(ids, mask, past):
        logits, past = model(ids, mask, past)
        return logits[:, -1], past

    def reorder(past, index):
        return [(k[index], v[index]) for k, v in past]

    return forward, reorder


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


def test_left_padded_row_generates_as_the_prompt_alone(native, remote):
    short, long = prompt(25, 2), prompt(60, 3)
    forward, reorder = native_forward(native)
    alone = generate.run([generate.Job(short, seed=7, budget=30)], forward, reorder, "cpu")[0].tokens
    batched = generate.run([generate.Job(long, seed=5, budget=30), generate.Job(short, seed=7, budget=30)],
                           forward, reorder, "cpu")
    assert batched[1].tokens == alone
    # The checkpoint's own code lets real tokens attend to the padding: the same row differs.
    padded = torch.tensor([[0] * 35 + short])
    mask = torch.tensor([[0] * 35 + [1] * 25])
    with torch.no_grad():
        theirs_padded = remote(input_ids=padded, attention_mask=mask).logits[0, -1]
        theirs_alone = remote(input_ids=torch.tensor([short])).logits[0, -1]
        mine_padded, _ = native(padded, mask.bool())
    assert not torch.allclose(theirs_padded, theirs_alone, atol=1e-3)
    assert torch.allclose(mine_padded[0, -1], theirs_alone.float(), atol=1e-4)


def test_guided_tokens_follow_l_ref_plus_w_times_the_difference(native):
    """Decode with guidance in one padded batch, then replay each step on unpadded
    prompts alone: every token is the draw from l_ref + w (l_edit - l_ref)."""
    edit, ref, w = prompt(30, 4), prompt(45, 5), 2.0
    forward, reorder = native_forward(native)
    job = generate.run([generate.Job(edit, seed=11, budget=12, guidance=w, reference=ref)],
                       forward, reorder, "cpu")[0]
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for k, token in enumerate(job.tokens):
            l_edit = native(torch.tensor([edit + job.tokens[:k]]), torch.ones(1, 30 + k, dtype=torch.bool))[0][0, -1]
            l_ref = native(torch.tensor([ref + job.tokens[:k]]), torch.ones(1, 45 + k, dtype=torch.bool))[0][0, -1]
            guided = l_ref + w * (l_edit - l_ref)
            assert torch.allclose(generate.guide(l_edit, l_ref, w), guided)
            expected = generate.draw(generate.mask_repetition(guided, edit + job.tokens[:k]), gen)
            assert token == expected, k
    # w = 1 needs no reference row: it is the plain model
    plain = generate.run([generate.Job(edit, seed=11, budget=12, guidance=1.0, reference=ref)],
                         forward, reorder, "cpu")[0]
    alone = generate.run([generate.Job(edit, seed=11, budget=12)], forward, reorder, "cpu")[0]
    assert plain.tokens == alone.tokens != job.tokens


def test_budget_ends_a_runaway_decode(native):
    forward, reorder = native_forward(native)
    jobs = generate.run([generate.Job(prompt(40, s), seed=s, budget=25) for s in range(4)], forward, reorder, "cpu")
    assert all(len(j.tokens) <= 25 for j in jobs)
    assert any(len(j.tokens) == 25 and j.tokens[-1] != generate.EOS for j in jobs)


def test_repetition_mask():
    logits = torch.zeros(10)
    assert torch.isinf(generate.mask_repetition(logits, [1, 2, 3, 4, 5, 6, 7, 8, 5, 5])[5])
    assert torch.isinf(generate.mask_repetition(logits, [5, 2, 3, 4, 1, 6, 7, 8, 9, 5])[5])
    assert not torch.isinf(generate.mask_repetition(logits, [1, 2, 3, 4, 0, 6, 7, 8, 9, 5])).any()
    assert not torch.isinf(generate.mask_repetition(logits, [5, 5, 5])).any()  # fewer than 10 ids


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
