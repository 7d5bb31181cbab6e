"""Transcription throughput: openai-whisper vs faster-whisper on the same model, side by side.

The same weights for both: the CTranslate2 Whisper base folder the tests use is read back
into an openai-whisper checkpoint (its float16 tensors renamed and unfused), so the two
backends differ only in their runtime. Each backend transcribes the same clips as editx calls
it: every clip alone (`text`, long-form decoding), and all clips of one window together
(`many`, one batch), with the cache off. Reported: seconds of audio per second of wall time,
and the ratio faster-whisper / openai-whisper, with the transcripts' agreement.

    python benchmarks/transcribe.py [--whisper-model DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio  # noqa: E402
from editx_cli.cache import NullCache  # noqa: E402
from editx_cli.qa import error_rate  # noqa: E402
from editx_cli.transcribe import Transcriber  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference-audio"
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin (version 6 layout: spec name, revision, then
    name, rank, shape, dtype, byte count and data for each variable)."""
    with open(path, "rb") as f:
        def take(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        version, = take("<I")
        assert version >= 5, f"model.bin version {version}"
        f.read(take("<H")[0])  # spec name
        take("<I")  # revision
        out = {}
        for _ in range(take("<I")[0]):
            name = f.read(take("<H")[0])[:-1].decode()
            shape = take("<" + "I" * take("<B")[0])
            dtype = CT2_DTYPES[take("<B")[0]]
            data = f.read(take("<I")[0])
            out[name] = np.frombuffer(data, dtype).reshape(shape)
        return out


def to_openai(ct2: dict[str, np.ndarray], dest: Path) -> Path:
    """An openai-whisper checkpoint of the same weights."""
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(ct2[name].astype(np.float32).copy())

    def attention(prefix: str, ct: str, fused_qkv: bool, state: dict) -> None:
        width = ct2[f"{ct}/linear_0/weight"].shape[1]
        if fused_qkv:  # self-attention: q, k, v in one matrix
            w, b = t(f"{ct}/linear_0/weight"), t(f"{ct}/linear_0/bias")
            state.update({f"{prefix}.query.weight": w[:width], f"{prefix}.query.bias": b[:width],
                          f"{prefix}.key.weight": w[width:2 * width], f"{prefix}.value.weight": w[2 * width:],
                          f"{prefix}.value.bias": b[2 * width:], f"{prefix}.out.weight": t(f"{ct}/linear_1/weight"),
                          f"{prefix}.out.bias": t(f"{ct}/linear_1/bias")})
        else:  # cross-attention: q alone, k and v together
            kv, kvb = t(f"{ct}/linear_1/weight"), t(f"{ct}/linear_1/bias")
            state.update({f"{prefix}.query.weight": t(f"{ct}/linear_0/weight"),
                          f"{prefix}.query.bias": t(f"{ct}/linear_0/bias"), f"{prefix}.key.weight": kv[:width],
                          f"{prefix}.value.weight": kv[width:], f"{prefix}.value.bias": kvb[width:],
                          f"{prefix}.out.weight": t(f"{ct}/linear_2/weight"),
                          f"{prefix}.out.bias": t(f"{ct}/linear_2/bias")})
        state[f"{prefix}_ln.weight"] = t(f"{ct}/layer_norm/gamma")
        state[f"{prefix}_ln.bias"] = t(f"{ct}/layer_norm/beta")

    def block(prefix: str, ct: str, cross: bool, state: dict) -> None:
        attention(f"{prefix}.attn", f"{ct}/self_attention", True, state)
        if cross:
            attention(f"{prefix}.cross_attn", f"{ct}/attention", False, state)
        for i, layer in ((0, "linear_0"), (2, "linear_1")):
            state[f"{prefix}.mlp.{i}.weight"], state[f"{prefix}.mlp.{i}.bias"] = \
                t(f"{ct}/ffn/{layer}/weight"), t(f"{ct}/ffn/{layer}/bias")
        state[f"{prefix}.mlp_ln.weight"], state[f"{prefix}.mlp_ln.bias"] = \
            t(f"{ct}/ffn/layer_norm/gamma"), t(f"{ct}/ffn/layer_norm/beta")

    layers = {side: len({k.split("/")[1] for k in ct2 if re.match(rf"{side}/layer_\d+/", k)})
              for side in ("encoder", "decoder")}
    state = {"encoder.conv1.weight": t("encoder/conv1/weight"), "encoder.conv1.bias": t("encoder/conv1/bias"),
             "encoder.conv2.weight": t("encoder/conv2/weight"), "encoder.conv2.bias": t("encoder/conv2/bias"),
             "encoder.positional_embedding": t("encoder/position_encodings/encodings"),
             "encoder.ln_post.weight": t("encoder/layer_norm/gamma"),
             "encoder.ln_post.bias": t("encoder/layer_norm/beta"),
             "decoder.token_embedding.weight": t("decoder/embeddings/weight"),
             "decoder.positional_embedding": t("decoder/position_encodings/encodings"),
             "decoder.ln.weight": t("decoder/layer_norm/gamma"), "decoder.ln.bias": t("decoder/layer_norm/beta")}
    for i in range(layers["encoder"]):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", False, state)
    for i in range(layers["decoder"]):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", True, state)
    vocab, width = ct2["decoder/embeddings/weight"].shape
    dims = {"n_mels": ct2["encoder/conv1/weight"].shape[1],
            "n_audio_ctx": ct2["encoder/position_encodings/encodings"].shape[0],
            "n_audio_state": width, "n_audio_head": int(ct2["encoder/num_heads"]), "n_audio_layer": layers["encoder"],
            "n_vocab": vocab, "n_text_ctx": ct2["decoder/position_encodings/encodings"].shape[0], "n_text_state": width,
            "n_text_head": int(ct2["decoder/num_heads"]), "n_text_layer": layers["decoder"]}
    torch.save({"dims": dims, "model_state_dict": state}, dest)
    return dest


def clips() -> list[tuple[str, np.ndarray, int]]:
    paths = [p for p in sorted((ROOT / "manifests" / "clips").glob("*.wav")) if p.stem != "noisy"]
    if REFERENCE.is_dir():
        paths += sorted(REFERENCE.glob("*.wav"))
    return [(p.stem, *audio.load(p)) for p in paths]


def measure(transcriber: Transcriber, data, repeat: int) -> tuple[float, float, list[str]]:
    """Best seconds over `repeat` runs of each clip alone and of all clips as one batch."""
    transcriber._model()  # loading is not transcribing
    alone, batched = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        texts = [transcriber._text(x, sr) for _, x, sr in data]
        alone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        transcriber.many([(x, sr, f"{name}-{time.perf_counter()}") for name, x, sr in data])
        batched.append(time.perf_counter() - t0)
    return min(alone), min(batched), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper-model", default=str(ROOT / ".test-cache" / "whisper-base-ct2"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folder = Path(args.whisper_model)
    if not (folder / "model.bin").is_file():
        sys.exit(f"no CTranslate2 Whisper in {folder}: run the tests once (make test), or pass --whisper-model")
    data = clips()
    seconds = sum(len(x) / sr for _, x, sr in data)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = to_openai(read_ct2(folder / "model.bin"), Path(tmp) / "base.pt")
        results = {}
        for label, model in (("openai-whisper", str(checkpoint)), ("faster-whisper", str(folder))):
            results[label] = measure(Transcriber(model, args.device, NullCache()), data, args.repeat)
    print(f"{len(data)} clips, {seconds:.1f} s of audio, Whisper base, {args.device}; best of {args.repeat}")
    print(f"  {'backend':16s} {'alone s':>8s} {'audio s/s':>10s} {'batch s':>8s} {'audio s/s':>10s}")
    for label, (alone, batched, _) in results.items():
        print(f"  {label:16s} {alone:8.2f} {seconds / alone:10.1f} {batched:8.2f} {seconds / batched:10.1f}")
    (a0, b0, t0), (a1, b1, t1) = results["openai-whisper"], results["faster-whisper"]
    print(f"  ratio faster / openai: alone x{a0 / a1:.2f}, batch x{b0 / b1:.2f}")
    print("  transcripts, openai vs faster (error rate of one against the other):")
    for (name, *_), x, y in zip(data, t0, t1, strict=True):
        print(f"    {name:26s} {error_rate(x, y)[1] or 0:5.2f}  {y[:60]}")


if __name__ == "__main__":
    main()
