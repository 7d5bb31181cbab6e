"""editx's own vocoder (flow + HiFT) against the official `stepvocoder` code, on random
weights with every parameter drawn (a fresh DiT outputs exactly zero, so parity on fresh
weights proves nothing), at a reduced shape and at the released one, with the same noise
given to both: flow mel <= 1e-4, HiFT waveform <= 1e-4, whole token2wav <= 1e-3 (fp32, CPU).

The official code is a reference for tests only: it is imported here from the checkout
EDITX_SRC names (CI points it at the shared copy), never by editx itself. Without it, the
batching tests still run (an item alone and among others gives the same samples)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from editx_cli.engine.stepaudio import flow as native_flow
from editx_cli.engine.stepaudio import hift as native_hift
from editx_cli.engine.stepaudio.vocoder import reshape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from make_tiny_checkpoints import randomise  # noqa: E402  (every parameter drawn, as the tiny vocoder's)

SRC = os.environ.get("EDITX_SRC")
OFFICIAL = SRC is not None and (Path(SRC) / "stepvocoder" / "cosyvoice2" / "flow" / "flow.py").is_file()
needs_official = pytest.mark.skipif(not OFFICIAL, reason="EDITX_SRC names no checkout with the official stepvocoder")

REDUCED = {"flow": native_flow.FlowShape(width=64, heads=4, ff=128, blocks=2, up_blocks=2, dit_width=64, dit_depth=2,
                                         dit_heads=4, dit_head_dim=16),
           "hift": native_hift.HiftShape(base=32, f0_channels=32)}
RELEASED = {"flow": native_flow.FlowShape(), "hift": native_hift.HiftShape()}


def _official():
    if SRC not in sys.path:
        sys.path.insert(0, SRC)
    from stepvocoder.cosyvoice2.embedding.dual_codebook import DualCodebookEmbedding
    from stepvocoder.cosyvoice2.flow.decoder_dit import DiT
    from stepvocoder.cosyvoice2.flow.flow import CausalMaskedDiffWithXvec
    from stepvocoder.cosyvoice2.flow.flow_matching import CausalConditionalCFM
    from stepvocoder.cosyvoice2.hifigan.f0_predictor import ConvRNNF0Predictor
    from stepvocoder.cosyvoice2.hifigan.generator import HiFTGenerator
    from stepvocoder.cosyvoice2.transformer.upsample_encoder_v2 import UpsampleConformerEncoderV2

    return {"embedding": DualCodebookEmbedding, "dit": DiT, "flow": CausalMaskedDiffWithXvec,
            "cfm": CausalConditionalCFM, "f0": ConvRNNF0Predictor, "hift": HiFTGenerator,
            "encoder": UpsampleConformerEncoderV2}


def official_flow(s: native_flow.FlowShape):
    o = _official()
    encoder = o["encoder"](input_size=s.width, output_size=s.width, input_layer="linear", pre_lookahead_len=s.lookahead,
                           num_blocks=s.blocks, num_up_blocks=s.up_blocks, up_stride=s.up_stride,
                           up_scale_factor=s.up_stride, attention_heads=s.heads, linear_units=s.ff)
    dit = o["dit"](in_channels=4 * s.mel, out_channels=s.mel, mlp_ratio=s.dit_mlp_ratio, depth=s.dit_depth,
                   num_heads=s.dit_heads, head_dim=s.dit_head_dim, hidden_size=s.dit_width)
    return o["flow"](input_size=s.width, output_size=s.mel, spk_embed_dim=s.speaker, vocab_size=s.vocab,
                     encoder=encoder, decoder=o["cfm"](dit, inference_cfg_rate=0.7),
                     input_embedding=o["embedding"](s.vocab, s.width)).eval()


def official_hift(s: native_hift.HiftShape):
    o = _official()
    return o["hift"](in_channels=s.mel, base_channels=s.base, nb_harmonics=s.harmonics, sampling_rate=s.sample_rate,
                     nsf_alpha=s.sine_amp, nsf_sigma=s.noise_std, nsf_voiced_threshold=s.voiced_threshold,
                     upsample_rates=list(s.upsample_rates), upsample_kernel_sizes=list(s.upsample_kernels),
                     istft_params={"n_fft": s.n_fft, "hop_len": s.hop},
                     resblock_kernel_sizes=list(s.resblock_kernels),
                     resblock_dilation_sizes=[list(d) for d in s.resblock_dilations],
                     source_resblock_kernel_sizes=list(s.source_kernels),
                     source_resblock_dilation_sizes=[list(d) for d in s.source_dilations],
                     lrelu_slope=s.lrelu_slope, audio_limit=s.audio_limit,
                     f0_predictor=o["f0"](num_class=1, in_channels=s.mel, cond_channels=s.f0_channels)).eval()


def _tokens(groups: int, extra: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(groups):
        out += torch.randint(0, 1024, (2,), generator=g).tolist()
        out += torch.randint(1024, 5120, (3,), generator=g).tolist()
    return out[: 5 * groups - (5 - extra) % 5] if extra else out


def _case(s: native_flow.FlowShape, prompt_groups: int, groups: int, extra: int, seed: int):
    prompt = reshape(_tokens(prompt_groups, 0, seed))[0]
    gen = reshape(_tokens(groups, extra, seed + 1))[0]
    g = torch.Generator().manual_seed(seed + 2)
    mel = torch.randn(2 * len(prompt), s.mel, generator=g) * 2 - 5
    speaker = torch.randn(1, s.speaker, generator=g)
    return prompt, gen, mel, speaker


def _native(shape, official_module, native_module):
    native_module.load_state_dict(native_hift.fold_weight_norm(official_module.state_dict()), strict=True)
    return native_module.eval()


@needs_official
@pytest.mark.parametrize("config", ["reduced", "released"])
def test_the_flow_equals_the_official_flow(config):
    s = (REDUCED if config == "reduced" else RELEASED)["flow"]
    torch.manual_seed(0)
    official = official_flow(s)
    randomise(official, 1, scale=0.5)
    native = _native(s, official, native_flow.Flow(s))
    noise = torch.randn(1, s.mel, 30000, generator=torch.Generator().manual_seed(9))
    official.decoder.rand_noise.copy_(noise)
    cases = [(3, 4, 0), (5, 7, 2), (2, 9, 1)] if config == "reduced" else [(4, 6, 3)]
    with torch.inference_mode():
        for prompt_groups, groups, extra in cases:  # prompts of several lengths; full and partial last groups
            prompt, gen, mel, speaker = _case(s, prompt_groups, groups, extra, prompt_groups * 10 + groups)
            want = official.inference(gen[None], torch.tensor([len(gen)]), prompt[None], torch.tensor([len(prompt)]),
                                      mel[None], torch.tensor([len(mel)]), speaker, 10)
            want = want[0] if isinstance(want, tuple) else want
            (got,) = native([prompt], [gen], [mel], speaker, [noise[0]])
            assert got.shape == want[0].shape == (s.mel, 2 * len(gen))
            assert want.abs().max() > 1e-2  # the flow did something: random weights everywhere
            assert (got - want[0]).abs().max() <= 1e-4, (config, prompt_groups, groups, extra)


def _source_noise(seed: int, samples: int, sines: int) -> torch.Tensor:
    return native_hift.source_noise(torch.Generator().manual_seed(seed), samples, sines)


@needs_official
@pytest.mark.parametrize("config", ["reduced", "released"])
def test_hift_equals_the_official_hift(config):
    s = (REDUCED if config == "reduced" else RELEASED)["hift"]
    torch.manual_seed(0)
    official = official_hift(s)
    randomise(official, 2, scale=0.5)
    native = _native(s, official, native_hift.HiFT(s))
    g = torch.Generator().manual_seed(5)
    for frames in (7, 23):
        mel = torch.randn(1, s.mel, frames, generator=g) * 2 - 5
        with torch.inference_mode():
            torch.manual_seed(77)  # the official source draws from the global generator
            want, _ = official.inference(mel)
            got = native(mel, _source_noise(77, *native.source_noise_shape(frames)))
        assert got.shape == want.shape == (1, 480 * frames)
        assert 1e-3 < want.abs().max() < s.audio_limit  # neither silent nor clamped throughout
        assert (got - want).abs().max() <= 1e-4, (config, frames)


@pytest.mark.parametrize("mode", ["items", "masked"])
def test_an_item_alone_and_among_seven_others_is_the_same(mode):
    """Batched flow: right padding, masks and the zeroed embedding make each item's mel its
    own: to the sample in fp32 on the CPU with attention item by item (the CPU's path), within
    1e-5 with one masked attention call for all rows (the GPU's; VOCODER_FACTS 11.3 measures
    3e-6)."""
    s = REDUCED["flow"]
    torch.manual_seed(0)
    model = native_flow.Flow(s).eval()
    randomise(model, 3, scale=0.5)
    cases = [_case(s, 2 + i % 3, 3 + 2 * i, i % 5, 100 + i) for i in range(8)]
    noises = [torch.randn(s.mel, 400, generator=torch.Generator().manual_seed(200 + i)) for i in range(8)]
    with torch.inference_mode():
        model.attention = mode
        together = model([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases],
                         torch.cat([c[3] for c in cases]), noises)
        model.attention = native_flow.ITEMS
        for i, (prompt, gen, mel, speaker) in enumerate(cases):
            (alone,) = model([prompt], [gen], [mel], speaker, [noises[i]])
            if mode == native_flow.ITEMS:
                assert torch.equal(alone, together[i]), i
            else:
                assert (alone - together[i]).abs().max() <= 1e-5 * max(1.0, alone.abs().max()), i
    rows = native_flow.Rows.of([3, 5], 5, torch.device("cpu"), native_flow.MASKED)
    assert rows.mask is not None and rows.mask.sum() == 8  # the short row keeps its 3 keys


def test_a_task_vocoded_alone_and_among_five_others_is_the_same(tiny):
    """Flow and HiFT each run once for all tasks of a call (HiFT's padding zeroed again after
    every convolution, its phase and reflections kept to each task's own end): a task's audio
    is the same, to the sample, alone and among others of other lengths."""
    from editx_cli.engine.stepaudio.token2wav import Token2Wav, VocodeJob

    vocoder = Token2Wav.from_folder(tiny / "Step-Audio-EditX" / "CosyVoice-300M-25Hz")
    g = np.random.default_rng(1)

    def job(groups: int, prompt_groups: int, seed: int) -> VocodeJob:
        ids = np.column_stack([g.integers(0, 1024, (groups + prompt_groups, 2)),
                               g.integers(1024, 5120, (groups + prompt_groups, 3))]).ravel()
        ids = [int(i) for i in ids]
        return VocodeJob(ids[:5 * groups], ids[5 * groups:], g.standard_normal((6 * prompt_groups, 80)).astype(
            np.float32) * 2 - 5, g.standard_normal(192).astype(np.float32), seed)

    jobs = [job(3 + 4 * i, 2 + i % 3, i) for i in range(6)]
    together = vocoder(jobs)
    for i, one in enumerate(jobs):
        (alone,) = vocoder([one])
        assert len(alone) == len(together[i]) == 480 * 2 * 3 * (3 + 4 * i)
        assert np.array_equal(alone, together[i]), i


def test_the_thread_count_changes_nothing(tiny):
    """Workers run with fewer threads than one process: a convolution's or an FFT's sums would
    follow the thread count; the vocoder's do not."""
    from editx_cli.engine.stepaudio.token2wav import Token2Wav, VocodeJob

    vocoder = Token2Wav.from_folder(tiny / "Step-Audio-EditX" / "CosyVoice-300M-25Hz")
    g = np.random.default_rng(1)
    tokens = [int(v) for v in np.column_stack([g.integers(0, 1024, (40, 2)), g.integers(1024, 5120, (40, 3))]).ravel()]
    job = VocodeJob(tokens[:150], tokens[150:], g.standard_normal((40, 80)).astype(np.float32) * 2 - 5,
                    g.standard_normal(192).astype(np.float32), 11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        (one,) = vocoder([job])
        torch.set_num_threads(max(2, threads))
        (many,) = vocoder([job])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, many)


# -- in editx: the model folder alone, checked as data ----------------------------------------


def _copy(tiny, tmp_path):
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root, symlinks=True)
    return root, root / "Step-Audio-EditX" / "CosyVoice-300M-25Hz"


def _edit(root, out, *extra):
    from conftest import CLIPS, invoke, model_args

    return invoke("edit", CLIPS / "narration.wav", "--type", "emotion", "--info", "sad", "--audio-text",
                  "I didn't keep every voice clip consistent.", *model_args(root), "-o", out, "--seed", "5", *extra)


@needs_official
def test_editx_gives_the_official_vocoders_audio_with_its_own(tiny, tmp_path):
    """The same task, seed and tokens through `--vocoder official` (the checkout's code, its noise
    drawn from the task's seed as editx draws its own) and editx's: the same samples."""
    import soundfile as sf

    native, official = tmp_path / "native.wav", tmp_path / "official.wav"
    assert _edit(tiny, native).exit_code == 0
    r = _edit(tiny, official, "--vocoder", "official", "--editx-src", SRC)
    assert r.exit_code == 0, r.stderr
    a, b = sf.read(native)[0], sf.read(official)[0]
    assert len(a) == len(b) and np.abs(a).max() > 1e-3
    assert np.abs(a - b).max() <= 1e-4  # 16-bit files: within a few steps of 1/32768


def test_a_weights_file_of_another_shape_is_named(tiny, tmp_path):
    root, folder = _copy(tiny, tmp_path)
    state = torch.load(folder / "flow.pt", weights_only=True)
    state["encoder_proj.weight"] = torch.zeros(80, 32)
    torch.save(state, folder / "flow.pt")
    r = _edit(root, tmp_path / "o.wav")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert (f"{folder / 'flow.pt'}: encoder_proj.weight is (80, 32), cosyvoice.yaml makes it (80, 64)"
            in r.stderr)
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize(("change", "message"), [
    (("hift: !new:stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator",
      "hift: !new:stepvocoder.cosyvoice2.bigvgan.bigvgan.BigVGAN"),
     ": hift is stepvocoder.cosyvoice2.bigvgan.bigvgan.BigVGAN; editx's vocoder is HiFT (HiFTGenerator): use "
     "--vocoder official for this folder"),
    (("upsample_rates: [8, 5, 3]", "upsample_rates: [8, 5, 2]"),
     ": hift makes 320 samples a mel frame, mel_conf's hop_size is 480"),
    (("hop_size: 480", "hop_size: !ref <nowhere>"), ", line 6: !ref <nowhere> names nothing in the file"),
])
def test_a_vocoder_config_editx_cannot_build_is_named(tiny, tmp_path, change, message):
    root, folder = _copy(tiny, tmp_path)
    yaml_path = folder / "cosyvoice.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(*change))
    r = _edit(root, tmp_path / "o.wav")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{yaml_path}{message}" in r.stderr, r.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_vocoder_runs_in_half_precision(tiny, tmp_path, dtype):
    import soundfile as sf

    full, half = tmp_path / "f32.wav", tmp_path / f"{dtype}.wav"
    assert _edit(tiny, full).exit_code == 0
    r = _edit(tiny, half, "--vocoder-dtype", dtype)
    assert r.exit_code == 0, r.stderr
    a, b = sf.read(full)[0], sf.read(half)[0]
    assert len(a) == len(b) and np.isfinite(b).all() and not np.array_equal(a, b)
