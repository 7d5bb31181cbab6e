"""Hostile manifests, paths and options, table-driven: each case is run for real (not as a dry
run) in a folder holding an input, a user's file, and an earlier run's output, report and
records; it must end with the exact exit code and message, no traceback, and, when refused,
every file as it was and nothing new (no output, no report, no cache)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLIPS, invoke

NARRATION = CLIPS / "narration.wav"
HEADER = "task,id,input_audio,edit_type,edit_info,intensity,output\n"


def csv(*rows: str) -> str:
    return HEADER + "".join(r + "\n" for r in rows)


def jsonl(*objs: dict) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def edit(**kw) -> dict:
    return {"task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad", **kw}


@dataclass(frozen=True)
class Case:
    name: str
    manifest: str | bytes  # "{W}" stands for the work folder
    message: str  # what follows "error: <manifest>" (refusals) or must appear in stderr
    code: int = 2
    suffix: str = ".csv"
    args: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # for runs that go ahead: the files they must write in out/


OK = "error: "  # marker: the message is matched anywhere in stderr

CASES = [
    # -- the manifest file itself
    Case("empty", "", ": manifest is empty"),
    Case("blank-lines-only", "\n\n  \n", ": manifest is empty"),
    Case("header-only", HEADER, ": manifest has no tasks"),
    Case("utf16", csv("edit,a,{W}/in.wav,vad,,,").encode("utf-16"), ": not UTF-8 text (line 1, byte 0)"),
    Case("latin1", csv("edit,a,{W}/in.wav,vad,,,café.wav").encode("latin-1"), ": not UTF-8 text (line 2, byte "),
    Case("a-wav-as-manifest", NARRATION.read_bytes(), ": not UTF-8 text (line 1, byte 5)"),
    Case("unknown-suffix", csv("edit,a,{W}/in.wav,vad,,,"), ": unknown manifest format '.txt': use .csv or .jsonl",
         suffix=".txt"),
    Case("no-suffix", csv("edit,a,{W}/in.wav,vad,,,"), ": unknown manifest format '(none)': use .csv or .jsonl",
         suffix=""),
    Case("jsonl-every-bad-line-named", '{"id": "a"\n{bad}\n', ": row 2: not valid JSON (Expecting property name "
         "enclosed in double quotes, column 2)", suffix=".jsonl"),
    Case("header-with-spaces", "id, task, input_audio, edit_type\na,edit,{W}/in.wav,vad\n",
         ", field ' task': unknown field: the header has spaces around 'task' (write the names between the commas "
         "without them)"),
    Case("duplicate-id-after-a-bad-row",
         '{"id": "a", "task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad", "intensity": 9}\n'
         '{"id": "a", "task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad"}\n',
         ": row 2, field 'id': duplicate id 'a' (also row 1)", suffix=".jsonl"),
    # -- CSV structure
    Case("unterminated-quote", csv('edit,"a,{W}/in.wav,vad,,,'),
         ": not valid CSV (Error tokenizing data. C error: EOF inside string starting at row 1)"),
    Case("row-wider-than-header", "task,input_audio,edit_type\nedit,{W}/in.wav,vad,x,y\n",
         ": row 1: not valid CSV (this row has more fields than the header's 3)"),
    Case("column-twice", "task,id,id,input_audio,edit_type\nedit,a,b,{W}/in.wav,vad\n",
         ", field 'id': column given twice in the header"),
    Case("empty-column-name", "task,,input_audio,edit_type\nedit,x,{W}/in.wav,vad\n",
         ", field 'header': the header has an empty column name"),
    Case("unknown-column", "task,id,input_audio,edit_tpye\nedit,a,{W}/in.wav,vad\n",
         ", field 'edit_tpye': unknown field (known fields: id, task, prompt_audio"),
    Case("semicolons", "task;id;input_audio;edit_type\nedit;a;{W}/in.wav;vad\n",
         "unknown field (known fields: id, task, prompt_audio, prompt_text, text, input_audio, audio_text, "
         "edit_type, edit_info, intensity, iterations, seed, output, format, sample_rate, bitrate, loudness, peak, "
         "match_input); fields are separated by commas, not ';'"),
    Case("tabs", "task\tid\tinput_audio\tedit_type\nedit\ta\t{W}/in.wav\tvad\n",
         "; fields are separated by commas, not '\\t'"),
    Case("nul-in-a-field", csv("edit,a\x00b,{W}/in.wav,vad,,,"), ": row 1, field 'id': contains a NUL byte"),
    Case("nul-in-a-path", csv("edit,a,{W}/in\x00.wav,vad,,,"), ": row 1, field 'input_audio': contains a NUL byte"),
    # -- JSONL structure
    Case("jsonl-array", "[1, 2]\n", ": row 1: each line must be a JSON object", suffix=".jsonl"),
    Case("jsonl-number", "42\n", ": row 1: each line must be a JSON object", suffix=".jsonl"),
    Case("jsonl-string", '"edit"\n', ": row 1: each line must be a JSON object", suffix=".jsonl"),
    Case("jsonl-truncated", '{"task": "edit", "input_audio": "x\n', ": row 1: not valid JSON (Unterminated string",
         suffix=".jsonl"),
    Case("jsonl-trailing-data", jsonl(edit()).rstrip("\n") + " x\n", ": row 1: not valid JSON (Extra data",
         suffix=".jsonl"),
    Case("jsonl-key-twice", '{"task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad", "edit_type": '
                            '"speed"}\n', ": row 1, field 'edit_type': given twice in one object", suffix=".jsonl"),
    Case("jsonl-nested-deeply", "[" * 100_000 + "]" * 100_000 + "\n",
         ": row 1: not valid JSON for a manifest (nested too deeply)", suffix=".jsonl"),
    Case("jsonl-nan", '{"task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad", "intensity": NaN}\n',
         ": row 1: not valid JSON (NaN is not a JSON number; write a number, or null for none)", suffix=".jsonl"),
    Case("jsonl-infinity", '{"task": "edit", "input_audio": "{W}/in.wav", "edit_type": "vad", "seed": Infinity}\n',
         ": row 1: not valid JSON (Infinity is not a JSON number", suffix=".jsonl"),
    Case("jsonl-bad-utf8", b'{"task": "edit", "input_audio": "x", "id": "\xff\xfe"}\n',
         ": not UTF-8 text (line 1, byte 44)",
         suffix=".jsonl"),
    Case("jsonl-bool-intensity", jsonl(edit(edit_type="speed", edit_info="faster", intensity=True)),
         ": row 1, field 'intensity': expected a text or a number, got bool", suffix=".jsonl"),
    Case("jsonl-object-text", jsonl(edit(audio_text={"a": 1})),
         ": row 1, field 'audio_text': expected a text or a number, got dict", suffix=".jsonl"),
    Case("jsonl-list-id", jsonl(edit(id=["a"])), ": row 1, field 'id': expected a text or a number, got list",
         suffix=".jsonl"),
    Case("jsonl-fractional-iterations", jsonl(edit(iterations=1.5)),
         ": row 1, field 'iterations': 1.5 is not a whole number", suffix=".jsonl"),
    Case("jsonl-seed-beyond-int64", jsonl(edit(seed=2**70)),
         ": row 1, field 'seed': 1180591620717411303424 is outside 0–4294967295", suffix=".jsonl"),
    Case("jsonl-second-line-bad", jsonl(edit(id="a")) + "{oops}\n", ": row 2: not valid JSON (Expecting property",
         suffix=".jsonl"),
    # -- ids
    Case("id-twice", csv("edit,a,{W}/in.wav,vad,,,", "edit,a,{W}/in.wav,vad,,,x.wav"),
         ": row 2, field 'id': duplicate id 'a' (also row 1)"),
    Case("id-with-slash", csv("edit,../evil,{W}/in.wav,vad,,,"),
         ": row 1, field 'id': '../evil' is not a usable id (letters, digits, '.', '-', '_'; it names the output "
         "file)"),
    Case("id-dot-dot", csv("edit,..,{W}/in.wav,vad,,,"), ": row 1, field 'id': '..' is not a usable id"),
    Case("id-leading-dash", csv("edit,-rf,{W}/in.wav,vad,,,"), ": row 1, field 'id': '-rf' is not a usable id"),
    Case("id-hidden", csv("edit,.editx,{W}/in.wav,vad,,,"), ": row 1, field 'id': '.editx' is not a usable id"),
    Case("id-with-space", jsonl(edit(id="a b")), ": row 1, field 'id': 'a b' is not a usable id", suffix=".jsonl"),
    Case("id-with-tab", jsonl(edit(id="a\tb")), ": row 1, field 'id': 'a\\tb' is not a usable id", suffix=".jsonl"),
    Case("id-too-long", csv("edit," + "x" * 220 + ",{W}/in.wav,vad,,,"),
         ": row 1, field 'id': xxxxxxxxxxxxxxxxxxxxxxxx...: 224 bytes, too long for a file name (at most 207)"),
    # -- task and edit fields
    Case("task-unknown", csv("transcode,a,{W}/in.wav,vad,,,"),
         ": row 1, field 'task': unknown task 'transcode' (one of: clone, edit)"),
    Case("task-missing", csv(",a,{W}/in.wav,vad,,,"), ": row 1, field 'task': missing (one of: clone, edit)"),
    Case("edit-type-unknown", csv("edit,a,{W}/in.wav,transcode,,,"),
         ": row 1, field 'edit_type': unknown edit type 'transcode' (one of: emotion, style, speed, paralinguistic, "
         "denoise, vad)"),
    Case("edit-type-missing", csv("edit,a,{W}/in.wav,,,,"), ": row 1, field 'edit_type': missing (one of:"),
    Case("edit-type-engine-cannot", csv("edit,a,{W}/in.wav,emotion,happy,,"),
         ": row 1, field 'edit_type': the dsp engine cannot do 'emotion' edits (it does: denoise, speed, vad)"),
    Case("edit-info-on-vad", csv("edit,a,{W}/in.wav,vad,loud,,"),
         ": row 1, field 'edit_info': vad takes no edit_info, got 'loud'"),
    Case("edit-info-missing", csv("edit,a,{W}/in.wav,speed,,,"),
         ": row 1, field 'edit_info': missing for speed (one of: faster, slower, more faster, more slower)"),
    Case("clone-on-dsp", "task,id,prompt_audio,prompt_text,text\nclone,a,{W}/in.wav,hello,hi\n",
         ": row 1, field 'task': the dsp engine cannot run clone tasks (it runs: edit)"),
    Case("clone-without-text", "task,id,prompt_audio,prompt_text\nclone,a,{W}/in.wav,hello\n",
         ": row 1, field 'text': missing (a clone needs prompt_audio, prompt_text and text)"),
    # -- numbers
    Case("intensity-zero", csv("edit,a,{W}/in.wav,speed,faster,0,"),
         ": row 1, field 'intensity': 0 is outside 0.1–3.0"),
    Case("intensity-negative", csv("edit,a,{W}/in.wav,speed,faster,-1,"),
         ": row 1, field 'intensity': -1 is outside 0.1–3.0"),
    Case("intensity-high", csv("edit,a,{W}/in.wav,speed,faster,5,"),
         ": row 1, field 'intensity': 5 is outside 0.1–3.0"),
    Case("intensity-nan", csv("edit,a,{W}/in.wav,speed,faster,nan,"),
         ": row 1, field 'intensity': 'nan' is not a finite number"),
    Case("intensity-inf", csv("edit,a,{W}/in.wav,speed,faster,inf,"),
         ": row 1, field 'intensity': 'inf' is not a finite number"),
    Case("intensity-word", csv("edit,a,{W}/in.wav,speed,faster,strong,"),
         ": row 1, field 'intensity': 'strong' is not a number"),
    Case("intensity-decimal-comma", csv('edit,a,{W}/in.wav,speed,faster,"1,5",'),
         ": row 1, field 'intensity': '1,5' is not a number"),
    Case("iterations-zero", "task,input_audio,edit_type,iterations\nedit,{W}/in.wav,vad,0\n",
         ": row 1, field 'iterations': 0 is outside 1–10"),
    Case("iterations-many", "task,input_audio,edit_type,iterations\nedit,{W}/in.wav,vad,1000000\n",
         ": row 1, field 'iterations': 1000000 is outside 1–10"),
    Case("seed-negative", "task,input_audio,edit_type,seed\nedit,{W}/in.wav,vad,-1\n",
         ": row 1, field 'seed': -1 is outside 0–4294967295"),
    Case("seed-fraction", "task,input_audio,edit_type,seed\nedit,{W}/in.wav,vad,1.5\n",
         ": row 1, field 'seed': '1.5' is not a whole number"),
    # -- input audio
    Case("input-missing", csv("edit,a,{W}/nope.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/nope.wav: file not found"),
    Case("input-empty-field", csv("edit,a,,vad,,,"), ": row 1, field 'input_audio': missing"),
    Case("input-is-a-folder", csv("edit,a,{W},vad,,,"), ": row 1, field 'input_audio': {W}: not a regular file"),
    Case("input-is-a-fifo", csv("edit,a,{W}/fifo.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/fifo.wav: not a regular file"),
    Case("input-is-dev-zero", csv("edit,a,/dev/zero,vad,,,"),
         ": row 1, field 'input_audio': /dev/zero: not a regular file"),
    Case("input-symlink-loop", csv("edit,a,{W}/loop.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/loop.wav: file not found"),
    Case("input-not-audio", csv("edit,a,{W}/text.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/text.wav: not a readable audio file"),
    Case("input-zero-bytes", csv("edit,a,{W}/empty.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/empty.wav: file is empty (0 bytes)"),
    Case("input-truncated-header", csv("edit,a,{W}/trunc.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/trunc.wav: not a readable audio file"),
    Case("input-too-short", csv("edit,a,{W}/click.wav,vad,,,"),
         ": row 1, field 'input_audio': {W}/click.wav: audio is too short (50 ms; at least 100 ms)"),
    Case("input-relative-missing", csv("edit,a,missing/in.wav,vad,,,"),
         ": row 1, field 'input_audio': missing/in.wav: file not found"),
    # -- chains
    Case("chain-unknown-task", csv("edit,a,@zz,vad,,,"), ": row 1, field 'input_audio': @zz: no task with that id"),
    Case("chain-to-itself", csv("edit,a,@a,vad,,,"), ": row 1, field 'input_audio': chain forms a cycle: @a -> @a"),
    Case("chain-cycle", csv("edit,a,@b,vad,,,", "edit,b,@a,vad,,,"), "field 'input_audio': chain forms a cycle"),
    # -- outputs
    Case("output-not-audio", csv("edit,a,{W}/in.wav,vad,,,a.txt"),
         ": row 1, field 'output': a.txt: unsupported format (use .wav, .flac, .mp3, .ogg, .opus)"),
    Case("output-no-suffix", csv("edit,a,{W}/in.wav,vad,,,sub"),
         ": row 1, field 'output': sub: unsupported format (use .wav, .flac, .mp3, .ogg, .opus)"),
    Case("output-twice", csv("edit,a,{W}/in.wav,vad,,,x.wav", "edit,b,{W}/in.wav,vad,,,x.wav"),
         ": row 2, field 'output': x.wav: same output as row 1"),
    Case("output-twice-by-id", csv("edit,x,{W}/in.wav,vad,,,", "edit,b,{W}/in.wav,vad,,,x.wav"),
         ": row 2, field 'output': x.wav: same output as row 1"),
    Case("output-is-its-input", csv("edit,a,{W}/in.wav,vad,,,{W}/in.wav"),
         ": row 1, field 'output': in.wav: would overwrite its own input audio"),
    Case("output-is-another-input", csv("edit,a,{W}/in.wav,vad,,,{W}/in put 'x'.wav",
         "edit,b,{W}/in put 'x'.wav,vad,,,"),
         ": row 1, field 'output': in put 'x'.wav: would overwrite the input audio of row 2"),
    Case("output-is-a-users-file", csv("edit,a,{W}/in.wav,vad,,,{W}/mine.wav"),
         ": row 1, field 'output': {W}/mine.wav exists and was not written by this task (use --overwrite)"),
    Case("output-is-a-folder", csv("edit,a,{W}/in.wav,vad,,,{W}/dir.wav"),
         ": row 1, field 'output': {W}/dir.wav exists and was not written by this task (use --overwrite)"),
    Case("output-under-a-file", csv("edit,a,{W}/in.wav,vad,,,{W}/mine.wav/o.wav"),
         ": row 1, field 'output': {W}/mine.wav is a file, so the folder {W}/mine.wav cannot be made"),
    Case("output-nul", jsonl(edit(output="a\x00.wav")), ": row 1, field 'output': contains a NUL byte",
         suffix=".jsonl"),
    Case("output-name-too-long", csv("edit,a,{W}/in.wav,vad,,," + "o" * 230 + ".wav"),
         ": row 1, field 'output': oooooooooooooooooooooooo...: 234 bytes, too long for a file name (at most 207)"),
    Case("output-of-the-earlier-run-changed-owner", csv("edit,earlier,{W}/in.wav,speed,faster,,"),
         ": row 1, field 'output': earlier.wav belongs to another manifest, {W}/first.csv (its task 'earlier'); "
         "use another --out-dir, or --force to take it over"),
    # -- delivery settings, per row and as command-line defaults
    Case("format-unknown", jsonl(edit(format="aac")), ": row 1, field 'format': unknown format 'aac' (one of: "
         "wav, flac, mp3, ogg, opus)", suffix=".jsonl"),
    Case("format-disagrees-with-output", jsonl(edit(format="mp3", output="a.wav")),
         ": row 1, field 'format': mp3 disagrees with the output's name a.wav (its extension decides; give one or "
         "the other)", suffix=".jsonl"),
    Case("format-option-unknown", csv("edit,a,{W}/in.wav,vad,,,"), "error: --format: unknown format 'm4a' (one of: "
         "wav, flac, mp3, ogg, opus)", args=("--format", "m4a")),
    Case("loudness-option-positive", csv("edit,a,{W}/in.wav,vad,,,", "edit,b,{W}/in.wav,vad,,,"),
         "error: --loudness: 3.0 is outside -60–-5 LUFS\n", args=("--loudness", "3")),
    Case("sample-rate-not-opus", jsonl(edit(output="a.opus", sample_rate=44100)),
         ": row 1, field 'sample_rate': 44100 Hz cannot be written as .opus (its rates: 8000, 12000, 16000, 24000, "
         "48000)", suffix=".jsonl"),
    Case("sample-rate-option-not-mp3", csv("edit,a,{W}/in.wav,vad,,,a.mp3"),
         ": row 1, --sample-rate: 96000 Hz cannot be written as .mp3", args=("--sample-rate", "96000")),
    Case("sample-rate-text", jsonl(edit(sample_rate="fast")), ": row 1, field 'sample_rate': 'fast' is not a number",
         suffix=".jsonl"),
    Case("sample-rate-fraction", jsonl(edit(sample_rate=22050.5)),
         ": row 1, field 'sample_rate': 22050.5 is not a whole number", suffix=".jsonl"),
    Case("sample-rate-tiny", jsonl(edit(sample_rate=100)), ": row 1, field 'sample_rate': 100 is outside "
         "8000–192000 Hz", suffix=".jsonl"),
    Case("bitrate-on-wav", jsonl(edit(bitrate=128)), ": row 1, field 'bitrate': does not apply to .wav output "
         "(lossless)", suffix=".jsonl"),
    Case("bitrate-on-vorbis", jsonl(edit(output="a.ogg", bitrate=128)), ": row 1, field 'bitrate': does not "
         "apply to .ogg output (Vorbis is quality-based; use .mp3 or .opus for a set bitrate)", suffix=".jsonl"),
    Case("bitrate-not-an-mp3-rate", jsonl(edit(output="a.mp3", bitrate=100)), ": row 1, field 'bitrate': 100 "
         "kbit/s is not an MP3 bitrate (one of: 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 192, "
         "224, 256, 320)", suffix=".jsonl"),
    Case("bitrate-not-at-this-mp3-rate", jsonl(edit(output="a.mp3", bitrate=320, sample_rate=24000)),
         ": row 1, field 'bitrate': 320 kbit/s is not an MP3 bitrate at 24000 Hz (one of: 8, 16, 24, 32, 40, 48, "
         "56, 64, 80, 96, 112, 128, 144, 160)", suffix=".jsonl"),
    Case("bitrate-opus-too-high", jsonl(edit(output="a.opus", bitrate=512)), ": row 1, field 'bitrate': 512 kbit/s "
         "is outside .opus's 6–256", suffix=".jsonl"),
    Case("loudness-positive", jsonl(edit(loudness=3)), ": row 1, field 'loudness': 3 is outside -60–-5 LUFS",
         suffix=".jsonl"),
    Case("loudness-nan-text", csv("edit,a,{W}/in.wav,vad,,,").replace("output\n", "output,loudness\n")
         .replace(",,,\n", ",,,,nan\n"), ": row 1, field 'loudness': 'nan' is not a number"),
    Case("peak-above-full-scale", jsonl(edit(loudness=-16, peak=2)), ": row 1, field 'peak': 2 is outside -30–0 "
         "dBTP", suffix=".jsonl"),
    Case("loudness-and-match-input", jsonl(edit(loudness=-16, match_input=True)), ": row 1, field 'match_input': "
         "--loudness and match_input exclude each other: one target per output", suffix=".jsonl"),
    Case("match-input-not-a-bool", jsonl(edit(match_input="maybe")), ": row 1, field 'match_input': 'maybe' is "
         "not true or false", suffix=".jsonl"),
    Case("loudness-of-a-short-input", jsonl(edit(id="a", input_audio="{W}/short.wav", match_input=True)),
         "task a failed: LoudnessError: match_input: the input audio: 0.25 s is too short to measure loudness "
         "(BS.1770 needs 0.4 s)", code=1, suffix=".jsonl"),
    # -- options
    Case("report-is-the-manifest", csv("edit,a,{W}/in.wav,vad,,,"), "error: --report: {W}/m.csv would overwrite the "
         "manifest", args=("--report", "{W}/m.json")),
    Case("report-twin-is-an-input", "task,id,input_audio,edit_type\nedit,a,{W}/in.csv,vad\n",
         "error: --report: {W}/in.csv would overwrite the input audio of row 1", args=("--report", "{W}/in.json")),
    Case("report-is-a-users-file", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --report: {W}/notes.json exists and is not an editx report: choose another --report, or move it",
         args=("--report", "{W}/notes.json")),
    Case("report-twin-is-a-users-file", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --report: {W}/first.csv exists and is not an editx report", args=("--report", "{W}/first.json")),
    Case("report-is-a-folder", csv("edit,a,{W}/in.wav,vad,,,"),
         "Invalid value for '--report': File '{W}/dir.json' is a directory.",
         args=("--report", "{W}/dir.json")),
    Case("report-not-json", csv("edit,a,{W}/in.wav,vad,,,"), "error: --report: {W}/r.txt: must name a .json file",
         args=("--report", "{W}/r.txt")),
    Case("report-under-a-file", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --report: {W}/mine.wav is a file, so the folder {W}/mine.wav cannot be made",
         args=("--report", "{W}/mine.wav/r.json")),
    Case("out-dir-under-a-file", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --out-dir: {W}/mine.wav is a file, so the folder {W}/mine.wav/out cannot be made",
         args=("-o", "{W}/mine.wav/out")),
    Case("cache-dir-under-a-file", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --cache-dir: {W}/mine.wav/c: the feature cache cannot be used",
         args=("--cache-dir", "{W}/mine.wav/c")),
    Case("seed-option-negative", csv("edit,a,{W}/in.wav,vad,,,"), "Invalid value for '--seed'", args=("--seed", "-1")),
    Case("gpu-negative", csv("edit,a,{W}/in.wav,vad,,,"), "Invalid value for '--gpu': -1 is not in the range x>=0",
         args=("--gpu", "-1")),
    Case("gpu-and-gpus", csv("edit,a,{W}/in.wav,vad,,,"), "error: --gpu and --gpus exclude each other",
         args=("--gpu", "0", "--gpus", "0,1")),
    Case("gpus-not-a-list", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --gpus: 'one' is not a comma-separated list of GPU indices", args=("--gpus", "one")),
    Case("workers-zero", csv("edit,a,{W}/in.wav,vad,,,"), "Invalid value for '--workers': 0 is not in the range",
         args=("--workers", "0")),
    Case("engine-unknown", csv("edit,a,{W}/in.wav,vad,,,"), "error: --engine: unknown engine 'nope' (known: dsp, "
         "stepaudio)", args=("--engine", "nope")),
    Case("engine-stepaudio-without-models", csv("edit,a,{W}/in.wav,vad,,,"),
         "error: --engine stepaudio: {W}/nope: folder not found",
         args=("--engine", "stepaudio", "--model-dir", "{W}/nope", "--tokenizer-dir", "{W}", "--editx-src", "{W}")),
    # -- what must go ahead: odd but valid
    # -- quality checks and long audio
    Case("retry-below-not-a-number", csv("edit,a,{W}/in.wav,vad,,,"), "error: --retry-below: 'wer=x': 'x' is not a "
         "number\n", args=("--retry-below", "wer=x")),
    Case("retry-below-unknown-score", csv("edit,a,{W}/in.wav,vad,,,"), "error: --retry-below: 'mos=3': expected "
         "wer=N, cer=N or sim=N, comma-separated\n", args=("--retry-below", "mos=3")),
    Case("max-retries-alone", csv("edit,a,{W}/in.wav,vad,,,"), "error: --max-retries needs --retry-below (the scores "
         "an output must reach)\n", args=("--max-retries", "3")),
    Case("qa-without-a-whisper-model", csv("edit,a,{W}/in.wav,vad,,,"), "error: --whisper-model: --whisper-model "
         "'{W}/none.pt': no such file, and not a Whisper model name\n",
         args=("--qa", "--whisper-model", "{W}/none.pt")),
    Case("chunk-seconds-too-short", csv("edit,a,{W}/in.wav,vad,,,"), "Invalid value for '--chunk-seconds': 1.0 is not "
         "in the range 5<=x<=600", args=("--chunk-seconds", "1")),
    Case("bom-and-crlf", "\ufeff" + csv("edit,a,{W}/in.wav,vad,,,").replace("\n", "\r\n"), "", code=0,
         writes=("a.wav",)),
    Case("unicode-id-and-text", jsonl(edit(id="naïve-名前", audio_text="a\u2028b")), "", code=0, suffix=".jsonl",
         writes=("naïve-名前.wav",)),
    Case("glob-characters-in-a-name", csv("edit,a,{W}/in.wav,vad,,,[*?].wav"), "", code=0, writes=("[*?].wav",)),
    Case("spaces-and-quotes-in-a-path", csv('edit,a,"{W}/in put \'x\'.wav",vad,,,'), "", code=0, writes=("a.wav",)),
    Case("fewer-fields-than-header", csv("edit,a,{W}/in.wav,vad"), "", code=0, writes=("a.wav",)),
    Case("numeric-id", jsonl(edit(id=7)), "", code=0, suffix=".jsonl", writes=("7.wav",)),
    Case("null-values-are-no-values", jsonl(edit(id="a", intensity=None, seed=None, output=None)), "", code=0,
         suffix=".jsonl", writes=("a.wav",)),
    Case("an-input-that-is-a-symlink", csv("edit,a,{W}/link.wav,vad,,,"), "", code=0, writes=("a.wav",)),
    Case("an-output-in-a-new-subfolder", csv("edit,a,{W}/in.wav,vad,,,deep/er/a.wav"), "", code=0,
         writes=("deep/er/a.wav",)),
    Case("a-bitrate-default-skips-lossless-rows",
         csv("edit,a,{W}/in.wav,vad,,,a.wav", "edit,b,{W}/in.wav,vad,,,b.mp3"), "", code=0,
         args=("--bitrate", "64"), writes=("a.wav", "b.mp3")),
    Case("match-input-as-text", csv("edit,a,{W}/in.wav,vad,,,").replace("output\n", "output,match_input\n")
         .replace(",,,\n", ",,,,Yes\n"), "", code=0, writes=("a.wav",)),
]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A work folder after one earlier run: its output, record and report."""
    work = tmp_path_factory.mktemp("earlier")
    shutil.copy(NARRATION, work / "in.wav")
    (work / "first.csv").write_text(f"task,id,input_audio,edit_type\nedit,earlier,{work}/in.wav,vad\n")
    r = invoke("batch", work / "first.csv", "--engine", "dsp", "-o", work / "out", "-q", "--no-cache")
    assert r.exit_code == 0, r.stderr
    return work


def _work(earlier: Path, tmp_path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    work = tmp_path / "w"
    shutil.copytree(earlier, work, symlinks=True)
    # the earlier run's records name its manifest by absolute path: keep them true in the copy
    for rec in (work / "out" / ".editx").glob("*.json"):
        rec.write_text(rec.read_text().replace(str(earlier), str(work)))
    (work / "first.csv").write_text((work / "first.csv").read_text().replace(str(earlier), str(work)))
    shutil.copy(NARRATION, work / "in put 'x'.wav")
    (work / "text.wav").write_text("hello, I am not audio")
    (work / "empty.wav").write_bytes(b"")
    (work / "trunc.wav").write_bytes(NARRATION.read_bytes()[:30])
    sf.write(work / "click.wav", np.full(800, 0.1, np.float32), 16000)
    sf.write(work / "short.wav", 0.1 * np.sin(np.arange(4000, dtype=np.float32) / 5), 16000)
    (work / "mine.wav").write_bytes(b"a user's file")
    (work / "dir.wav").mkdir()
    (work / "dir.json").mkdir()
    (work / "notes.json").write_text('{"my": "notes"}')
    shutil.copy(NARRATION, work / "in.csv")  # audio with an odd name: a report's CSV twin must not hit it
    os.mkfifo(work / "fifo.wav")
    os.symlink("loop.wav", work / "loop.wav")
    os.symlink("in.wav", work / "link.wav")
    return work


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, earlier, tmp_path, monkeypatch):
    work = _work(earlier, tmp_path)
    monkeypatch.chdir(work)
    fill = lambda s: s.replace("{W}", str(work))  # noqa: E731
    m = work / f"m{case.suffix}"
    if isinstance(case.manifest, bytes):
        m.write_bytes(case.manifest.replace(b"{W}", str(work).encode()))
    else:
        m.write_bytes(fill(case.manifest).encode())
    args = [fill(a) for a in case.args]
    if "-o" not in args:
        args += ["-o", str(work / "out")]
    if "--engine" not in args:
        args += ["--engine", "dsp"]
    before = _hashes(work)
    r = invoke("batch", m, *args, "-q")
    assert "Traceback" not in r.stderr
    assert r.exit_code == case.code, r.stderr
    message = fill(case.message)
    if case.code == 2:
        expected = f"error: {m}{message}" if message.startswith((":", ",")) else message
        assert expected in r.stderr, r.stderr
        assert _hashes(work) == before  # nothing written, nothing changed
        assert not (tmp_path / "cache").exists()  # not even the cache database
    else:
        after = _hashes(work)
        assert {k: v for k, v in after.items() if k in before and k != "out/report.json" and k != "out/report.csv"
                } == {k: v for k, v in before.items() if k not in ("out/report.json", "out/report.csv")}
        for name in case.writes:
            assert (work / "out" / name).is_file()
        tasks = json.loads((work / "out" / "report.json").read_text())["tasks"]
        if case.code == 1:  # the run goes ahead; the task fails with its reason
            assert message in r.stderr, r.stderr
            assert [t["status"] for t in tasks] == ["failed"]
        else:
            assert [t["status"] for t in tasks] == ["done"] * len(case.writes)


def test_the_table_is_large_and_every_name_unique():
    assert len({c.name for c in CASES}) == len(CASES) >= 100
