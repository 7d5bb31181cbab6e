"""Reading and validating manifests (CSV or JSONL) into tasks.

Every problem is collected, not just the first, so that one run of
`editx batch --dry-run` shows a user everything to fix. Nothing here loads a
model: the engine class only says what it supports.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from editx_cli import deliver, settings, tags
from editx_cli.audio import OUTPUT_FORMATS, AudioError, missing_codec, probe
from editx_cli.errors import InvalidInput, Problem
from editx_cli.settings import INTENSITY, ITERATIONS
from editx_cli.tasks import EDIT_INFOS, TASK_KINDS, Task

log = logging.getLogger("editx")

FIELDS = (
    "id", "task", "prompt_audio", "prompt_text", "text", "input_audio", "audio_text",
    "edit_type", "edit_info", "intensity", "iterations", "seed", "output", *settings.FIELDS,
)
CLONE_ONLY = ("prompt_audio", "prompt_text")
EDIT_ONLY = ("input_audio", "audio_text", "edit_type", "edit_info", "intensity", "iterations")
ID_PATTERN = re.compile(r"\w[\w.\-]*")  # whole ids only (fullmatch): no trailing newline
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV or JSONL manifest as dicts of raw values, in file order. A path of `-` is
    standard input, CSV or JSONL by its first character."""
    if str(path) == "-":
        return _stdin_rows()
    source = str(path)
    fail = lambda msg: InvalidInput([Problem(source, None, None, msg)])  # noqa: E731
    if not path.exists():
        raise fail("manifest not found")
    if not path.is_file():
        raise fail("manifest is not a regular file")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise fail(f"unknown manifest format {suffix or '(none)'!r}: use .csv or .jsonl (or - for stdin)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text (line {line}, byte {e.start})") from None
    return parse_rows(text, source, jsonl=suffix != ".csv")


def _stdin_rows() -> list[dict[str, Any]]:
    import sys

    try:
        text = sys.stdin.buffer.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise InvalidInput([Problem("stdin", None, None, f"not UTF-8 text (line {line}, byte {e.start})")]) from None
    return parse_rows(text, "stdin", jsonl=text.lstrip().startswith("{"))


def parse_rows(text: str, source: str, jsonl: bool) -> list[dict[str, Any]]:
    """Rows of a manifest's text; every line that is not valid JSON is named at once."""
    fail = lambda msg, row=None, field=None: InvalidInput([Problem(source, row, field, msg)])  # noqa: E731
    if not text.strip():
        raise fail("manifest is empty")
    if not jsonl:
        return _csv_rows(text, fail)

    # JSONL, one object a line. Lines end at "\n" only: U+2028 and friends are characters that
    # a JSON string may hold. NaN and Infinity are not JSON; a value of null is no value.
    rows, problems = [], []
    for row, line in enumerate((ln for ln in text.split("\n") if ln.strip()), 1):
        bad = lambda msg, field=None, row=row: problems.append(Problem(source, row, field, msg))  # noqa: E731
        try:
            obj = json.loads(line, parse_constant=_not_json, object_pairs_hook=_one_of_each)
        except json.JSONDecodeError as e:
            bad(f"not valid JSON ({e.msg}, column {e.colno})")
            continue
        except RecursionError:
            bad("not valid JSON for a manifest (nested too deeply)")
            continue
        except _Twice as e:
            bad("given twice in one object", str(e))
            continue
        except ValueError as e:
            bad(str(e))
            continue
        if not isinstance(obj, dict):
            bad("each line must be a JSON object")
            continue
        rows.append({k: v for k, v in obj.items() if v is not None})
    if problems:
        raise InvalidInput(problems)
    return rows


def _csv_rows(text: str, fail) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        with warnings.catch_warnings():
            # pandas only warns, and drops data, when rows have more fields than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserWarning, pd.errors.ParserError, csv.Error) as e:
        wide = _wide_row(text)
        if wide is not None:
            raise fail(f"not valid CSV (this row has more fields than the header's {wide[1]})",
                       row=wide[0]) from None
        raise fail(f"not valid CSV ({str(e).strip().splitlines()[0]})") from None
    header = next(csv.reader(io.StringIO(text)), [])
    twice = sorted({c.strip() for c in header if [h.strip() for h in header].count(c.strip()) > 1})
    if twice:
        raise fail("column given twice in the header", field=twice[0])
    unnamed = [c for c in frame.columns if str(c).startswith("Unnamed:")]
    if unnamed:
        raise fail("the header has an empty column name", field="header")
    return frame.to_dict(orient="records")


def _wide_row(text: str) -> tuple[int, int] | None:
    """(row, header width) of the first row with more fields than the header, rows counted as
    the manifest counts them (blank lines skipped)."""
    try:
        header, *body = csv.reader(io.StringIO(text))
        rows = (r for r in body if any(f.strip() for f in r))
        return next(((n, len(header)) for n, r in enumerate(rows, 1) if len(r) > len(header)), None)
    except (csv.Error, ValueError):
        return None


def _not_json(constant: str):
    raise ValueError(f"not valid JSON ({constant} is not a JSON number; write a number, or null for none)")


class _Twice(ValueError):
    """A key given twice in one JSON object: which value was meant cannot be known."""


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Twice(k)
        out[k] = v
    return out


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def validate(
    rows: list[dict[str, Any]],
    *,
    source: str,
    base_dir: Path,
    out_dir: Path,
    engine: type,
    field_labels: dict[str, str] | None = None,
    transcribe: bool = False,
    seed: int = 0,
    delivery: dict[str, Any] | None = None,
    transcript_hint: tuple[str, str] = ("input_audio", "pass --transcribe"),
) -> list[Task]:
    """Turn raw rows into tasks, or raise InvalidInput listing every problem.

    `field_labels` renames fields in messages (the CLI shows its option names); `seed` is
    the seed of rows that set none, so every task carries a checked integer; `delivery`
    holds the command line's output settings (format, loudness, ...) for rows that set none;
    `transcript_hint` says, in a missing-transcript message, what the input is called and how
    else a transcript can be had (the server words both its own way).
    """
    if not 0 <= seed < 2**32:
        raise InvalidInput([Problem("--seed", None, None, f"{seed} is outside 0–{2**32 - 1}")])
    problems: list[Problem] = []
    labels = field_labels or {}

    def bad(row: int | None, fld: str | None, msg: str) -> None:
        problems.append(Problem(source, None if field_labels else row, labels.get(fld, fld), msg))

    def note(row: int | None, fld: str | None, msg: str) -> None:
        log.warning("%s", Problem(source, None if field_labels else row, labels.get(fld, fld), msg))

    _check_defaults(delivery or {})
    known = set(FIELDS)
    seen_unknown: set[str] = set()
    for row in rows:
        for key in row:
            if key not in known and key not in seen_unknown:
                seen_unknown.add(key)
                sep = next((c for c in ";\t|" if c in str(key)), None)
                hint = f"; fields are separated by commas, not {sep!r}" if sep else ""
                if str(key).strip() in known:
                    bad(None, str(key), f"unknown field: the header has spaces around {str(key).strip()!r} "
                                        "(write the names between the commas without them)")
                    continue
                bad(None, str(key), f"unknown field (known fields: {', '.join(FIELDS)}){hint}")
    if not rows:
        bad(None, None, "manifest has no tasks")

    tasks: list[Task] = []
    for n, raw in enumerate(rows, 1):
        task = _validate_row(n, raw, base_dir, out_dir, engine, bad, transcribe, note, seed, delivery or {},
                             transcript_hint)
        if task is not None:
            task.source = source
            if field_labels:
                task.row = None
            tasks.append(task)

    _check_ids(rows, bad)
    _check_ids_and_outputs(tasks, bad)
    _check_chains(tasks, bad)
    if problems:
        raise InvalidInput(problems)
    return tasks


def _check_defaults(delivery: dict[str, Any]) -> None:
    """The command line's output settings, checked once rather than on every row: what holds
    for any format here, what depends on a row's format on the row."""
    problems: list[Problem] = []
    fmt = str(delivery.get("format") or "").strip().lower().lstrip(".")
    if fmt and fmt not in deliver.FORMATS:
        problems.append(Problem("--format", None, None,
                                f"unknown format {fmt!r} (one of: {', '.join(deliver.FORMATS)})"))
    any_format = {k: v for k, v in delivery.items() if k not in ("sample_rate", "bitrate")}  # FLAC takes any rate
    deliver.from_fields(any_format, ".flac",
                        lambda key, msg: problems.append(Problem(settings.OPTION_OF[key], None, None, msg)))
    if problems:
        raise InvalidInput(problems)


def _text(raw: dict, key: str) -> str:
    v = raw.get(key)
    if _is_missing(v):
        return ""
    return v if isinstance(v, str) else str(v)


def _validate_row(n: int, raw: dict, base_dir: Path, out_dir: Path, engine: type, bad,
                  transcribe: bool = False, note=None, default_seed: int = 0,
                  defaults: dict | None = None,
                  transcript_hint: tuple[str, str] = ("input_audio", "pass --transcribe")) -> Task | None:
    ok = True

    def err(fld: str | None, msg: str) -> None:
        nonlocal ok
        ok = False
        bad(n, fld, msg)

    for key, v in raw.items():
        plain = isinstance(v, (str, int, float)) and (not isinstance(v, bool) or key == "match_input")
        if not (plain or _is_missing(v)):
            err(key, f"expected a text or a number, got {type(v).__name__}")
        elif isinstance(v, str) and "\x00" in v:  # no path, prompt or name can hold one
            err(key, "contains a NUL byte")
    if not ok:
        return None

    task_id = _text(raw, "id").strip() or str(n)
    if not ID_PATTERN.fullmatch(task_id):
        err("id", f"{task_id!r} is not a usable id (letters, digits, '.', '-', '_'; it names the output file)")
        return None

    kind = _text(raw, "task").strip()
    if not kind:
        err("task", f"missing (one of: {', '.join(TASK_KINDS)})")
        return None
    if kind not in TASK_KINDS:
        err("task", f"unknown task {kind!r} (one of: {', '.join(TASK_KINDS)})")
        return None
    if kind not in engine.task_kinds:
        runs = ", ".join(sorted(engine.task_kinds))
        err("task", f"the {engine.name} engine cannot run {kind} tasks (it runs: {runs})")

    intensity = _number(raw, "intensity", INTENSITY.default, float, err)
    if intensity is not None and not INTENSITY.range[0] <= intensity <= INTENSITY.range[1]:
        err("intensity", f"{intensity:g} is outside {INTENSITY.range[0]}–{INTENSITY.range[1]}")
    iterations = _number(raw, "iterations", ITERATIONS.default, int, err)
    if iterations is not None and not ITERATIONS.range[0] <= iterations <= ITERATIONS.range[1]:
        err("iterations", f"{iterations} is outside {ITERATIONS.range[0]}–{ITERATIONS.range[1]}")
    seed = _number(raw, "seed", default_seed, int, err)
    if seed is not None and not 0 <= seed < 2**32:
        err("seed", f"{seed} is outside 0–{2**32 - 1}")

    fields = {k: _text(raw, k) for k in FIELDS}
    if kind == "clone":
        for key in EDIT_ONLY:
            if fields[key].strip():
                err(key, "does not apply to a clone task")
        prompt_audio = _audio_path(fields["prompt_audio"], base_dir, "prompt_audio", err)
        for key in ("prompt_text", "text"):
            if not fields[key].strip():
                err(key, "missing (a clone needs prompt_audio, prompt_text and text)")
        input_audio, input_task = None, None
    else:
        for key in CLONE_ONLY:
            if fields[key].strip():
                err(key, "does not apply to an edit task")
        prompt_audio = None
        input_audio, input_task = None, None
        ref = fields["input_audio"].strip()
        if ref.startswith("@"):
            input_task = ref[1:]
            if not input_task:
                err("input_audio", "'@' must be followed by a task id")
        else:
            input_audio = _audio_path(ref, base_dir, "input_audio", err)
        edit_type = fields["edit_type"].strip()
        edit_info = fields["edit_info"].strip()
        if not edit_type:
            err("edit_type", f"missing (one of: {', '.join(EDIT_INFOS)})")
        elif edit_type not in EDIT_INFOS:
            err("edit_type", f"unknown edit type {edit_type!r} (one of: {', '.join(EDIT_INFOS)})")
        elif edit_type not in engine.edit_types:
            err("edit_type", f"the {engine.name} engine cannot do {edit_type!r} edits "
                f"(it does: {', '.join(sorted(engine.edit_types))})")
        else:
            allowed = EDIT_INFOS[edit_type]
            if allowed and not edit_info:
                err("edit_info", f"missing for {edit_type} (one of: {', '.join(allowed)})")
            elif allowed and edit_info not in allowed:
                err("edit_info", f"unknown {edit_type} {edit_info!r} (one of: {', '.join(allowed)})")
            elif not allowed and edit_info:
                err("edit_info", f"{edit_type} takes no edit_info, got {edit_info!r}")
            if edit_type == "paralinguistic" and not fields["text"].strip():
                err("text", "missing (a paralinguistic edit needs the new text with tags such as [laugh])")
            a = "an" if edit_type[0] in "aeiou" else "a"
            if edit_type != "paralinguistic" and fields["text"].strip():
                err("text", f"does not apply to {a} {edit_type} edit")
            guided = intensity is not None and intensity != 1.0 and edit_type not in engine.needs_transcript
            if (engine.wants_transcript(edit_type, intensity if intensity is not None else INTENSITY.default)
                    and not fields["audio_text"].strip() and not transcribe):
                source, remedy = transcript_hint
                why = (f"intensity {intensity:g} on {a} {edit_type} edit needs the transcript of {source} "
                       "(the guidance reference re-speaks it)" if guided
                       else f"{a} {edit_type} edit needs the transcript of {source}")
                err("audio_text", f"missing ({why}; or {remedy})")

    if kind == "clone" or fields["edit_type"].strip() == "paralinguistic":  # a text the model speaks
        for is_error, msg in tags.check(fields["text"]):
            if is_error:
                err("text", msg)
            elif note is not None:
                note(n, "text", msg)

    given = {k for k in settings.FIELDS if not _is_missing(raw.get(k)) and str(raw[k]).strip()}
    values = {k: raw[k] if k in given else (defaults or {}).get(k) for k in settings.FIELDS}

    def err_setting(key: str, msg: str) -> None:  # a default is named as the option the user gave
        err(key if key in given else settings.OPTION_OF[key], msg)

    output = _output_path(fields["output"].strip(), task_id, out_dir, err, values["format"],
                          "format" in given, err_setting)
    if output is None:
        return None
    delivery = deliver.from_fields(values, output.suffix.lower(), err_setting, given)
    if not ok:
        return None
    return Task(
        id=task_id, kind=kind, source="", row=n, output=output, named_output=bool(fields["output"].strip()),
        prompt_audio=prompt_audio, prompt_text=fields["prompt_text"], text=fields["text"],
        input_audio=input_audio, input_task=input_task, audio_text=fields["audio_text"].strip(),
        edit_type=fields["edit_type"].strip(), edit_info=fields["edit_info"].strip(),
        intensity=float(intensity), iterations=int(iterations), seed=seed, delivery=delivery,
    )


def _number(raw: dict, key: str, default, kind: type, err):
    v = raw.get(key)
    if _is_missing(v) or (isinstance(v, str) and not v.strip()):
        return default
    try:
        number = float(v)
    except (TypeError, ValueError):
        err(key, f"{v!r} is not a number")
        return None
    except OverflowError:
        err(key, f"{str(v)[:20]}... is far too large")
        return None
    if not math.isfinite(number):
        err(key, f"{v!r} is not a finite number")
        return None
    if kind is int:
        if number != int(number):
            err(key, f"{v!r} is not a whole number")
            return None
        return int(number)
    return number


def _audio_path(value: str, base_dir: Path, key: str, err) -> Path | None:
    if not value.strip():
        err(key, "missing")
        return None
    if "\x00" in value:
        err(key, "contains a NUL byte")
        return None
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        info = _probe(path)
    except AudioError as e:
        err(key, f"{value.strip()}: {e}")
        return None
    if info.seconds < 0.1:
        err(key, f"{value.strip()}: audio is too short ({info.seconds * 1000:.0f} ms; at least 100 ms)")
        return None
    return path.resolve()


def _probe(path: Path):
    """probe(), once per file version: a manifest of 20,000 rows often reads one clip."""
    try:
        st = os.stat(path)
    except OSError:
        return probe(path)  # it words the error
    return _probe_version(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _probe_version(path: str, *version: int):
    return probe(Path(path))


NAME_MAX = 255  # bytes in one file name on the usual file systems


def _output_path(value: str, task_id: str, out_dir: Path, err, fmt: Any = None, fmt_given: bool = False,
                 err_setting=None) -> Path | None:
    if "\x00" in value:
        err("output", "contains a NUL byte")
        return None
    fmt = str(fmt).strip().lower().lstrip(".") if fmt is not None and str(fmt).strip() else ""
    if fmt and fmt not in deliver.FORMATS:
        err_setting("format", f"unknown format {fmt!r} (one of: {', '.join(deliver.FORMATS)})")
        return None
    path = Path(value).expanduser() if value else Path(f"{task_id}.{fmt or 'wav'}")
    if value and fmt and fmt_given and path.suffix.lower() != f".{fmt}":
        err_setting("format", f"{fmt} disagrees with the output's name {path.name} (its extension decides; "
                              "give one or the other)")
        return None
    # the output's temporary name adds a dot, host, pid and a suffix to it: keep room for them
    too_long = [p for p in path.parts if len(p.encode()) > NAME_MAX - 48]
    if too_long:
        what = "id" if not value else "output"
        err(what, f"{too_long[0][:24]}...: {len(too_long[0].encode())} bytes, too long for a file name "
                  f"(at most {NAME_MAX - 48})")
        return None
    if not path.is_absolute():
        path = out_dir / path
    if path.suffix.lower() not in OUTPUT_FORMATS:
        err("output", f"{value or path.name}: unsupported format (use {', '.join(OUTPUT_FORMATS)})")
        return None
    missing = _missing_codec(path.suffix.lower())
    if missing:
        err("output", f"{value or path.name}: {missing}")
        return None
    return path.resolve()


@functools.cache
def _missing_codec(suffix: str) -> str:
    return missing_codec(suffix)


def _check_ids(rows: list[dict], bad) -> None:
    """Every row's id, valid row or not: a duplicate is named even when its first row has another
    error (an id is a row's own, the row number where it has none)."""
    first: dict[str, int] = {}
    for n, raw in enumerate(rows, 1):
        task_id = _text(raw, "id").strip() or str(n)
        if task_id in first:
            bad(n, "id", f"duplicate id {task_id!r} (also row {first[task_id]})")
        else:
            first[task_id] = n


def _check_ids_and_outputs(tasks: list[Task], bad) -> None:
    first_by_output: dict[Path, Task] = {}
    inputs = {t.prompt_audio or t.input_audio: t for t in tasks if (t.prompt_audio or t.input_audio)}
    for t in tasks:
        if t.output in first_by_output:
            bad(t.row, "output", f"{t.output.name}: same output as row {first_by_output[t.output].row}")
        else:
            first_by_output[t.output] = t
        if t.output in inputs:
            other = inputs[t.output]
            whose = "its own input audio" if other is t else f"the input audio of row {other.row}"
            bad(t.row, "output", f"{t.output.name}: would overwrite {whose}")


def _check_chains(tasks: list[Task], bad) -> None:
    by_id = {t.id: t for t in tasks}
    for t in tasks:
        if t.input_task is not None and t.input_task not in by_id:
            bad(t.row, "input_audio", f"@{t.input_task}: no task with that id")
    # Walk each chain (iteratively: chains can be thousands long); a chain that returns to a
    # task already on it is a cycle. Tasks known to reach a start are not walked again.
    reported: set[str] = set()
    rooted: set[str] = set()
    for t in tasks:
        path: list[str] = []
        on_path: set[str] = set()
        cur: Task | None = t
        cyclic = False
        while cur is not None and cur.input_task is not None and cur.id not in rooted:
            if cur.id in on_path:
                cyclic = True
                cycle = path[path.index(cur.id):] + [cur.id]
                if t.id == cur.id and t.id not in reported:
                    reported.update(cycle)
                    bad(t.row, "input_audio", "chain forms a cycle: " + " -> ".join("@" + c for c in cycle))
                break
            path.append(cur.id)
            on_path.add(cur.id)
            cur = by_id.get(cur.input_task)
        if not cyclic:
            rooted.update(path)


def order(tasks: list[Task]) -> list[Task]:
    """Tasks in manifest order, except that a chained edit follows the task it reads."""
    by_id = {t.id: t for t in tasks}
    done: set[str] = set()
    ordered: list[Task] = []

    for t in tasks:  # walk up to the first task already placed, then place the chain from its start
        chain: list[Task] = []
        cur: Task | None = t
        while cur is not None and cur.id not in done:
            done.add(cur.id)
            chain.append(cur)
            cur = by_id[cur.input_task] if cur.input_task is not None else None
        ordered.extend(reversed(chain))
    return ordered
