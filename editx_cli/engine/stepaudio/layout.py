"""Where the released checkpoints keep their files, and what a complete folder holds."""

from __future__ import annotations

from pathlib import Path

FUNASR_ID = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
VOCODER_SUBDIR = "CosyVoice-300M-25Hz"
VARIANT_DIRS = {"base": "Step-Audio-EditX", "awq": "Step-Audio-EditX-AWQ-4bit", "bnb": "Step-Audio-EditX-bnb-4bit"}

LLM_FILES = ("config.json", "tokenizer.model", "tokenizer_config.json")
VOCODER_FILES = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")
TOKENIZER_FILES = ("linguistic_tokenizer.npy", "speech_tokenizer_v1.onnx")
FUNASR_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json")
REMOTE_CODE_FILES = ("configuration_step1.py", "modeling_step1.py")


def llm_dir(model_dir: Path, variant: str) -> Path:
    """The folder holding the chosen variant: `--model-dir` itself for base, else a sibling
    folder named as released (or `--model-dir` when it already is that folder)."""
    if variant == "base" or model_dir.name == VARIANT_DIRS[variant]:
        return model_dir
    return model_dir.parent / VARIANT_DIRS[variant]


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def problems(model_dir: Path | None, tokenizer_dir: Path | None, editx_src: Path | None,
             variant: str = "base", llm_impl: str = "native", needs_src: bool = False) -> list[str]:
    """Every missing folder or file, each said plainly; empty when all looks complete. A source
    checkout is needed only for the official vocoder."""
    out: list[str] = []
    if model_dir is None:
        out.append("--model-dir (EDITX_MODEL_DIR) is not set: the Step-Audio-EditX folder")
    if tokenizer_dir is None:
        out.append("--tokenizer-dir (EDITX_TOKENIZER_DIR) is not set: the Step-Audio-Tokenizer folder")
    if editx_src is None and needs_src:
        out.append("--editx-src (EDITX_SRC) is not set: --vocoder official needs a Step-Audio-EditX source "
                   "checkout (its vocoder code)")
    if model_dir is not None:
        folder = llm_dir(model_dir, variant)
        if not folder.is_dir():
            out.append(f"{folder}: folder not found (variant {variant})")
        else:
            out += _missing(folder, LLM_FILES)
            if not weight_files(folder):
                out.append(f"{folder}: no *.safetensors weight files")
            if llm_impl == "remote":
                out += _missing(folder, REMOTE_CODE_FILES)
            out += _missing(folder / VOCODER_SUBDIR, VOCODER_FILES)
    if tokenizer_dir is not None:
        if not tokenizer_dir.is_dir():
            out.append(f"{tokenizer_dir}: folder not found")
        else:
            out += _missing(tokenizer_dir, TOKENIZER_FILES)
            out += _missing(tokenizer_dir / FUNASR_ID, FUNASR_FILES)
    if editx_src is not None and needs_src:
        pkg = editx_src / "stepvocoder" / "cosyvoice2"
        if not pkg.is_dir():
            out.append(f"{editx_src}: no stepvocoder/cosyvoice2 package (is it a Step-Audio-EditX checkout?)")
    return out


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    if not folder.is_dir():
        return [f"{folder}: folder not found"]
    return [f"{folder / n}: missing" for n in names if not (folder / n).is_file()]
