"""The commands around a run: `review` (the page of an earlier run), `qa` (score the outputs
of an earlier run), `cache` (show, clear), `doctor` (what is installed and ready), `tags`."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from editx_cli.cli_options import (
    DEFAULT_ENGINE,
    DEFAULT_THRESHOLDS,
    MODEL_KEYS,
    WHISPER_HELP,
    cuda_available,
    engine_class,
    log_to_stderr,
    setup,
    with_model_options,
)
from editx_cli.errors import UsageError

log = logging.getLogger("editx")


@click.command("review")
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


@click.command("qa")
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
@with_model_options
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

    setup({"verbose": verbose, "quiet": quiet, "gpu": gpu})
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
    engine_cls = engine_class(engine)
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
        device = "cuda:0" if cuda_available() else "cpu"
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


def _cache_dir_option(f, envvar: str | None = None):
    # on the group (which reads the environment) and on each subcommand: `cache --cache-dir X clear`
    # and `cache clear --cache-dir X` both work, and a flag given wins over the environment
    return click.option("--cache-dir", envvar=envvar, type=click.Path(file_okay=False), default=None,
                        help="Feature cache folder (default: the user cache folder).")(f)


@click.group(invoke_without_command=True)
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

    log_to_stderr(logging.WARNING)
    c = FeatureCache(cache_dir)
    try:
        c.open()
    except CacheError as e:
        raise UsageError(str(e)) from None
    return c


@click.command()
@click.option("--engine", "engine_names", multiple=True,
              help="Engines to check (default: all); exit 1 unless each is ready (default: unless one is).")
@with_model_options
def doctor(engine_names: tuple[str, ...], **model) -> None:
    """What is installed, which devices exist, and whether each engine is ready.

    For stepaudio, give the model folders (or set EDITX_MODEL_DIR, EDITX_TOKENIZER_DIR,
    EDITX_SRC): each missing file is named.
    """
    from editx_cli import doctor as checks

    ok = checks.report(list(engine_names) or None, echo=click.echo, config=model)
    sys.exit(0 if ok else 1)


@click.command("tags")
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
