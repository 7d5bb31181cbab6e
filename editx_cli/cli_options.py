"""The command line's shared options and set-up: each option declared once and put on the
commands that take it (clone, edit and batch; serve; qa; doctor). Nothing heavy imported."""

from __future__ import annotations

import functools
import logging
import os
import sys

import click

from editx_cli import settings
from editx_cli.errors import UsageError

log = logging.getLogger("editx")
DEFAULT_ENGINE = "stepaudio"
DEFAULT_THRESHOLDS = "wer=0.15,sim=0.5"  # as editx_cli.qa's, which imports numpy: too slow for --help


def common_options(f):
    """Options shared by clone, edit and batch, each with an EDITX_ environment default."""
    options = [
        click.option("--engine", envvar="EDITX_ENGINE", default=DEFAULT_ENGINE, show_default=True,
                     help="Engine that runs the tasks (see `editx doctor`)."),
        click.option("--gpu", envvar="EDITX_GPU", type=click.IntRange(0), default=None,
                     help="GPU index to run on (sets CUDA_VISIBLE_DEVICES); default: first GPU if any."),
        click.option("--cache-dir", envvar="EDITX_CACHE_DIR", type=click.Path(file_okay=False), default=None,
                     help="Feature cache folder (default: the user cache folder)."),
        click.option("--no-cache", is_flag=True, envvar="EDITX_NO_CACHE", help="Neither read nor write the cache."),
        click.option("--overwrite", is_flag=True, envvar="EDITX_OVERWRITE",
                     help="Replace existing output files that editx did not write."),
        click.option("--dry-run", is_flag=True, help="Validate and print the plan; run nothing."),
        click.option("--seed", envvar="EDITX_SEED", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
                     help="Sampling seed for tasks that set none."),
        click.option("--report", "report_path", envvar="EDITX_REPORT", type=click.Path(dir_okay=False),
                     default=None, help="Where to write the JSON report (a CSV twin is written beside it)."),
        click.option("--transcribe/--no-transcribe", envvar="EDITX_TRANSCRIBE", default=False,
                     help="Transcribe inputs whose audio_text is empty with Whisper (loaded only if needed)."),
        click.option("--whisper-model", envvar="EDITX_WHISPER_MODEL", default="large-v3", show_default=True,
                     help=WHISPER_HELP),
        click.option("--allow-download", is_flag=True, envvar="EDITX_ALLOW_DOWNLOAD",
                     help="Let Whisper download a named model that is not cached yet."),
        *delivery_options(),
        click.option("--chunk-seconds", envvar="EDITX_CHUNK_SECONDS", type=click.FloatRange(5, 600), default=None,
                     help="Cut inputs (and clone texts) longer than this into chunks at pauses, edit them "
                          "together and join them [default: stepaudio cuts above its 30 s window into chunks "
                          "of 25 s; dsp takes any length whole]."),
        click.option("-q", "--quiet", is_flag=True, envvar="EDITX_QUIET", help="No progress bar, warnings only."),
        click.option("-v", "--verbose", is_flag=True, help="Debug logging."),
    ]
    return functools.reduce(lambda g, opt: opt(g), reversed(options + quality_options() + model_options()), f)


def quality_options() -> list:
    """--qa, --retry-below, --max-retries: for batch, clone and edit, and for serve's responses."""
    return [
        click.option("--qa", is_flag=True, envvar="EDITX_QA",
                     help="Check every output: Whisper's transcript against the text it should say (WER; CER "
                          "for Chinese and Japanese), speaker similarity to the prompt or input, duration and "
                          "level. Scores go in the report (serve: in X-Editx-QA-* headers); uses --whisper-model."),
        click.option("--retry-below", envvar="EDITX_RETRY_BELOW", default=None, metavar="wer=N,sim=N",
                     help="With --qa implied: regenerate an output that scores worse than this with the next "
                          f"seed, keeping the best attempt [thresholds of --qa alone: {DEFAULT_THRESHOLDS}]."),
        click.option("--max-retries", envvar="EDITX_MAX_RETRIES", type=click.IntRange(0, 20), default=None,
                     help="Retries per output under --retry-below [default: 2]."),
    ]


def with_quality_options(f):
    return functools.reduce(lambda g, opt: opt(g), reversed(quality_options()), f)


def with_model_options(f):
    return functools.reduce(lambda g, opt: opt(g), reversed(model_options()), f)


def model_options() -> list:
    """Where the stepaudio engine finds its checkpoints and code, and how it runs them."""
    folder = click.Path(file_okay=False)
    return [
        click.option("--model-dir", envvar="EDITX_MODEL_DIR", type=folder, default=None,
                     help="The Step-Audio-EditX folder (LLM + CosyVoice-300M-25Hz)."),
        click.option("--tokenizer-dir", envvar="EDITX_TOKENIZER_DIR", type=folder, default=None,
                     help="The Step-Audio-Tokenizer folder."),
        click.option("--editx-src", envvar="EDITX_SRC", type=folder, default=None,
                     help="A Step-Audio-EditX source checkout: its vocoder code, for --vocoder official."),
        click.option("--vocoder", envvar="EDITX_VOCODER", type=click.Choice(["native", "official"]),
                     default="native", show_default=True,
                     help="native: editx's own token2wav (the model folder's weights alone; many tasks at once); "
                          "official: the checkout's code from --editx-src, a task at a time, for comparison."),
        click.option("--vocoder-dtype", envvar="EDITX_VOCODER_DTYPE", default="float32", show_default=True,
                     type=click.Choice(["float32", "bfloat16", "float16"]),
                     help="The native vocoder's precision (float32 as upstream; the source and STFTs stay float32)."),
        click.option("--variant", envvar="EDITX_VARIANT", type=click.Choice(["base", "awq", "bnb"]),
                     default="base", show_default=True, help="Model variant (sibling folders of --model-dir)."),
        click.option("--dtype", envvar="EDITX_DTYPE", default="auto", show_default=True,
                     type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
                     help="LLM dtype; auto: bfloat16 on GPU, float32 on CPU."),
        click.option("--llm-impl", envvar="EDITX_LLM_IMPL", type=click.Choice(["native", "remote"]),
                     default="native", show_default=True,
                     help="native: editx's Step1 (batches correctly); remote: the checkpoint's own code "
                          "(trust_remote_code), which ignores attention masks, so each row runs alone, "
                          "unpadded and uncached: slow, for comparison and AWQ."),
        click.option("--deterministic", is_flag=True, envvar="EDITX_DETERMINISTIC",
                     help="float32 without TF32, each prompt prefilled alone, a fixed cache length, 8 rows a "
                          "step and one task a vocoder call (--batch-size at most 8): a task's output does not "
                          "depend on what it is batched with (slower)."),
        click.option("--cuda-graphs/--no-cuda-graphs", envvar="EDITX_CUDA_GRAPHS", default=True, show_default=True,
                     help="Capture the decode step as CUDA graphs (CUDA only; native LLM)."),
        click.option("--compile/--no-compile", "compile_step", envvar="EDITX_COMPILE", default=False,
                     show_default=True,
                     help="Compile the decode step with torch.compile (native LLM; CUDA graphs, if on, capture "
                          "the compiled step). The compiler's cache is kept in the cache folder, so a later run "
                          "starts warm; the report's decode.compile_seconds says what compiling took."),
        click.option("--prompt-format", envvar="EDITX_PROMPT_FORMAT", default="auto", show_default=True,
                     type=click.Choice(["auto", "legacy", "chat"]),
                     help="chat: the 2026 release's prompts, from the model folder's chat_template; legacy: the "
                          "2025 scaffold; auto: chat when the folder has a chat template. Sets the sampling "
                          "preset (legacy: top-k 50 and the repetition mask; chat: temperature 0.7 alone)."),
        click.option("--temperature", envvar="EDITX_TEMPERATURE", type=click.FloatRange(0, min_open=True),
                     default=None, help="Sampling temperature [preset: 0.7]."),
        click.option("--top-k", envvar="EDITX_TOP_K", type=click.IntRange(0), default=None,
                     help="Sample from the k likeliest ids, 0 for all [preset: legacy 50, chat 0]."),
        click.option("--top-p", envvar="EDITX_TOP_P", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Nucleus sampling [preset: 1.0]."),
        click.option("--repetition-mask/--no-repetition-mask", envvar="EDITX_REPETITION_MASK", default=None,
                     help="Forbid an id repeated in the last 10 [preset: legacy on, chat off]."),
        click.option("--dump-prompts", envvar="EDITX_DUMP_PROMPTS", type=click.Path(dir_okay=False), default=None,
                     help="Write the LLM's input ids to this JSONL file, a line per row (id, row: task or "
                          "reference, format, ids), to compare with the official code's."),
    ]


def delivery_options() -> list:
    """The output settings (settings.DELIVERY), each an option of the same name."""
    return [click.option(s.option, s.name, envvar=s.envvar, default=None, help=s.help,
                         **({"is_flag": True} if s.kind is bool else {"type": s.kind}))
            for s in settings.DELIVERY]


def with_edit_options(f):
    """An edit's settings (settings.EDIT) as options, read as text as a manifest's cells are:
    the manifest's checks word any error."""
    for s in reversed(settings.EDIT):
        f = click.option(s.option, s.name, required=s.required, default=None if s.required else str(s.default),
                         show_default=s.default not in (None, ""), help=s.described)(f)
    return f


def delivery_of(common: dict) -> dict:
    """The output settings given on the command line, by manifest field name."""
    return {k: common[k] for k in settings.FIELDS if common[k] not in (None, False)}


WHISPER_HELP = ("A CTranslate2 Whisper folder (one with model.bin: faster-whisper), a Whisper checkpoint file, "
                "or a model name already in Whisper's cache (openai-whisper).")
MODEL_KEYS = ("model_dir", "tokenizer_dir", "editx_src", "vocoder", "vocoder_dtype", "variant", "dtype", "llm_impl",
              "deterministic", "cuda_graphs", "compile_step", "dump_prompts", "prompt_format", "temperature", "top_k",
              "top_p", "repetition_mask")


def quality_of(common: dict) -> dict:
    """--qa, --retry-below and --max-retries as run options; thresholds checked once, here."""
    from editx_cli.qa import ThresholdError, Thresholds

    spec, retries = common["retry_below"], common["max_retries"]
    if retries is not None and spec is None:
        raise UsageError("--max-retries needs --retry-below (the scores an output must reach)")
    try:
        thresholds = Thresholds.parse(spec or DEFAULT_THRESHOLDS).key()
    except ThresholdError as e:
        raise UsageError(f"--retry-below: {e}") from None
    return {"qa": common["qa"] or spec is not None, "thresholds": thresholds,
            "max_retries": (2 if retries is None else retries) if spec is not None else 0}


def log_to_stderr(level: int) -> None:
    # Only editx's own logger: model libraries log chattily at INFO on the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("editx: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def setup(common: dict) -> None:
    log_to_stderr(logging.DEBUG if common["verbose"] else logging.WARNING if common["quiet"] else logging.INFO)
    if common["gpu"] is not None:
        # Must happen before torch initialises CUDA; the engine then sees it as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(common["gpu"])
        check_gpu(common["gpu"])


def check_gpu(index: int) -> None:
    """--gpu N names a device this host has: refused here, before any work (a server would
    otherwise start, look healthy and fail every request)."""
    import torch

    if torch.cuda.device_count() == 0:  # counts without creating a CUDA context
        why = "this torch is a CPU build" if torch.version.cuda is None else "CUDA sees no such device"
        raise UsageError(f"--gpu {index}: no such GPU on this host ({why}); leave --gpu out to run on the CPU")


def engine_class(name: str):
    from editx_cli import engine as engines

    if name not in engines.names():
        raise UsageError(f"--engine: unknown engine {name!r} (known: {', '.join(engines.names())})")
    return engines.get(name)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
