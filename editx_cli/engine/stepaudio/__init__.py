"""The Step-Audio-EditX engine: zero-shot clone and every edit type of the released model.

One pass: prompt/input audio -> prompt features (codes, mel, speaker embedding;
from the persistent cache when possible) -> LLM decoding (guided when
intensity != 1) -> the checkpoint's vocoder -> 24 kHz audio.

Intensity w is a guidance weight: logits = l_ref + w * (l_edit - l_ref). The
edit row is the edit prompt; the reference row asks the model for the same
audio without the edit: a clone prompt whose speaker is the input audio
(its codes and transcript) and whose target text is that transcript. For
every edit type that is the model's own "say this again in this voice",
so w < 1 moves toward the input as it is and w > 1 pushes past the edit.
w = 1 decodes the edit row alone. A guided denoise or vad edit needs the
input's transcript for that reference prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from editx_cli.engine import Engine, Request, Result
from editx_cli.engine.stepaudio import checks, layout, prompts
from editx_cli.engine.stepaudio.decode_stats import DecodeStats
from editx_cli.engine.stepaudio.vocoding import VocodeLine, VocodeStats
from editx_cli.fingerprint import fingerprint_files
from editx_cli.speech_text import speech_seconds

log = logging.getLogger("editx")

CODE_VERSION = "stepaudio-1"
OUTPUT_VERSION = "stepaudio-output-2"  # bump when the same inputs and seed give other audio
SAMPLE_RATE = 24000
MAX_LENGTH = 8192  # prompt + generated ids, as the reference's max_length
TOKENS_PER_SECOND = 41.67
PROMPT_PEAK = 0.6  # the reference scales louder audio down to this peak to avoid clipping after edits
EDIT_TYPES = ("emotion", "style", "speed", "paralinguistic", "denoise", "vad")
VOCODE_BATCH = 8  # tasks vocoded in one call: their flows run as one batch
DETERMINISTIC_WIDTH = 8  # rows every step runs under --deterministic, whatever --batch-size (at most this)
REGROW_AFTER = 64  # tasks decoded with no out-of-memory before slots halved by one double again


class StepAudioEngine(Engine):
    name = "stepaudio"
    task_kinds = frozenset({"clone", "edit"})
    edit_types = frozenset(EDIT_TYPES)
    needs_transcript = frozenset({"emotion", "style", "speed", "paralinguistic"})
    batches = True
    wave_factor = 4  # tasks held at once, per decoder slot: queued work refills slots as rows end
    window_seconds = 30.0  # the model edits and speaks ~30 s at a time (its README's advice)
    chunk_seconds = 25.0

    def __init__(self, config: dict[str, Any], cache: Any) -> None:
        super().__init__(config, cache)
        self._feature_fingerprint: str | None = None
        self.model_dir = checks.folder(config.get("model_dir"))
        self.tokenizer_dir = checks.folder(config.get("tokenizer_dir"))
        self.editx_src = checks.folder(config.get("editx_src"))
        self.vocoder_impl = config.get("vocoder") or "native"
        self.vocoder_dtype = config.get("vocoder_dtype") or "float32"
        self.variant = config.get("variant") or "base"
        self.llm_impl = config.get("llm_impl") or "native"
        self.dtype_name = config.get("dtype") or "auto"
        self.deterministic = bool(config.get("deterministic"))
        self.cuda_graphs = config.get("cuda_graphs", True) is not False
        self.llm_dir = layout.llm_dir(self.model_dir, self.variant) if self.model_dir else None
        self.audio_tokenizer = None
        self.speaker_encoder = None
        self.batch_size = int(config.get("batch_size") or 8)
        if self.deterministic:  # one decode width for every batch size: see decoder.py
            self.batch_size = min(self.batch_size, DETERMINISTIC_WIDTH)
        self.max_batch = self.batch_size  # halved after an out-of-memory, grown back after a clean stretch
        self.clean_tasks = 0  # tasks decoded since the last out-of-memory
        self.slots = self.max_batch
        # Held by a CUDA graph capture and by each vocoder call: during a capture the caching
        # allocator cannot free cached blocks to retry a failed allocation, on any thread
        self.gate = threading.Lock()
        self.decoder = None  # made on the first call, kept with its cache and graphs
        self.vocode_line: VocodeLine | None = None  # the vocoder thread, started with the first decode run
        self.stats = DecodeStats()
        self.vocode_stats = VocodeStats()

    @classmethod
    def wants_transcript(cls, edit_type: str, intensity: float) -> bool:
        # a guided edit's reference prompt re-speaks the transcript
        return edit_type in cls.needs_transcript or intensity != 1.0

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        return checks.config_problems(config)

    @classmethod
    def check_code(cls, config: dict[str, Any]) -> list[str]:
        return checks.code_problems(config)

    # -- identity -------------------------------------------------------------------------

    def _feature_files(self) -> list[Path]:
        from editx_cli.engine.stepaudio.wav2token import AudioTokenizer

        tok = AudioTokenizer(self.tokenizer_dir, layout.FUNASR_ID, "cpu")
        vocoder_dir = self.llm_dir / layout.VOCODER_SUBDIR
        return tok.files() + [vocoder_dir / "campplus.onnx", vocoder_dir / "cosyvoice.yaml"]

    def feature_fingerprint(self) -> str:
        """Tokenizer and vocoder-feature checkpoints plus code versions; read once per engine.
        Kept on the instance, not in a functools cache, which would keep a released model
        alive for the life of a server."""
        if self._feature_fingerprint is None:
            from editx_cli.engine.stepaudio import features, wav2token

            versions = ";".join([CODE_VERSION, wav2token.CODE_VERSION, features.CODE_VERSION])
            self._feature_fingerprint = fingerprint_files(self._feature_files(), versions)
        return self._feature_fingerprint

    def fingerprint(self) -> str:
        vocoder_dir = self.llm_dir / layout.VOCODER_SUBDIR
        files = [self.llm_dir / "config.json", self.llm_dir / "tokenizer.model", self.llm_dir / "tokenizer_config.json",
                 *layout.weight_files(self.llm_dir), *(vocoder_dir / n for n in layout.VOCODER_FILES)]
        asked = [str(self.config.get(k)) for k in ("prompt_format", "temperature", "top_k", "top_p", "repetition_mask")]
        from editx_cli.engine.stepaudio import token2wav, vocoder

        vocoding = (f"native:{token2wav.CODE_VERSION}:{self.vocoder_dtype}" if self.vocoder_impl == "native"
                    else f"official:{vocoder.CODE_VERSION}")
        return ";".join([self.feature_fingerprint(), fingerprint_files(files, OUTPUT_VERSION), self.llm_impl, *asked,
                         "deterministic" if self.deterministic else self.dtype_name, vocoding])

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for pkg in ("transformers", "funasr", "onnxruntime", "onnxruntime-gpu", "openai-whisper", "librosa"):
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        return out

    def run_info(self) -> dict[str, Any]:
        return {"variant": self.variant, "llm_impl": self.llm_impl, "dtype": str(getattr(self, "dtype", "")),
                "vocoder": self.vocoder_impl, "vocoder_dtype": self.vocoder_dtype,
                "deterministic": self.deterministic,
                "prompt_format": getattr(self, "prompt_format", None),
                "sampling": dataclasses.asdict(self.sampling) if hasattr(self, "sampling") else None,
                "audio_tokenizer_loaded": bool(self.audio_tokenizer and self.audio_tokenizer.loaded),
                "decode": {**self.stats.summary(), "compiled": bool(self.config.get("compile_step")),
                           "compile_seconds": round(getattr(getattr(self, "runner", None), "compile_seconds", 0.0),
                                                    3)},
                "vocode": self.vocode_stats.summary()}

    # -- loading --------------------------------------------------------------------------

    def load(self) -> None:
        if getattr(self, "llm", None) is not None:  # loaded once per run
            return
        import torch

        from editx_cli.engine.stepaudio.wav2token import AudioTokenizer

        gpu_asked = self.config.get("gpu") is not None
        if torch.cuda.is_available():
            self.device = "cuda:0"  # --gpu N has set CUDA_VISIBLE_DEVICES, so N is device 0 here
            # TF32 changes only float32 products: the LLM runs in bf16 unless --dtype float32 or
            # --deterministic, and the vocoder's float32 is where parity with the official code is
            # stated. The flags are process-wide, so TF32 stays off unless a float32 LLM is asked
            # for without --deterministic and the vocoder is not float32.
            tf32 = (not self.deterministic and self.dtype_name in ("float32", "fp32")
                    and self.vocoder_dtype != "float32")
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        elif gpu_asked:
            raise RuntimeError(f"--gpu {self.config['gpu']} was given but no CUDA device is available")
        else:
            self.device = "cpu"
        self.dtype = torch.float32 if self.deterministic else _dtype(self.dtype_name, self.device)
        t0 = time.perf_counter()
        self._load_llm()
        log.debug("LLM (%s, %s) loaded in %.2f s", self.llm_impl, self.dtype, time.perf_counter() - t0)
        self.vocoder = self._load_vocoder()
        self.audio_tokenizer = AudioTokenizer(self.tokenizer_dir, layout.FUNASR_ID, self.device)
        self.audio_tokenizer.check()  # its configs, now: the models themselves load on first use
        self.features_key = self.feature_fingerprint()

    def _load_vocoder(self):
        """editx's own token2wav (many tasks a call), or the official code from --editx-src (one
        task a call, for comparison)."""
        folder = self.llm_dir / layout.VOCODER_SUBDIR
        if self.vocoder_impl == "native":
            from editx_cli.engine.stepaudio.token2wav import Token2Wav

            return Token2Wav.from_folder(folder, self.device, self.vocoder_dtype)
        from editx_cli.engine.stepaudio.vocoder import Vocoder

        return Vocoder(folder, self.editx_src, self.device)

    def _compile_folder(self) -> Path | None:
        """Where the compiled decode step is kept (--compile): beside the feature cache, or in
        the default cache folder when the run has none."""
        if not self.config.get("compile_step"):
            return None
        from editx_cli.cache import default_dir

        return Path(getattr(self.cache, "directory", None) or default_dir()) / "compiled"

    def _load_llm(self) -> None:
        from editx_cli.engine.stepaudio.runners import NativeRunner, UnpaddedRunner
        from editx_cli.engine.stepaudio.text_tokenizer import TextTokenizer

        # The reference's ids (transformers 4.53.3), not whatever the installed transformers makes.
        self.text_tokenizer = TextTokenizer.from_folder(self.llm_dir)
        self.encode = self.text_tokenizer.encode
        asked = self.config.get("prompt_format") or "auto"
        self.prompt_format = "chat" if asked == "chat" or (asked == "auto" and self.text_tokenizer.chat_template) \
            else "legacy"
        self.sampling = sampling_for(self.prompt_format, self.config)
        if self.llm_impl != "remote":
            from editx_cli.engine.stepaudio.step1 import Step1ForCausalLM

            model = Step1ForCausalLM.from_folder(self.llm_dir, self.device, self.dtype, nf4=self.variant == "bnb")
            self.llm = model
            self.runner = NativeRunner(model, MAX_LENGTH, self._compile_folder())
        else:
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # it warns that config.json names a model type it does not know

            model = AutoModelForCausalLM.from_pretrained(str(self.llm_dir), trust_remote_code=True,
                                                         local_files_only=True, dtype=self.dtype).to(self.device)
            model.eval()
            self.llm = model
            # The checkpoint's code ignores attention masks, so no row may ever be padded; and its
            # cache API follows an older transformers, so each row recomputes its whole sequence.
            self.runner = UnpaddedRunner(model, model.config.vocab_size, MAX_LENGTH)

    # -- one pass -------------------------------------------------------------------------

    def prompt_features(self, x: np.ndarray, sr: int, digest: str) -> tuple[dict[str, Any], bool]:
        """Codes, mixed tokens, prompt mel and speaker embedding of one audio, cached by content;
        and whether the cache had them."""
        key = self.cache.key("stepaudio", digest, self.features_key)
        return self.cache.get_or_compute(key, lambda: self._compute_features(x, sr))

    def speaker_embedding(self, x: np.ndarray, sr: int) -> np.ndarray:
        """The CAM++ embedding the vocoder is conditioned on (campplus.onnx of the model folder)."""
        from editx_cli.engine.stepaudio.features import SpeakerEncoder

        if self.speaker_encoder is None:
            self.speaker_encoder = SpeakerEncoder(self.llm_dir / layout.VOCODER_SUBDIR / "campplus.onnx", self.device)
        return self.speaker_encoder(x, sr)

    def _compute_features(self, x: np.ndarray, sr: int) -> dict[str, Any]:
        from editx_cli.engine.stepaudio.features import prompt_mel
        from editx_cli.engine.stepaudio.wav2token import preprocess

        # Tokens come from the trimmed 16 kHz audio, mel and embedding from the untrimmed
        # audio: the reference's mismatch, kept (the vocoder stretches the mel to fit).
        vq02, vq06 = self.audio_tokenizer(preprocess(x, sr))
        return {
            "vq02": vq02,
            "vq06": vq06,
            "mixed": prompts.interleave(vq02, vq06),
            "mel": prompt_mel(x, sr, self.vocoder.mel_conf),
            "embedding": self.speaker_embedding(x, sr),
        }

    def stream(self, take: Callable[[bool], list | None], deliver: Callable[[Any, Result | Exception], None]) -> None:
        """Requests decoded as they come: each is prepared as it arrives, on the preparation
        thread (preparing.py), and joins the running decode at its next sync (continuous
        batching across calls), and is vocoded as soon as it ends, beside the decoding of the
        rest. One that the decoder's cache cannot hold waits for the running decode to drain
        (nothing else joins meanwhile); the cache then grows for it."""
        from editx_cli.engine.stepaudio.preparing import Preparation

        preparation = Preparation(self._prepare, take)
        held: list[tuple[Any, _Prepared]] = []
        while True:
            if not held:
                arrived = preparation.get(True)
                if arrived is None:
                    preparation.join()
                    return
                held = _answer_failures(arrived, deliver)
                if not held:
                    continue
            held = self._decode_run(held, preparation, deliver)

    def _decode_run(self, first: list[tuple[Any, _Prepared]], preparation, deliver) -> list[tuple[Any, _Prepared]]:
        """One run of the decoder: `first`, and what is prepared while it runs and fits its
        cache; returns the prepared requests that did not fit (the next run starts with them)."""
        if self.vocode_line is None:  # one for the engine's life
            # one task a vocoder call under --deterministic: a call's row count picks cuBLAS's kernels
            self.vocode_line = VocodeLine(self._vocode, 1 if self.deterministic else VOCODE_BATCH, self.device,
                                          deliver, self.gate)
        line = self.vocode_line
        running = {id(p.job): (key, p) for key, p in first}
        held: list[tuple[Any, _Prepared]] = []

        def more() -> list:
            jobs = []
            for key, p in _answer_failures(preparation.get(False) or [], deliver):
                if held or not self.decoder.fits(p.job):  # in arrival order: once one waits, all do
                    held.append((key, p))
                else:
                    running[id(p.job)] = (key, p)
                    jobs.append(p.job)
            return jobs

        failed: Exception | None = None
        t0 = time.perf_counter()
        try:
            self._decode([p.job for _, p in first], on_done=lambda job: line.put(*running.pop(id(job)), deliver),
                         more=more)
        except Exception as e:  # tasks it had finished are vocoded all the same
            failed = e
        finally:
            decoding = (t0, time.perf_counter())
            self.vocode_stats.add(line.drain(), decoding)
        for key, _ in running.values():
            deliver(key, failed or RuntimeError("the decoder did not finish this task"))
        return held

    def _prepare(self, request: Request, shared: dict[str, tuple[dict, bool]]) -> _Prepared:
        from editx_cli.engine.stepaudio import generate

        t0 = time.perf_counter()
        x = np.asarray(request.audio, np.float32)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > PROMPT_PEAK:
            x = x / peak * PROMPT_PEAK
        if request.audio_digest not in shared:
            shared[request.audio_digest] = self.prompt_features(x, request.sr, request.audio_digest)
            hit = shared[request.audio_digest][1]
        else:
            hit = True
        feats = shared[request.audio_digest][0]
        if not feats["mixed"]:
            raise ValueError("the audio is too short or silent: it gave no speech tokens")
        audio_tokens = prompts.token_string(feats["mixed"])
        tokenize = time.perf_counter() - t0

        reference = None
        if request.kind == "clone":
            speaker = prompts.clone_speaker_name(request.audio_text, prompts.raw_channels(request.path, request.audio))
            ids = self._clone_prompt(speaker, request.audio_text, audio_tokens, request.text)
            budget = _clone_budget(feats["mixed"], request.audio_text, request.text)
        else:
            prefix = prompts.instruction_prefix(request.edit_type, request.edit_info, request.audio_text,
                                                request.text)
            ids = self._edit_prompt(prefix, audio_tokens)
            budget = _edit_budget(feats["mixed"])
            if request.intensity != 1.0:
                if not request.audio_text.strip():
                    raise ValueError(f"intensity {request.intensity:g} on a {request.edit_type} edit needs "
                                     "audio_text (the guidance reference re-speaks it)")
                speaker = prompts.clone_speaker_name(request.audio_text, x[None])
                reference = self._clone_prompt(speaker, request.audio_text, audio_tokens, request.audio_text)
        longest = max(len(ids), len(reference or []))
        budget = min(budget, MAX_LENGTH - longest)
        if budget < 1:
            raise ValueError(f"the prompt is {longest} tokens: no room left under {MAX_LENGTH} "
                             "(use a shorter prompt audio)")
        job = generate.Job(ids, request.seed, budget, request.intensity, reference)
        self._dump(request.task_id, ids, reference if job.guided else None)
        return _Prepared(job, feats, hit, tokenize, time.perf_counter() - t0 - tokenize, request.task_id)

    def _clone_prompt(self, speaker: str, prompt_text: str, audio_tokens: str, target: str) -> list[int]:
        if self.prompt_format == "chat":
            return self._chat(*prompts.chat_clone_text(prompt_text, audio_tokens, target))
        return prompts.clone_ids(self.encode, speaker, prompt_text, audio_tokens, target)

    def _edit_prompt(self, prefix: str, audio_tokens: str) -> list[int]:
        if self.prompt_format == "chat":
            return self._chat(*prompts.chat_edit_text(prefix, audio_tokens))
        return prompts.edit_ids(self.encode, prefix, audio_tokens)

    def _chat(self, system: str, human: str) -> list[int]:
        tok = self.text_tokenizer
        text = prompts.render_chat(tok.chat_template, system, human, tok.special,
                                   str(self.llm_dir / "tokenizer_config.json"))
        return tok.encode(text, add_special_tokens=False)  # the template writes its own <s>

    def _dump(self, task_id: str, ids: list[int], reference: list[int] | None) -> None:
        path = self.config.get("dump_prompts")
        if not path:
            return
        rows = [{"id": task_id, "row": "task", "format": self.prompt_format, "ids": ids}]
        if reference is not None:
            rows.append({"id": task_id, "row": "reference", "format": self.prompt_format, "ids": reference})
        with open(path, "a", encoding="utf-8") as f:  # one write: lines from several workers never mix
            f.write("".join(json.dumps(r) + "\n" for r in rows))

    def _decode(self, jobs: list, on_done=None, more=None) -> None:
        """Decode every job through the engine's decoder (its cache and graphs kept from call to
        call), longest budget first (the short ones fill the slots at the end), and those
        `more()` brings as they arrive; on_done(job) as each finishes. On CUDA out-of-memory,
        halve the slots and go on with the jobs that had not finished; after REGROW_AFTER tasks
        with none, double them again (the peak may have been a passing one: the vocoder's)."""
        import torch

        from editx_cli.engine.stepaudio.decoder import Decoder

        todo = sorted(jobs, key=lambda j: j.budget, reverse=True)

        def arrived() -> list:
            new = more()
            todo.extend(new)
            return new

        self._regrow()
        while todo:
            if self.decoder is None:
                width = DETERMINISTIC_WIDTH if self.deterministic else self.max_batch
                self.decoder = Decoder(self.runner, width, self.sampling, self.device, cuda_graphs=self.cuda_graphs,
                                       deterministic=self.deterministic, limit=self.max_batch, gate=self.gate)
            t0 = time.perf_counter()
            try:
                figures = self.decoder.run(list(todo), on_done, arrived if more else None)
            except torch.cuda.OutOfMemoryError:
                if self.max_batch == 1:
                    raise
                self.decoder.close()
                self.decoder = None
                torch.cuda.empty_cache()
                self.max_batch //= 2
                self.clean_tasks = 0
                self.stats.halvings += 1
                log.warning("GPU out of memory: going on with %d decoder slots", self.max_batch)
                todo[:] = [j for j in todo if not j.tokens]
                continue
            self.stats.add(todo, figures, time.perf_counter() - t0)
            self.slots = figures.slots
            self.clean_tasks += len(todo)
            return

    def _regrow(self) -> None:
        """Slots halved by an out-of-memory double again after REGROW_AFTER clean tasks (the
        decoder is made anew with them on its next run)."""
        if self.max_batch >= self.batch_size or self.clean_tasks < REGROW_AFTER:
            return
        self.max_batch = min(self.batch_size, 2 * self.max_batch)
        self.clean_tasks = 0
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
        log.info("no out-of-memory for %d tasks: going on with %d decoder slots", REGROW_AFTER, self.max_batch)

    def close(self) -> None:
        if self.vocode_line is not None:
            self.vocode_line.finish()
            self.vocode_line = None
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    def _vocode(self, group: list[_Prepared]) -> list[Result | Exception]:
        """The group's audio in one vocoder call (a task without audio tokens fails alone)."""
        from editx_cli.engine.stepaudio import generate
        from editx_cli.engine.stepaudio.token2wav import VocodeJob

        t0 = time.perf_counter()
        out: list[Result | Exception | None] = [None] * len(group)
        jobs, where = [], []
        for k, p in enumerate(group):
            # The reference drops the last generated id unconditionally, assuming it is the
            # end-of-turn; dropping it only when it is keeps a budget-stopped task's last token.
            # Ids outside the audio range, which the reference would pass on (and crash on
            # above 70655), are dropped.
            job = p.job
            kept = job.tokens[:-1] if job.tokens and job.tokens[-1] == generate.EOS else job.tokens
            mixed = [t - prompts.AUDIO_BASE for t in kept
                     if prompts.AUDIO_BASE <= t < prompts.AUDIO_BASE + prompts.N_VQ02 + prompts.N_VQ06]
            if not mixed:
                out[k] = RuntimeError("the model produced no audio tokens")
                continue
            jobs.append(VocodeJob(mixed, p.feats["mixed"], p.feats["mel"], p.feats["embedding"], job.seed))
            where.append(k)
        try:
            waves = self.vocoder(jobs) if jobs else []
        except Exception as e:
            waves = self._vocode_alone(jobs, e)
        seconds = (time.perf_counter() - t0) / max(1, len(jobs))
        for k, wav in zip(where, waves, strict=True):
            out[k] = wav if isinstance(wav, Exception) else self._result(group[k], wav, seconds, len(jobs))
        return out  # type: ignore[return-value]

    def _vocode_alone(self, jobs: list, error: Exception) -> list:
        """A group's call failed (on a GPU most often a passing out-of-memory): each task is
        vocoded alone (its audio is the same: the vocoder's items do not depend on each
        other), so one task's failure is its own."""
        if len(jobs) == 1:
            return [error]
        log.warning("a vocoder call of %d tasks failed (%s: %s); vocoding them one at a time", len(jobs),
                    type(error).__name__, (str(error).splitlines() or [""])[0])
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        self.vocode_stats.retried += len(jobs)
        out: list = []
        for job in jobs:
            try:
                out += self.vocoder([job])
            except Exception as e:  # this task's own failure
                out.append(e)
        return out

    def _result(self, p: _Prepared, wav: np.ndarray, vocode_seconds: float, vocoded_with: int) -> Result:
        """A task's result: "generate" is its prompt's making and its share of the decoder's time."""
        from editx_cli.engine.stepaudio import generate

        job = p.job
        stages = {"tokenize": p.tokenize_seconds, "generate": p.prompt_seconds + job.seconds,
                  "vocode": vocode_seconds}
        stopped = "end" if job.tokens and job.tokens[-1] == generate.EOS else "budget"
        if stopped == "budget":
            log.warning("task %s: stopped at its budget of %d tokens (%.1f s of speech); the end may be cut",
                        p.task_id or "?", job.budget, job.budget / TOKENS_PER_SECOND)
        info = {"prompt_tokens": len(job.prompt), "generated_tokens": len(job.tokens), "token_budget": job.budget,
                "stopped": stopped,
                "guided": job.guided, "decoded_with": job.peers, "vocoded_with": vocoded_with, "slots": self.slots,
                # from its first decoded token to its last, wall time (its own tokens a second)
                "decoding_seconds": round(job.ended_at - job.started_at, 4) if job.started_at else None,
                # the ids themselves, in short: compares two runs' decoding without the audio
                "tokens_digest": hashlib.sha256(np.asarray(job.tokens, np.int64).tobytes()).hexdigest()[:16]}
        return Result(wav.astype(np.float32), self.vocoder.sample_rate, stages, info,
                      cache_hits=int(p.hit), cache_misses=int(not p.hit))


def _answer_failures(arrived: list[tuple[Any, Any]], deliver) -> list[tuple[Any, _Prepared]]:
    """The prepared requests; those whose preparation failed are answered now."""
    ready = []
    for key, item in arrived:
        if isinstance(item, Exception):
            deliver(key, item)
        else:
            ready.append((key, item))
    return ready


@dataclass
class _Prepared:
    job: Any
    feats: dict
    hit: bool
    tokenize_seconds: float
    prompt_seconds: float
    task_id: str = ""


def sampling_for(prompt_format: str, config: dict[str, Any]):
    """The format's released sampling, with the user's overrides."""
    from editx_cli.engine.stepaudio.generate import PRESETS, REPEAT_WINDOW

    changes: dict[str, Any] = {}
    for key in ("temperature", "top_k", "top_p"):
        if config.get(key) is not None:
            changes[key] = config[key]
    if config.get("repetition_mask") is not None:
        changes["repetition_window"] = REPEAT_WINDOW if config["repetition_mask"] else 0
    return dataclasses.replace(PRESETS[prompt_format], **changes)


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
            "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[name]


def _edit_budget(mixed: list[int]) -> int:
    # An edit re-speaks its input: twice the input's length covers "more slower" (x1.44)
    # and added paralinguistic sounds; beyond that the decode is a runaway.
    return 2 * len(mixed) + 50


def _clone_budget(prompt_mixed: list[int], prompt_text: str, text: str) -> int:
    """Tokens a clone may generate: twice the target's speaking time by script, longer when the
    prompt's speaker is slower than that estimate (never shorter), at least 5 s; the caller caps
    it at the model's window."""
    expected = speech_seconds(prompt_text)
    slower = (len(prompt_mixed) / TOKENS_PER_SECOND) / expected if expected > 0 else 1.0
    seconds = 2.0 * speech_seconds(text) * max(1.0, slower)
    return math.ceil(max(5.0, seconds) * TOKENS_PER_SECOND) + 50
