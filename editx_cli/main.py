"""The editx command line. Thin: it turns arguments into tasks and calls batch.py.

Nothing heavy is imported at module level, so `editx --help` stays fast and
`--gpu` can pick the visible device before torch loads.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from editx_cli import __version__, settings
from editx_cli.errors import UsageError

log = logging.getLogger("editx")
DEFAULT_ENGINE = "stepaudio"
DEFAULT_THRESHOLDS = "wer=0.15,sim=0.5"  # as editx_cli.qa's, which imports numpy: too slow for --help


def _common(f):
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
        *_delivery_options(),
        click.option("--chunk-seconds", envvar="EDITX_CHUNK_SECONDS", type=click.FloatRange(5, 600), default=None,
                     help="Cut inputs (and clone texts) longer than this into chunks at pauses, edit them "
                          "together and join them [default: stepaudio cuts above its 30 s window into chunks "
                          "of 25 s; dsp takes any length whole]."),
        click.option("-q", "--quiet", is_flag=True, envvar="EDITX_QUIET", help="No progress bar, warnings only."),
        click.option("-v", "--verbose", is_flag=True, help="Debug logging."),
    ]
    return functools.reduce(lambda g, opt: opt(g), reversed(options + _quality_options() + _model_options()), f)


def _quality_options() -> list:
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


def _with_quality_options(f):
    return functools.reduce(lambda g, opt: opt(g), reversed(_quality_options()), f)


def _with_model_options(f):
    return functools.reduce(lambda g, opt: opt(g), reversed(_model_options()), f)


def _model_options() -> list:
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


def _delivery_options() -> list:
    """The output settings (settings.DELIVERY), each an option of the same name."""
    return [click.option(s.option, s.name, envvar=s.envvar, default=None, help=s.help,
                         **({"is_flag": True} if s.kind is bool else {"type": s.kind}))
            for s in settings.DELIVERY]


def _with_edit_options(f):
    """An edit's settings (settings.EDIT) as options, read as text as a manifest's cells are:
    the manifest's checks word any error."""
    for s in reversed(settings.EDIT):
        f = click.option(s.option, s.name, required=s.required, default=None if s.required else str(s.default),
                         show_default=s.default not in (None, ""), help=s.help)(f)
    return f


def _delivery(common: dict) -> dict:
    """The output settings given on the command line, by manifest field name."""
    return {k: common[k] for k in settings.FIELDS if common[k] not in (None, False)}


WHISPER_HELP = ("A CTranslate2 Whisper folder (one with model.bin: faster-whisper), a Whisper checkpoint file, "
                "or a model name already in Whisper's cache (openai-whisper).")
MODEL_KEYS = ("model_dir", "tokenizer_dir", "editx_src", "vocoder", "vocoder_dtype", "variant", "dtype", "llm_impl",
              "deterministic", "cuda_graphs", "dump_prompts", "prompt_format", "temperature", "top_k", "top_p",
              "repetition_mask")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="editx")
def cli() -> None:
    """Batch audio editing with Step-Audio-EditX: voice cloning and edits of emotion,
    style, speed, paralinguistic sounds, denoising and silence removal.

    \b
      editx clone ref.wav --prompt-text "..." --text "..." -o out.wav
      editx edit in.wav --type emotion --info happy --intensity 1.5 -o out.wav
      editx batch manifest.csv --gpu 1

    Exit codes: 0 all tasks done, 1 some tasks failed, 2 bad usage or input.
    """


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", envvar="EDITX_OUT_DIR", type=click.Path(file_okay=False), default="editx-out",
              show_default=True, help="Folder for outputs and the report; relative `output` paths resolve here.")
@click.option("--fail-fast", is_flag=True, envvar="EDITX_FAIL_FAST",
              help="Stop after the batch in which a task fails.")
@click.option("--force", is_flag=True, envvar="EDITX_FORCE",
              help="Take over outputs that another manifest wrote into the same --out-dir.")
@click.option("--batch-size", envvar="EDITX_BATCH_SIZE", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Decoder slots (stepaudio): rows decoded together, refilled as tasks end; a task with "
                   "intensity != 1 takes two. Halved on GPU out-of-memory.")
@click.option("--gpus", envvar="EDITX_GPUS", default=None,
              help="Comma-separated GPU indices: one worker process per GPU, each loading the model once.")
@click.option("--workers", envvar="EDITX_WORKERS", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes on the CPU (or Ray actors when the cluster has no GPU).")
@click.option("--ray", "ray_address", envvar="EDITX_RAY", is_flag=False, flag_value="local", default=None,
              help="Run on Ray: alone, a local instance (or RAY_ADDRESS); or a cluster ADDRESS. "
                   "One actor per GPU. Needs editx[ray].")
@click.option("--review", is_flag=True, envvar="EDITX_REVIEW",
              help="Also write review.html beside the report: every input and output to hear and see.")
@_common
def batch(manifest: str, out_dir: str, fail_fast: bool, force: bool, batch_size: int, gpus: str | None,
          workers: int, ray_address: str | None, review: bool, **common) -> None:
    """Run every task of a CSV or JSONL MANIFEST (`-`: read it from stdin).

    Relative audio paths resolve against the manifest's folder (stdin: the current folder).
    Tasks already done by an earlier run with the same inputs and parameters are skipped.
    """
    from editx_cli import manifest as manifests

    if gpus and common["gpu"] is not None:
        raise UsageError("--gpu and --gpus exclude each other")
    _setup(common)
    out = Path(out_dir).resolve()
    path = Path(manifest)
    engine_cls = _engine_class(common["engine"])

    stdin = manifest == "-"

    def build():
        rows = manifests.read_rows(path)
        return manifests.validate(rows, source="stdin" if stdin else str(path),
                                  base_dir=Path.cwd() if stdin else path.resolve().parent,
                                  out_dir=out, engine=engine_cls, transcribe=common["transcribe"],
                                  seed=common["seed"], delivery=_delivery(common))

    report_path = Path(common["report_path"]) if common["report_path"] else out / "report.json"
    gpu_list = None
    if gpus:
        try:
            gpu_list = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UsageError(f"--gpus: {gpus!r} is not a comma-separated list of GPU indices") from None
    _run(build, common, report_path, fail_fast=fail_fast, batch_size=batch_size, force=force,
         parallel={"workers": workers, "gpus": gpu_list, "ray": ray_address}, review=review)


@cli.command()
@click.argument("prompt_audio", type=click.Path(dir_okay=False))
@click.option("--prompt-text", required=True, help="Transcript of PROMPT_AUDIO.")
@click.option("--text", "texts", required=True, multiple=True,
              help="Text to speak in the prompt's voice; repeat for several outputs (the model loads once).")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output file (.wav, .flac, .mp3, .ogg or .opus), or a folder with several --text; "
                   "default: <prompt>_cloned.wav here.")
@_common
def clone(prompt_audio: str, prompt_text: str, texts: tuple[str, ...], output: str | None, **common) -> None:
    """Speak TEXT in the voice of PROMPT_AUDIO (zero-shot clone)."""
    stem, suffix = Path(prompt_audio).stem, _suffix(common)
    names = [f"{stem}_cloned.{suffix}"] if len(texts) == 1 else \
        [f"{stem}_cloned_{n}.{suffix}" for n in range(1, len(texts) + 1)]
    outputs = _outputs(names, output, "--text")
    rows = [{"id": Path(out).stem, "task": "clone", "prompt_audio": prompt_audio, "prompt_text": prompt_text,
             "text": text, "output": out} for text, out in zip(texts, outputs, strict=True)]
    _single(rows, common, {"prompt_audio": "PROMPT_AUDIO", "prompt_text": "--prompt-text", "text": "--text",
                           "output": "--output", "task": "--engine"})


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT_AUDIO...", type=click.Path())
@_with_edit_options
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output file (.wav, .flac, .mp3, .ogg or .opus), or a folder for several inputs "
                   "(each output named as its input); default: <input>_<type>.wav here.")
@_common
def edit(inputs: tuple[str, ...], edit_type: str, edit_info: str, intensity: str, iterations: str,
         audio_text: str, text: str, output: str | None, **common) -> None:
    """Edit INPUT_AUDIO (one or more files, or folders of them): change the emotion, style or speed,
    add sounds, denoise, remove silence. The model loads once for all of them."""
    paths = _audio_inputs(inputs)
    if len(paths) > 1 and audio_text:
        raise UsageError("--audio-text is one clip's transcript: give one INPUT_AUDIO with it "
                         "(or use --transcribe, or a manifest)")
    suffix = _suffix(common)
    names = [f"{p.stem}_{edit_type or 'edit'}.{suffix}" for p in paths]
    if output is not None and (len(paths) > 1 or _is_folder(output)):
        names = [f"{p.stem}.{suffix}" for p in paths]
    outputs = _outputs(names, output, "INPUT_AUDIO")
    rows = [{"id": Path(out).stem, "task": "edit", "input_audio": str(p), "edit_type": edit_type,
             "edit_info": edit_info, "intensity": intensity, "iterations": iterations,
             "audio_text": audio_text, "text": text, "output": out} for p, out in zip(paths, outputs, strict=True)]
    _single(rows, common, {"input_audio": "INPUT_AUDIO", **{s.name: s.option for s in settings.EDIT},
                           "output": "--output", "task": "--engine", "seed": "--seed"})


def _audio_inputs(inputs: tuple[str, ...]) -> list[Path]:
    """The files named, a folder's audio files (sorted; the formats editx writes) in its place."""
    from editx_cli.audio import OUTPUT_FORMATS

    paths: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in OUTPUT_FORMATS)
            if not found:
                raise UsageError(f"INPUT_AUDIO: {name}: no audio files in this folder ({', '.join(OUTPUT_FORMATS)})")
            paths += found
        else:
            paths.append(p)
    return paths


def _is_folder(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _outputs(names: list[str], output: str | None, many: str) -> list[str]:
    """Each output's path: the names given here, in the folder -o names, or -o itself for one."""
    if output is None:
        return names
    if len(names) == 1 and not _is_folder(output):
        return [output]
    if Path(output).exists() and not Path(output).is_dir():
        raise UsageError(f"--output: {output} is a file; several outputs ({many}) need a folder")
    return [str(Path(output) / n) for n in names]


def _quality(common: dict) -> dict:
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


def _suffix(common: dict) -> str:
    return str(common["format"] or "wav").strip().lower().lstrip(".") or "wav"


def _single(rows: list[dict], common: dict, labels: dict) -> None:
    from editx_cli import manifest as manifests

    _setup(common)
    engine_cls = _engine_class(common["engine"])
    rows = [{**row, **_delivery(common)} for row in rows]
    labels = {**labels, **settings.OPTION_OF}

    def build():
        return manifests.validate(rows, source="command line", base_dir=Path.cwd(), out_dir=Path.cwd(),
                                  engine=engine_cls, field_labels=labels, transcribe=common["transcribe"],
                                  seed=common["seed"])

    report_path = Path(common["report_path"]) if common["report_path"] else None
    _run(build, common, report_path, single=True)


def _log_to_stderr(level: int) -> None:
    # Only editx's own logger: model libraries log chattily at INFO on the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("editx: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _setup(common: dict) -> None:
    _log_to_stderr(logging.DEBUG if common["verbose"] else logging.WARNING if common["quiet"] else logging.INFO)
    if common["gpu"] is not None:
        # Must happen before torch initialises CUDA; the engine then sees it as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(common["gpu"])
        _check_gpu(common["gpu"])


def _check_gpu(index: int) -> None:
    """--gpu N names a device this host has: refused here, before any work (a server would
    otherwise start, look healthy and fail every request)."""
    import torch

    if torch.cuda.device_count() == 0:  # counts without creating a CUDA context
        why = "this torch is a CPU build" if torch.version.cuda is None else "CUDA sees no such device"
        raise UsageError(f"--gpu {index}: no such GPU on this host ({why}); leave --gpu out to run on the CPU")


def _engine_class(name: str):
    from editx_cli import engine as engines

    if name not in engines.names():
        raise UsageError(f"--engine: unknown engine {name!r} (known: {', '.join(engines.names())})")
    return engines.get(name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(build, common: dict, report_path: Path | None, fail_fast: bool = False, single: bool = False,
         batch_size: int = 1, force: bool = False, parallel: dict | None = None, review: bool = False) -> None:
    from editx_cli import batch as runner
    from editx_cli import report as reports

    config = runner.RunConfig(
        engine=common["engine"],
        engine_config={"gpu": common["gpu"], "batch_size": batch_size, **{k: common[k] for k in MODEL_KEYS}},
        cache_dir=common["cache_dir"],
        use_cache=not common["no_cache"],
        report=report_path,
        review=review,
        dry_run=common["dry_run"],
        options=runner.RunOptions(
            overwrite=common["overwrite"], force=force, fail_fast=fail_fast,
            batch_size=batch_size,
            transcribe=common["transcribe"], whisper_model=common["whisper_model"],
            allow_download=common["allow_download"], chunk_seconds=common["chunk_seconds"], **_quality(common),
            progress=not common["quiet"] and sys.stderr.isatty(),
        ),
        log_level=log.level,
        **(parallel or {}),
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop is a Ctrl-C
    if config.options.progress:  # a person at a terminal hears what the seconds before the bar are for
        click.echo("editx: checking the tasks and their audio…", err=True)
    try:
        tasks = build()
        report, planned = runner.execute(tasks, config)
    except KeyboardInterrupt:
        click.echo("editx: interrupted; no report was written (committed outputs stay; a rerun goes on)",
                   err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    if report is None:
        for p in planned:
            t = p.task
            what = t.kind if t.kind == "clone" else f"edit {t.edit_type}" + (f" {t.edit_info}" if t.edit_info else "")
            src = f"@{t.input_task}" if t.input_task else str(p.source)
            state = "done already, skip" if p.skip else "run"
            click.echo(f"{t.id}\t{what}\t{src}\t-> {t.output}\t[{state}]")
        return
    if not common["quiet"]:
        click.echo(reports.summary(report), err=True)
    if single:
        for t in report["tasks"]:
            if t["status"] in ("done", "skipped"):
                click.echo(t["output"])
    if report_path is not None:
        if review and not common["quiet"]:
            click.echo(f"editx: review page: {report_path.parent / 'review.html'}", err=True)
        click.echo(str(report_path))  # stdout: the report's path alone, for a script to capture
    sys.exit(runner.exit_code(report))


@cli.command("review")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="The run's report [default: OUT_DIR/report.json].")
def review_page(out_dir: str, report_path: str | None) -> None:
    """Write review.html for an earlier run: beside its report, every input and output to hear and
    see, with parameters, timings, cache use, loudness and failures; opens from file://."""
    from editx_cli import report as reports
    from editx_cli import review

    path = Path(report_path) if report_path else Path(out_dir) / "report.json"
    if not reports.is_report(path) or path.suffix.lower() != ".json":
        raise UsageError(f"{path}: no editx report here (run `editx batch` first, or name it with --report)")
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        page = review.build(data, path)
    except OSError as e:
        raise UsageError(f"{review.target(path)}: the page could not be written ({e.strerror or e})") from None
    click.echo(str(page))


@cli.command("qa")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--thresholds", default=DEFAULT_THRESHOLDS, show_default=True, metavar="wer=N,sim=N",
              help="What a passing output scores at least (wer; cer for Chinese and Japanese; sim).")
@click.option("--engine", envvar="EDITX_ENGINE", default=None,
              help="Whose speaker model measures similarity (dsp has none); default: the engine of the run "
                   "whose report is in OUT_DIR, else stepaudio.")
@click.option("--gpu", envvar="EDITX_GPU", type=click.IntRange(0), default=None, help="GPU index to run on.")
@click.option("--cache-dir", envvar="EDITX_CACHE_DIR", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder (transcripts are cached by audio content).")
@click.option("--no-cache", is_flag=True, envvar="EDITX_NO_CACHE", help="Neither read nor write the cache.")
@click.option("--whisper-model", envvar="EDITX_WHISPER_MODEL", default="large-v3", show_default=True,
              help=WHISPER_HELP)
@click.option("--allow-download", is_flag=True, envvar="EDITX_ALLOW_DOWNLOAD",
              help="Let Whisper download a named model that is not cached yet.")
@click.option("-q", "--quiet", is_flag=True, help="Only the file written.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@_with_model_options
def qa_outputs(out_dir: str, thresholds: str, engine: str, gpu: int | None, cache_dir: str | None, no_cache: bool,
               whisper_model: str, allow_download: bool, quiet: bool, verbose: bool, **model) -> None:
    """Check the outputs an earlier run wrote in OUT_DIR (nothing is regenerated): Whisper's
    transcript against the text each should say, speaker similarity to its prompt or input,
    duration and level. Writes OUT_DIR/qa.json and qa.csv, and the scores into OUT_DIR's
    report (and review page) when there is one. Exit 1 when an output is below the thresholds."""
    from editx_cli import qa_folder, review
    from editx_cli.cache import CacheError, open_cache
    from editx_cli.qa import Checker, ThresholdError, Thresholds
    from editx_cli.transcribe import Transcriber, TranscriptionError, resolve

    _setup({"verbose": verbose, "quiet": quiet, "gpu": gpu})
    try:
        limits = Thresholds.parse(thresholds)
    except ThresholdError as e:
        raise UsageError(f"--thresholds: {e}") from None
    try:
        resolve(whisper_model, allow_download)
    except TranscriptionError as e:
        raise UsageError(f"--whisper-model: {e}") from None
    folder = Path(out_dir)
    engine = engine or qa_folder.engine_of(folder / "report.json") or DEFAULT_ENGINE
    engine_cls = _engine_class(engine)
    config = {"gpu": gpu, **{k: model[k] for k in MODEL_KEYS}}
    problems = engine_cls.check_config(config)
    if problems:
        raise UsageError(f"--engine {engine}: {problems[0]}")
    found, skipped = qa_folder.outputs(folder)
    for line in skipped:
        log.warning("%s", line)
    if not found:
        raise UsageError(f"{folder}: no output of an editx run to check here")
    cache = open_cache(cache_dir, enabled=not no_cache)
    try:
        cache.open()
    except CacheError as e:
        raise UsageError(f"--cache-dir: {e}") from None
    try:
        from editx_cli import engine as engines

        eng = engines.build(engine, config, cache)
        device = "cuda:0" if _cuda() else "cpu"
        eng.device = device
        checker = Checker(Transcriber(whisper_model, device, cache, allow_download), eng.speaker_embedding, limits)
        rows = qa_folder.check(found, checker)
    finally:
        cache.close()
    path = qa_folder.write(rows, folder, limits.key(), skipped)
    report = qa_folder.into_report(rows, folder / "report.json")
    page = review.target(folder / "report.json")
    if report is not None and page.is_file():
        review.build(report, folder / "report.json")
    below = [r for r in rows if "qa" in r and not r["qa"]["passed"]]
    if not quiet:
        for r in rows:
            if "error" in r:
                click.echo(f"editx: {r['output']}: {r['error']}", err=True)
        for r in below:
            click.echo(f"editx: low quality {r['output']}: {r['qa']['problems']}", err=True)
        good = [r for r in rows if r.get("qa", {}).get("passed") is True]
        unscored = sum(not r["qa"].get("scored", True) for r in good)
        unreadable = len(rows) - len(good) - len(below)
        click.echo(f"editx: {len(rows)} output{'' if len(rows) == 1 else 's'}: {len(good) - unscored} passed, "
                   f"{len(below)} below the thresholds"
                   + (f", {unscored} not scored (no text to hear them against, no speaker model to compare "
                      f"voices; duration and level checked)" if unscored else "")
                   + (f", {unreadable} unreadable" if unreadable else ""), err=True)
    click.echo(str(path))
    sys.exit(1 if below or any("error" in r for r in rows) else 0)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cache_dir_option(f, envvar: str | None = None):
    # on the group (which reads the environment) and on each subcommand: `cache --cache-dir X clear`
    # and `cache clear --cache-dir X` both work, and a flag given wins over the environment
    return click.option("--cache-dir", envvar=envvar, type=click.Path(file_okay=False), default=None,
                        help="Feature cache folder (default: the user cache folder).")(f)


@cli.group(invoke_without_command=True)
@functools.partial(_cache_dir_option, envvar="EDITX_CACHE_DIR")
@click.pass_context
def cache(ctx: click.Context, cache_dir: str | None) -> None:
    """Show or clear the persistent feature cache (default: `stats`)."""
    ctx.obj = cache_dir
    if ctx.invoked_subcommand is None:
        ctx.invoke(stats, cache_dir=cache_dir)


def _folder(ctx: click.Context, cache_dir: str | None) -> str | None:
    return cache_dir or ctx.obj


@cache.command()
@_cache_dir_option
@click.pass_context
def path(ctx: click.Context, cache_dir: str | None) -> None:
    """Print the cache folder."""
    from editx_cli.cache import default_dir

    folder = _folder(ctx, cache_dir)
    click.echo(str(Path(folder) if folder else default_dir()))


@cache.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_cache_dir_option
@click.pass_context
def stats(ctx: click.Context, cache_dir: str | None, as_json: bool = False) -> None:
    """Path, size, entries and lifetime hit rate."""
    c = _open_cache(_folder(ctx, cache_dir))
    s = c.stats()
    c.close()
    if as_json:
        click.echo(json.dumps(s))
        return
    rate = f"{s['hit_rate']:.1%}" if s["hit_rate"] is not None else "n/a"
    click.echo(f"path:     {s['path']}\nentries:  {s['entries']}\n"
               f"size:     {s['size_bytes'] / 1e6:.1f} MB of {s['size_limit_bytes'] / 1e6:.0f} MB\n"
               f"hits:     {s['hits']}\nmisses:   {s['misses']}\nhit rate: {rate}")


@cache.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_cache_dir_option
@click.pass_context
def clear(ctx: click.Context, cache_dir: str | None, yes: bool) -> None:
    """Delete every cached entry."""
    if not yes and not sys.stdin.isatty():  # a script that forgot --yes must not empty a shared cache
        raise UsageError("cache clear: no terminal to confirm at; add --yes to clear without asking")
    c = _open_cache(_folder(ctx, cache_dir))
    if not yes:
        click.confirm(f"Delete {len(c._cache)} entries in {c.directory}?", abort=True)
    n = c.clear()
    c.close()
    click.echo(f"cleared {n} entries from {c.directory}")


def _open_cache(cache_dir: str | None):
    """The feature cache, opened (a damaged database is set aside and recreated); exit 2 if the
    folder cannot be used."""
    from editx_cli.cache import CacheError, FeatureCache

    _log_to_stderr(logging.WARNING)
    c = FeatureCache(cache_dir)
    try:
        c.open()
    except CacheError as e:
        raise UsageError(str(e)) from None
    return c


def _with_model_options(f):
    return functools.reduce(lambda g, opt: opt(g), reversed(_model_options()), f)


@cli.command()
@click.option("--engine", "engine_names", multiple=True,
              help="Engines to check (default: all); exit 1 unless each is ready (default: unless one is).")
@_with_model_options
def doctor(engine_names: tuple[str, ...], **model) -> None:
    """What is installed, which devices exist, and whether each engine is ready.

    For stepaudio, give the model folders (or set EDITX_MODEL_DIR, EDITX_TOKENIZER_DIR,
    EDITX_SRC): each missing file is named.
    """
    from editx_cli import doctor as checks

    ok = checks.report(list(engine_names) or None, echo=click.echo, config=model)
    sys.exit(0 if ok else 1)


@cli.command("tags")
def list_tags() -> None:
    """The tags a target text may carry (clone text, paralinguistic new text)."""
    from editx_cli import tags

    click.echo("paralinguistic sounds, anywhere in the text:")
    click.echo("  " + " ".join(f"[{t}]" for t in tags.PARALINGUISTIC))
    click.echo("older spellings, accepted with a warning:")
    click.echo("  " + " ".join(f"[{old}] -> [{new}]" for old, new in tags.OLDER.items()))
    click.echo("language, opening the text (Mandarin and English take none):")
    click.echo("  " + " ".join(f"[{t}]" for t in tags.LANGUAGES))
    click.echo("a polyphone's reading: its pinyin with a tone digit, written in place of the character "
               "(e.g. guo4guo4guo1)")


@cli.command()
@click.option("--engine", envvar="EDITX_ENGINE", default=DEFAULT_ENGINE, show_default=True,
              help="Engine behind the API.")
@click.option("--gpu", envvar="EDITX_GPU", type=click.IntRange(0), default=None, help="GPU index to run on.")
@click.option("--host", envvar="EDITX_HOST", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --api-key (or --insecure).")
@click.option("--port", envvar="EDITX_PORT", type=click.IntRange(0, 65535), default=7860, show_default=True)
@click.option("--api-key", envvar="EDITX_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on every endpoint but /healthz.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without an API key.")
@click.option("--allowed-hosts", envvar="EDITX_ALLOWED_HOSTS", default="",
              help="More Host names to answer, comma-separated (a proxy's name; '*' for any). Besides these, "
                   "only --host and the loopback names are answered (DNS rebinding).")
@click.option("--cors-origin", "cors_origins", envvar="EDITX_CORS_ORIGIN", multiple=True,
              help="A web origin (scheme://host[:port]) whose pages may call the API; repeat for more. Requests "
                   "that change state from any other origin are refused.")
@click.option("--body-timeout", envvar="EDITX_BODY_TIMEOUT", type=click.FloatRange(0.1), default=30.0,
              show_default=True, help="Seconds a request's headers or body may stall before it is dropped.")
@click.option("--body-deadline", envvar="EDITX_BODY_DEADLINE", type=click.FloatRange(1), default=300.0,
              show_default=True, help="Seconds a request's body may take in all (a byte now and then never stalls).")
@click.option("--no-docs", is_flag=True, envvar="EDITX_NO_DOCS", help="Serve no /docs or /openapi.json.")
@click.option("--idle-unload", envvar="EDITX_IDLE_UNLOAD", type=click.FloatRange(0.1), default=300.0,
              show_default=True, help="Release the model (and its device memory) after this many idle seconds.")
@click.option("--max-batch", envvar="EDITX_MAX_BATCH", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Concurrent requests decoded together.")
@click.option("--max-queue", envvar="EDITX_MAX_QUEUE", type=click.IntRange(1), default=64, show_default=True,
              help="Requests that may wait; past it, 503 with Retry-After.")
@click.option("--voices-dir", envvar="EDITX_VOICES_DIR", type=click.Path(file_okay=False), default=None,
              help="Registered voices (default: the user data folder).")
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=50.0, show_default=True)
@click.option("--max-audio-seconds", type=click.FloatRange(0.5), default=300.0, show_default=True,
              help="Longest upload; inputs longer than the model's window are cut and joined as batch does.")
@click.option("--max-text-chars", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--allow-url-fetch", is_flag=True, envvar="EDITX_ALLOW_URL_FETCH",
              help="Fetch the Step-Audio API's prompt_audio_url / input_audio_url (public addresses only, "
                   "--max-upload-mb and --url-fetch-timeout bound each); refused without it.")
@click.option("--url-fetch-timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds a URL fetch may take in all.")
@click.option("--cache-dir", envvar="EDITX_CACHE_DIR", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder: the same one batch runs use by default.")
@click.option("--no-cache", is_flag=True, envvar="EDITX_NO_CACHE", help="Neither read nor write the cache.")
@click.option("--whisper-model", envvar="EDITX_WHISPER_MODEL", default=None,
              help=WHISPER_HELP + " Transcribes edits sent without audio_text (default: such edits are refused).")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only: no address line, no request log.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@_with_quality_options
@_with_model_options
def serve(engine: str, gpu: int | None, host: str, port: int, api_key: str | None, insecure: bool,
          allowed_hosts: str, cors_origins: tuple[str, ...], body_timeout: float, body_deadline: float,
          no_docs: bool, idle_unload: float,
          max_batch: int, max_queue: int, voices_dir: str | None, max_upload_mb: float,
          max_audio_seconds: float, max_text_chars: int, allow_url_fetch: bool, url_fetch_timeout: float,
          cache_dir: str | None, no_cache: bool, whisper_model: str | None, quiet: bool, verbose: bool, qa: bool,
          retry_below: str | None, max_retries: int | None,
          **model) -> None:
    """Serve the model over HTTP: an OpenAI-compatible API (/v1/audio/speech, /v1/audio/edits,
    /v1/voices, /v1/models) that also takes the Step-Audio API's requests (step_audio,
    /v1/audio/speech/upload, /v1/tags), /healthz and docs at /docs. One engine, loaded on the
    first request that needs it and released when idle. Needs editx[serve]."""
    import ipaddress

    _setup({"verbose": verbose, "quiet": quiet, "gpu": gpu})
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key and not insecure:
        raise UsageError(f"--host {host}: serving beyond this machine needs --api-key (or EDITX_API_KEY); "
                         "--insecure to serve without one")
    try:
        import uvicorn

        from editx_cli import guard, serve
    except ImportError as e:
        raise UsageError(f"editx serve needs the serve extra ({e.name} is missing): "
                         "pip install 'editx[serve]'") from None
    engine_cls = _engine_class(engine)
    config = {"gpu": gpu, "batch_size": max_batch, **{k: model[k] for k in MODEL_KEYS if k in model}}
    problems = engine_cls.check_config(config)
    if problems:
        raise UsageError(f"--engine {engine}: " + "; ".join(problems))
    quality = _quality({"qa": qa, "retry_below": retry_below, "max_retries": max_retries})
    if quality["qa"] and not whisper_model:
        raise UsageError("--qa and --retry-below hear each response: they need --whisper-model")
    if whisper_model:
        from editx_cli.transcribe import TranscriptionError, resolve

        try:
            whisper_model = resolve(whisper_model, allow_download=False)
        except TranscriptionError as e:
            raise UsageError(str(e)) from None
    if voices_dir is None:
        import platformdirs

        voices_dir = platformdirs.user_data_dir("editx") + "/voices"
    options = serve.ServeOptions(engine=engine, engine_config=config, cache_dir=cache_dir, use_cache=not no_cache,
                                  voices_dir=Path(voices_dir), api_key=api_key or None, idle_unload=idle_unload,
                                  max_batch=max_batch, max_queue=max_queue,
                                  max_upload_bytes=int(max_upload_mb * 2**20), max_audio_seconds=max_audio_seconds,
                                  max_text_chars=max_text_chars, whisper_model=whisper_model, host=host,
                                  allowed_hosts=tuple(h.strip() for h in allowed_hosts.split(",") if h.strip()),
                                  cors_origins=tuple(o.rstrip("/") for o in cors_origins), body_timeout=body_timeout,
                                  body_deadline=body_deadline,
                                  docs=not no_docs, quality=quality, allow_url_fetch=allow_url_fetch,
                                  url_fetch_timeout=url_fetch_timeout)
    app = serve.create_app(options)
    # uvicorn's info level: the address it listens on, then a line per request
    uvicorn.run(app, host=host, port=port, log_level="debug" if verbose else "warning" if quiet else "info",
                http=guard.header_timeout_protocol(body_timeout))


def main() -> None:
    cli(prog_name="editx")


if __name__ == "__main__":
    main()
