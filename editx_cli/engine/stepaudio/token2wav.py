"""editx's own token2wav: the model folder's CosyVoice-300M-25Hz vocoder, read as data.

`cosyvoice.yaml` is parsed for its values only: its `!new:` / `!name:` tags name classes of
the official code, which editx neither imports nor runs; a tag becomes the mapping it
carries, and `!ref <key>` is looked up inside the file. The values (where a key is absent,
the official constructor's default) shape editx's Flow and HiFT, and every tensor of
`flow.pt` and `hift.pt` (weights-only loads) must fit them: a mismatch is one line naming
the file, the tensor and both shapes.

Vocoding takes many tasks at once: their flows run as one batch, and their HiFTs as
another (flow.py and hift.py say how an item stays what it would be alone). Each task's
randomness comes from a generator seeded by the task's seed, drawn in this order: the
flow's noise (1, 80, 2 x (prompt + generated token frames)), then the HiFT source's initial
phases (1, 9) and its noise (sine-major, see hift.source_noise); a rerun is identical,
whatever else the run vocodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from editx_cli.engine.stepaudio.vocoder import Tagged, UnsafeConfig, check_tag, lookup, read_yaml, reshape

CODE_VERSION = "token2wav-1"
DTYPES = ("float32", "bfloat16", "float16")

# The official constructors' defaults, for a key the yaml leaves out (as they would take it)
ENCODER_DEFAULTS = {"output_size": 256, "attention_heads": 4, "linear_units": 2048, "num_blocks": 6,
                    "num_up_blocks": 4, "pre_lookahead_len": 3, "up_stride": 2}
DIT_DEFAULTS = {"hidden_size": 256, "depth": 28, "num_heads": 8, "head_dim": 64, "mlp_ratio": 4.0}
HIFT_DEFAULTS = {"in_channels": 80, "base_channels": 512, "nb_harmonics": 8, "sampling_rate": 22050,
                 "nsf_alpha": 0.1, "nsf_sigma": 0.003, "nsf_voiced_threshold": 10, "upsample_rates": [8, 8],
                 "upsample_kernel_sizes": [16, 16], "istft_params": {"n_fft": 16, "hop_len": 4},
                 "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5]] * 3,
                 "source_resblock_kernel_sizes": [7, 11], "source_resblock_dilation_sizes": [[1, 3, 5]] * 2,
                 "lrelu_slope": 0.1, "audio_limit": 0.99}


@dataclass
class VocodeJob:
    tokens: list[int]  # generated mixed ids (N, not +65536)
    prompt_tokens: list[int]  # the prompt's mixed ids
    prompt_mel: np.ndarray  # (frames, 80) at 50 Hz, from the untrimmed prompt audio
    embedding: np.ndarray  # (192,) CAM++
    seed: int


@dataclass(frozen=True)
class VocoderConfig:
    flow: Any  # flow.FlowShape
    hift: Any  # hift.HiftShape
    mel_conf: dict
    cfg_rate: float


def read_config(path: Path) -> VocoderConfig:
    """cosyvoice.yaml's values, as data."""
    from editx_cli.engine.stepaudio.flow import FlowShape
    from editx_cli.engine.stepaudio.hift import HiftShape

    raw = _values(path)
    where = str(path)
    for key in ("flow", "hift", "mel_conf"):
        if not isinstance(raw.get(key), dict):
            raise UnsafeConfig(f"{where}: no top-level {key!r} mapping")
    flow, hift = raw["flow"], raw["hift"]
    if "HiFTGenerator" not in hift.get("__class__", "HiFTGenerator"):
        raise UnsafeConfig(f"{where}: hift is {hift['__class__']}; editx's vocoder is HiFT (HiFTGenerator): "
                           "use --vocoder official for this folder")
    encoder = {**ENCODER_DEFAULTS, **_mapping(flow, "encoder", where)}
    decoder = _mapping(flow, "decoder", where)
    dit = {**DIT_DEFAULTS, **_mapping(decoder, "estimator", where)}
    h = {**HIFT_DEFAULTS, **{k: v for k, v in hift.items() if not k.startswith("__")}}
    f0 = _mapping(hift, "f0_predictor", where)
    try:
        flow_shape = FlowShape(vocab=int(flow.get("vocab_size", 5121)), width=int(flow.get("input_size", 512)),
                               mel=int(flow.get("output_size", 80)), speaker=int(flow.get("spk_embed_dim", 192)),
                               heads=int(encoder["attention_heads"]), ff=int(encoder["linear_units"]),
                               blocks=int(encoder["num_blocks"]), up_blocks=int(encoder["num_up_blocks"]),
                               lookahead=int(encoder["pre_lookahead_len"]), up_stride=int(encoder["up_stride"]),
                               dit_width=int(dit["hidden_size"]), dit_depth=int(dit["depth"]),
                               dit_heads=int(dit["num_heads"]), dit_head_dim=int(dit["head_dim"]),
                               dit_mlp_ratio=float(dit["mlp_ratio"]))
        if int(encoder["output_size"]) != flow_shape.width:
            raise UnsafeConfig(f"{where}: flow.encoder.output_size {encoder['output_size']} is not flow.input_size "
                               f"{flow_shape.width}")
        hift_shape = HiftShape(mel=int(h["in_channels"]), base=int(h["base_channels"]),
                               harmonics=int(h["nb_harmonics"]), sample_rate=int(h["sampling_rate"]),
                               sine_amp=float(h["nsf_alpha"]), noise_std=float(h["nsf_sigma"]),
                               voiced_threshold=float(h["nsf_voiced_threshold"]),
                               upsample_rates=tuple(int(r) for r in h["upsample_rates"]),
                               upsample_kernels=tuple(int(k) for k in h["upsample_kernel_sizes"]),
                               n_fft=int(h["istft_params"]["n_fft"]), hop=int(h["istft_params"]["hop_len"]),
                               resblock_kernels=tuple(int(k) for k in h["resblock_kernel_sizes"]),
                               resblock_dilations=tuple(tuple(int(d) for d in ds)
                                                        for ds in h["resblock_dilation_sizes"]),
                               source_kernels=tuple(int(k) for k in h["source_resblock_kernel_sizes"]),
                               source_dilations=tuple(tuple(int(d) for d in ds)
                                                      for ds in h["source_resblock_dilation_sizes"]),
                               lrelu_slope=float(h["lrelu_slope"]), audio_limit=float(h["audio_limit"]),
                               f0_channels=int(f0.get("cond_channels", 512)))
        mel_conf = {k: raw["mel_conf"][k] for k in ("num_mels", "n_fft", "hop_size", "win_size", "sampling_rate",
                                                    "fmin", "fmax")}
        cfg_rate = float(decoder.get("inference_cfg_rate", 0.7))
    except (KeyError, TypeError, ValueError) as e:
        raise UnsafeConfig(f"{where}: an unusable vocoder setting ({type(e).__name__}: {e})") from None
    if len(hift_shape.upsample_rates) != len(hift_shape.source_kernels):
        raise UnsafeConfig(f"{where}: hift has {len(hift_shape.upsample_rates)} upsampling stages but "
                           f"{len(hift_shape.source_kernels)} source resblocks")
    if hift_shape.n_fft % hift_shape.hop:
        raise UnsafeConfig(f"{where}: hift's istft n_fft {hift_shape.n_fft} is not a multiple of its hop_len "
                           f"{hift_shape.hop}")
    if hift_shape.samples_per_frame != int(mel_conf["hop_size"]):
        raise UnsafeConfig(f"{where}: hift makes {hift_shape.samples_per_frame} samples a mel frame, mel_conf's "
                           f"hop_size is {mel_conf['hop_size']}")
    return VocoderConfig(flow_shape, hift_shape, mel_conf, cfg_rate)


def _mapping(parent: dict, key: str, where: str) -> dict:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise UnsafeConfig(f"{where}: {key} is not a mapping")
    return value


def _values(path: Path) -> dict:
    """The yaml as plain data: a tagged node becomes its mapping with `__class__` naming the
    tag's target (checked as the official loader checks it, and built by nothing); a `!ref`
    is replaced by what it names in the file."""
    raw = read_yaml(path)
    return _data(raw, raw, path, 0)


def _data(value: Any, root: dict, path: Path, depth: int) -> Any:
    if depth > 20:
        raise UnsafeConfig(f"{path}: !ref chains nest too deep")
    if isinstance(value, Tagged):
        kind, _, target = value.tag.partition(":")
        where = f"{path}, line {value.line}"
        if kind == "ref":
            return _data(lookup(root, str(value.value), where), root, path, depth + 1)
        check_tag(kind, target, where)
        fields = _data(value.value, root, path, depth) if isinstance(value.value, dict) else {}
        return {"__class__": target, **fields}
    if isinstance(value, dict):
        return {k: _data(v, root, path, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_data(v, root, path, depth) for v in value]
    return value


def _fit(module, state: dict, path: Path) -> None:
    """Load state into module, every tensor present and of its shape, or one line saying which."""
    own = module.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise UnsafeConfig(f"{path}: no tensor {key} (cosyvoice.yaml describes a model that has one)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UnsafeConfig(f"{path}: {key} is {tuple(state[key].shape)}, cosyvoice.yaml makes it "
                               f"{tuple(tensor.shape)}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise UnsafeConfig(f"{path}: tensors cosyvoice.yaml does not describe, e.g. {extra[0]} "
                           f"({len(extra)} in all)")
    module.load_state_dict(state, strict=True)


class Token2Wav:
    def __init__(self, flow, hift, mel_conf: dict, device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        self.dtype = getattr(torch, dtype)
        self.device = device
        self.flow = flow.to(device, self.dtype).eval()
        self.hift = hift.to(device, self.dtype).eval()
        self.mel_conf = mel_conf
        self.sample_rate = int(mel_conf["sampling_rate"])

    @classmethod
    def from_folder(cls, folder: Path, device: str = "cpu", dtype: str = "float32") -> Token2Wav:
        """The model folder's vocoder: cosyvoice.yaml's values, flow.pt and hift.pt fitted to them."""
        from editx_cli.engine.stepaudio.flow import Flow
        from editx_cli.engine.stepaudio.hift import HiFT, fold_weight_norm
        from editx_cli.engine.stepaudio.vocoder import load_weights

        config = read_config(folder / "cosyvoice.yaml")
        if abs(config.cfg_rate - 0.7) > 1e-9:
            raise UnsafeConfig(f"{folder / 'cosyvoice.yaml'}: inference_cfg_rate {config.cfg_rate}; editx's "
                               "flow uses 0.7")
        flow, hift = Flow(config.flow), HiFT(config.hift)
        _fit(flow, load_weights(folder / "flow.pt"), folder / "flow.pt")
        _fit(hift, fold_weight_norm(load_weights(folder / "hift.pt")), folder / "hift.pt")
        return cls(flow, hift, config.mel_conf, device, dtype)

    def __call__(self, jobs: list[VocodeJob]) -> list[np.ndarray]:
        """Each job's 24 kHz float32 waveform, 480 samples per generated mel frame."""
        import torch
        import torch.nn.functional as F
        from torch.nn.utils.rnn import pad_sequence

        from editx_cli.engine.stepaudio.hift import source_noise

        mel_width = self.flow.shape.mel
        prompts, tokens, mels, speakers, noises, generators = [], [], [], [], [], []
        for job in jobs:
            prompt, gen = reshape(job.prompt_tokens)[0], reshape(job.tokens)[0]
            # the reference hands over bf16-rounded features and stretches the prompt's mel (untrimmed
            # audio) to its tokens (trimmed audio) by nearest neighbour, on the CPU, before the device
            mel = torch.from_numpy(np.asarray(job.prompt_mel, np.float32))[None].to(torch.bfloat16).float()
            mel = F.interpolate(mel.transpose(1, 2), size=2 * len(prompt), mode="nearest").transpose(1, 2)[0]
            speaker = torch.from_numpy(np.asarray(job.embedding, np.float32))[None].to(torch.bfloat16).float()
            g = torch.Generator().manual_seed(int(job.seed))
            noises.append(torch.randn(1, mel_width, 2 * (len(prompt) + len(gen)), generator=g)[0])
            generators.append(g)
            prompts.append(prompt.to(self.device))
            tokens.append(gen.to(self.device))
            mels.append(mel.to(self.device, self.dtype))
            speakers.append(speaker)
        with torch.inference_mode():
            mels = self.flow(prompts, tokens, mels, torch.cat(speakers).to(self.device, self.dtype),
                             [n.to(self.device, self.dtype) for n in noises])
            frames = [mel.shape[1] for mel in mels]
            source = [source_noise(g, *self.hift.source_noise_shape(n))[0] for g, n in zip(generators, frames,
                                                                                              strict=True)]
            waves = self.hift(pad_sequence([mel.T for mel in mels], batch_first=True).transpose(1, 2),
                              pad_sequence(source, batch_first=True).to(self.device, self.dtype), frames)
            waves = waves.float().cpu().numpy()
        return [waves[i, :n * self.hift.shape.samples_per_frame] for i, n in enumerate(frames)]
