"""The editx command line. Thin: it turns arguments into tasks and calls batch.py.

Nothing heavy is imported at module level, so `editx --help` stays fast and
`--gpu` can pick the visible device before torch loads.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from editx_cli import __version__, cli_serve, cli_tools, settings
from editx_cli.cli_options import (
    MODEL_KEYS,
    common_options,
    delivery_of,
    engine_class,
    quality_of,
    setup,
    with_edit_options,
)
from editx_cli.errors import UsageError

log = logging.getLogger("editx")


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
@common_options
def batch(manifest: str, out_dir: str, fail_fast: bool, force: bool, batch_size: int, gpus: str | None,
          workers: int, ray_address: str | None, review: bool, **common) -> None:
    """Run every task of a CSV or JSONL MANIFEST (`-`: read it from stdin).

    Relative audio paths resolve against the manifest's folder (stdin: the current folder).
    Tasks already done by an earlier run with the same inputs and parameters are skipped.
    """
    from editx_cli import manifest as manifests

    if gpus and common["gpu"] is not None:
        raise UsageError("--gpu and --gpus exclude each other")
    setup(common)
    out = Path(out_dir).resolve()
    path = Path(manifest)
    engine_cls = engine_class(common["engine"])

    stdin = manifest == "-"

    def build():
        rows = manifests.read_rows(path)
        return manifests.validate(rows, source="stdin" if stdin else str(path),
                                  base_dir=Path.cwd() if stdin else path.resolve().parent,
                                  out_dir=out, engine=engine_cls, transcribe=common["transcribe"],
                                  seed=common["seed"], delivery=delivery_of(common))

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
@common_options
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
@with_edit_options
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output file (.wav, .flac, .mp3, .ogg or .opus), or a folder for several inputs "
                   "(each output named as its input); default: <input>_<type>.wav here.")
@common_options
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


def _suffix(common: dict) -> str:
    return str(common["format"] or "wav").strip().lower().lstrip(".") or "wav"


def _single(rows: list[dict], common: dict, labels: dict) -> None:
    from editx_cli import manifest as manifests

    setup(common)
    engine_cls = engine_class(common["engine"])
    rows = [{**row, **delivery_of(common)} for row in rows]
    labels = {**labels, **settings.OPTION_OF}

    def build():
        return manifests.validate(rows, source="command line", base_dir=Path.cwd(), out_dir=Path.cwd(),
                                  engine=engine_cls, field_labels=labels, transcribe=common["transcribe"],
                                  seed=common["seed"])

    report_path = Path(common["report_path"]) if common["report_path"] else None
    _run(build, common, report_path, single=True)


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
            allow_download=common["allow_download"], chunk_seconds=common["chunk_seconds"], **quality_of(common),
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


for command in (cli_tools.review_page, cli_tools.qa_outputs, cli_tools.cache, cli_tools.doctor,
                cli_tools.list_tags, cli_serve.serve):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="editx")


if __name__ == "__main__":
    main()
