"""Adapter for the checkpoint's own vocoder code (CosyVoice-300M-25Hz, from `--editx-src`).

`cosyvoice.yaml` is read with a restricted loader: `!new:` / `!name:` may only
name classes of the `stepvocoder` package (or torch.nn), `!ref <key>` may only
point inside the file; any other tag, which could run arbitrary Python, is
refused. Weights load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CODE_VERSION = "vocoder-1"
ALLOWED_PREFIXES = ("stepvocoder.", "torch.nn.")
VQ02_PAD = 1024


class UnsafeConfig(ValueError):
    pass


@dataclass
class Tagged:
    tag: str
    value: Any
    line: int


def load_config(path: Path) -> dict:
    """Parse cosyvoice.yaml and construct only what its allowed tags name."""
    raw = read_yaml(path)
    return _build(raw, raw, path)


def read_yaml(path: Path) -> dict:
    """cosyvoice.yaml with its tagged nodes kept as such (built by nothing); a file that is not
    YAML, an alias bomb or anything but a mapping is refused by name."""
    import yaml

    from editx_cli.datafiles import UnsafeFile, check_yaml_aliases, read_text

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return Tagged(suffix, value, node.start_mark.line + 1)

    Loader.add_multi_constructor("!", tagged)
    try:
        text = read_text(path)
        check_yaml_aliases(text, str(path))
        raw = yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise UnsafeConfig(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnsafeFile as e:
        raise UnsafeConfig(str(e)) from None
    except OSError as e:
        raise UnsafeConfig(f"{path}: {e.strerror}") from None
    if not isinstance(raw, dict):
        raise UnsafeConfig(f"{path}: expected a mapping at the top level")
    return raw


def check_tag(kind: str, target: str, where: str) -> None:
    """Only !new: and !name: of a class under the allowed packages (and !ref, looked up apart)."""
    if kind not in ("new", "name"):
        raise UnsafeConfig(f"{where}: tag !{kind}{':' + target if target else ''} is not allowed "
                           "(only !new:, !name: and !ref)")
    if not target.startswith(ALLOWED_PREFIXES):
        raise UnsafeConfig(f"{where}: refusing to construct {target!r}: only classes under "
                           f"{' or '.join(ALLOWED_PREFIXES)} may be named")


def _build(value: Any, root: dict, path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _build(v, root, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v, root, path) for v in value]
    if not isinstance(value, Tagged):
        return value
    kind, _, target = value.tag.partition(":")
    where = f"{path}, line {value.line}"
    if kind == "ref":
        return _build(lookup(root, str(value.value), where), root, path)
    check_tag(kind, target, where)
    module_name, _, attr = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    if not isinstance(obj, type):
        raise UnsafeConfig(f"{where}: {target!r} is not a class")
    args = _build(value.value, root, path)
    if kind == "name":
        return functools.partial(obj, **args) if isinstance(args, dict) else obj
    if isinstance(args, dict):
        return obj(**args)
    if isinstance(args, list):
        return obj(*args)
    return obj() if args in ("", None) else obj(args)


def lookup(root: dict, ref: str, where: str) -> Any:
    m = re.fullmatch(r"<([^<>]+)>", ref.strip())
    if not m:
        raise UnsafeConfig(f"{where}: unsupported !ref {ref!r} (only a plain <key> reference)")
    node: Any = root
    for part in re.findall(r"[^.\[\]]+", m.group(1)):
        if not isinstance(node, dict) or part not in node:
            raise UnsafeConfig(f"{where}: !ref {ref} names nothing in the file")
        node = node[part]
    return node


def reshape(mixed: list[int]) -> torch.Tensor:  # noqa: F821
    """Mixed [02, 02, 06, 06, 06] groups -> time-aligned (1, 3G, 2) pairs at 25 Hz.

    An incomplete last group is padded from [0, 0, 0, 1024, 1024, 1024] as the
    reference does (it calls that tail's audio "wrong anyway").
    """
    import torch

    seq = list(mixed)
    if len(seq) % 5:
        seq += [0, 0, 0, 1024, 1024, 1024][-(5 - len(seq) % 5) :]
    pairs = []
    for g in range(len(seq) // 5):
        a, b, c, d, e = seq[5 * g : 5 * g + 5]
        pairs += [(a, c - 1024 + 1025), (b, d - 1024 + 1025), (VQ02_PAD, e - 1024 + 1025)]
    return torch.tensor(pairs, dtype=torch.long).reshape(1, -1, 2)


class Vocoder:
    def __init__(self, vocoder_dir: Path, editx_src: Path, device: str) -> None:
        import torch

        if str(editx_src) not in sys.path:
            sys.path.insert(0, str(editx_src))
        # The flow draws its noise buffer from the global RNG at construction: seed it so
        # that every run builds the same vocoder (and leave the caller's generator as it was).
        with torch.random.fork_rng(devices=self._devices(device)):
            torch.manual_seed(0)
            self.config = load_config(vocoder_dir / "cosyvoice.yaml")
        for key in ("flow", "hift", "mel_conf"):
            if key not in self.config:
                raise UnsafeConfig(f"{vocoder_dir / 'cosyvoice.yaml'}: no top-level {key!r}")
        self.flow, self.hift = self.config["flow"], self.config["hift"]
        self.flow.load_state_dict(load_weights(vocoder_dir / "flow.pt"))
        self.hift.load_state_dict(load_weights(vocoder_dir / "hift.pt"))
        self.flow = self.flow.to(device, torch.float32).eval()
        self.hift = self.hift.to(device, torch.float32).eval()
        self.mel_conf = self.config["mel_conf"]
        self.device = device
        self.sample_rate = int(self.mel_conf["sampling_rate"])

    @staticmethod
    def _devices(device: str) -> list:
        return [device] if device.startswith("cuda") else []

    def __call__(self, jobs: list) -> list[np.ndarray]:
        """token2wav.VocodeJob's in, their audio out: a task at a time, as the reference runs."""
        return [self.one(j.tokens, j.prompt_tokens, j.prompt_mel, j.embedding, j.seed) for j in jobs]

    def one(self, tokens: list[int], prompt_tokens: list[int], prompt_mel: np.ndarray,
            embedding: np.ndarray, seed: int = 0) -> np.ndarray:
        """Generated and prompt tokens (mixed N values) + prompt features -> mono float32 audio.

        HiFT's source module draws random phases and noise from the global generator on every
        call; run under a generator seeded from the task's seed alone, the audio is a function
        of the task, not of how many tasks this process vocoded before it."""
        import torch
        import torch.nn.functional as F

        token = reshape(tokens).to(self.device)
        prompt = reshape(prompt_tokens).to(self.device)
        # The wrapper hands the vocoder bf16-rounded features; keep that rounding.
        feat = torch.from_numpy(prompt_mel)[None].to(torch.bfloat16).float()
        emb = torch.from_numpy(embedding)[None].to(torch.bfloat16).float().to(self.device)
        # The prompt mel (untrimmed audio) is stretched to the prompt tokens (trimmed
        # audio) by nearest neighbour, as the reference does.
        feat = F.interpolate(feat.transpose(1, 2), size=prompt.shape[1] * 2, mode="nearest").transpose(1, 2)
        feat = feat.to(self.device)

        def length(t):
            return torch.tensor([t.shape[1]], dtype=torch.long, device=self.device)

        # The task's randomness, drawn as editx's own vocoder draws it (token2wav.py): the flow's
        # noise first, into the buffer the official flow slices, then HiFT's draws on the CPU
        # continue from the same generator; on CUDA, HiFT draws from the device's, seeded alike.
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(1, self.flow.decoder.rand_noise.shape[1], 2 * (token.shape[1] + prompt.shape[1]),
                            generator=g)
        with torch.random.fork_rng(devices=self._devices(self.device)), torch.inference_mode():
            self.flow.decoder.rand_noise[:, :, :noise.shape[2]] = noise.to(self.device)
            torch.set_rng_state(g.get_state())
            if self.device.startswith("cuda"):
                torch.cuda.manual_seed(int(seed))
            mel = self.flow.inference(token, length(token), prompt, length(prompt), feat, length(feat), emb, 10)
            if type(self.hift).__name__ == "BigVGAN":  # its first conv has no padding
                speech = self.hift.inference(F.pad(mel, (3, 3), mode="reflect")).squeeze(0)
            else:
                speech, _ = self.hift.inference(mel)
        return speech.float().cpu().numpy().reshape(-1)


def load_weights(path: Path) -> dict:
    """A state dict of plain tensors; a file holding any other Python object is refused unread
    (weights_only), and every failure names the file."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeConfig(f"{path}: refused: it holds Python objects, not only tensors "
                           "(loading it could run code)") from None
    except Exception as e:
        raise UnsafeConfig(f"{path}: not a readable weights file ({str(e).splitlines()[0][:120]})") from None
