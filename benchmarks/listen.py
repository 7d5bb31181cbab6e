"""What a real ASR hears in the dsp engine's edits, before and after, side by side in one run.

Each clip is transcribed by a real Whisper (base, CTranslate2, through faster-whisper, beam 5);
each edit's output is transcribed by the same model, and its word error rate (character error
rate for Chinese) is taken against the transcript of its input: what the edit lost of the words.

- before: speed through librosa's phase vocoder, vad with a 50 ms margin around speech (the
  engine's former choices); after: the engine as it is (Rubber Band, a 120 ms margin).
- whole vs chunked: a long file (the clips end to end with 0.45 s pauses, ~120 s) edited whole
  and cut at 20 s (`--chunk-seconds 20`), with its output's length against the input's.

Clips: the shipped ones, and ../shared/reference-audio/ when present. The Whisper folder is
the tests' (`make test` assembles it in .test-cache/), or --whisper-model.

    python benchmarks/listen.py [--whisper-model DIR] [--long-seconds 120]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio  # noqa: E402
from editx_cli.cache import NullCache  # noqa: E402
from editx_cli.engine import Request, dsp  # noqa: E402
from editx_cli.qa import error_rate  # noqa: E402
from editx_cli.transcribe import Transcriber  # noqa: E402

EDITS = [("speed", "faster", 1.0), ("speed", "faster", 2.0), ("speed", "slower", 1.0), ("vad", "", 1.0),
         ("vad", "", 3.0), ("denoise", "", 1.0)]
REFERENCE = ROOT.parent / "shared" / "reference-audio"
EDITX = str(Path(sys.executable).with_name("editx"))


def clips() -> dict[str, tuple[np.ndarray, int]]:
    found = {p.stem: audio.load(p) for p in sorted((ROOT / "manifests" / "clips").glob("*.wav")) if p.stem != "noisy"}
    if REFERENCE.is_dir():
        found.update({f"ref/{p.stem}": audio.load(p) for p in sorted(REFERENCE.glob("*.wav"))})
    return found


def before(x: np.ndarray, sr: int, kind: str, info: str, w: float, engine: dsp.DspEngine) -> np.ndarray:
    """The engine's former output for this edit."""
    if kind == "speed":
        import librosa

        return librosa.effects.time_stretch(x, rate=dsp.tempo_factor(info, w))
    margin, dsp.VAD_MARGIN_S = dsp.VAD_MARGIN_S, 0.05
    try:
        return after(x, sr, kind, info, w, engine)
    finally:
        dsp.VAD_MARGIN_S = margin


def after(x: np.ndarray, sr: int, kind: str, info: str, w: float, engine: dsp.DspEngine) -> np.ndarray:
    return engine.run(Request("edit", x, sr, edit_type=kind, edit_info=info, intensity=w,
                              audio_digest=audio.samples_digest(x, sr))).audio


def rate(expected: str, heard: str) -> str:
    metric, value = error_rate(expected, heard)
    return "  -  " if value is None else f"{value:5.2f}" + ("c" if metric == "cer" else " ")


def per_clip(hear: Transcriber, engine: dsp.DspEngine) -> None:
    print("error rate of the output against its input's transcript (c: characters, Chinese), whole files")
    print(f"  {'clip':28s} {'edit':22s} {'before':>7s} {'after':>7s}   heard after")
    for name, (x, sr) in clips().items():
        heard_in = hear._text(x, sr)
        for kind, info, w in EDITS:
            if kind != "speed" and kind != "vad" and not name.startswith("ref/"):
                continue  # denoise: only real noisy speech says anything
            old = hear._text(before(x, sr, kind, info, w, engine), sr) if kind != "denoise" else None
            new = hear._text(after(x, sr, kind, info, w, engine), sr)
            label = f"{kind} {info} w={w:g}".replace("  ", " ")
            print(f"  {name:28s} {label:22s} {rate(heard_in, old) if old is not None else '  =  ':>7s} "
                  f"{rate(heard_in, new):>7s}   {new[:60]}")


def long_file(path: Path, seconds: float) -> None:
    """The English clips end to end, 0.45 s of room tone between them, to `seconds`."""
    sr = 16000
    english = [audio.load(p, sr)[0] for p in [ROOT / "manifests" / "clips" / "narration.wav",
                                               ROOT / "manifests" / "clips" / "pauses.wav",
                                               *[REFERENCE / f for f in ("denoise_prompt.wav", "en_happy_prompt.wav",
                                                                         "zero_shot_en_prompt.wav")
                                                 if (REFERENCE / f).is_file()]]]
    rng = np.random.default_rng(0)
    pieces, total, i = [], 0, 0
    while total < seconds * sr:
        pieces += [english[i % len(english)], (rng.standard_normal(int(0.45 * sr)) * 1e-3).astype(np.float32)]
        total += len(pieces[-2]) + len(pieces[-1])
        i += 1
    sf.write(path, np.concatenate(pieces), sr)


def whole_and_chunked(hear: Transcriber, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "long.wav"
        long_file(src, seconds)
        x, sr = audio.load(src)
        heard_in = hear._text(x, sr)
        print(f"\na {len(x) / sr:.0f} s file, edited whole and cut at 20 s: error rate against the input's "
              "transcript, and samples out vs expected")
        print(f"  {'edit':22s} {'whole':>7s} {'chunked':>8s} {'whole len':>12s} {'chunked len':>12s}  (expected)")
        for kind, info, w in EDITS:
            results = []
            for extra in ([], ["--chunk-seconds", "20"]):
                out = Path(tmp) / f"{kind}-{len(extra)}.wav"
                t0 = time.perf_counter()
                subprocess.run([EDITX, "edit", str(src), "--type", kind, *(["--info", info] if info else []),
                                "--intensity", str(w), "--engine", "dsp", "--no-cache", "-q", "-o", str(out),
                                "--overwrite"], check=True, capture_output=True)
                y, _ = audio.load(out)
                results.append((hear._text(y, sr), len(y), time.perf_counter() - t0))
            expected = round(len(x) / dsp.tempo_factor(info, w)) if kind == "speed" else len(x)
            label = f"{kind} {info} w={w:g}".replace("  ", " ")
            print(f"  {label:22s} {rate(heard_in, results[0][0]):>7s} {rate(heard_in, results[1][0]):>8s} "
                  f"{results[0][1]:>12d} {results[1][1]:>12d}  ({expected if kind != 'vad' else '-'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper-model", default=str(ROOT / ".test-cache" / "whisper-base-ct2"))
    ap.add_argument("--long-seconds", type=float, default=120.0)
    args = ap.parse_args()
    if not (Path(args.whisper_model) / "model.bin").is_file():
        sys.exit(f"no CTranslate2 Whisper in {args.whisper_model}: run the tests once (make test), "
                 "or pass --whisper-model")
    hear = Transcriber(args.whisper_model, "cpu", NullCache())
    engine = dsp.DspEngine({}, NullCache())
    engine.load()
    per_clip(hear, engine)
    whole_and_chunked(hear, args.long_seconds)


if __name__ == "__main__":
    main()
