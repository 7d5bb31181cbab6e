"""Build tiny Step-Audio-EditX checkpoints in the exact on-disk layout of the released ones.

    python scripts/make_tiny_checkpoints.py OUT_DIR

writes
    OUT_DIR/Step-Audio-Tokenizer/   FunASR paraformer-online folder, linguistic_tokenizer.npy,
                                    speech_tokenizer_v1.onnx
    OUT_DIR/Step-Audio-EditX/       Step1 config + safetensors + SentencePiece tokenizer, the
                                    checkpoint-style remote code (configuration_step1.py,
                                    modeling_step1.py), CosyVoice-300M-25Hz/ (yaml, flow.pt,
                                    hift.pt, campplus.onnx)
    OUT_DIR/whisper-tiny.pt         a Whisper checkpoint for --transcribe --whisper-model

Every model is real (FunASR's ParaformerStreaming, ONNX graphs exported from torch, a
Step1-shaped transformer) but small and randomly initialised with fixed seeds, so that
the engine's whole pipeline runs end to end on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

FUNASR_ID = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
ENC_DIM = 32  # the released encoder has 512
VOCAB = 74752
AUDIO_BASE = 65536
LLM = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_attention_groups": 2,
       "num_hidden_layers": 2}


def build_paraformer(folder: Path) -> None:
    import yaml
    from funasr.register import tables

    folder.mkdir(parents=True, exist_ok=True)
    conf = {
        "model": "ParaformerStreaming",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                       "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {"output_size": ENC_DIM, "attention_heads": 4, "linear_units": 64, "num_blocks": 2,
                         "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
                         "input_layer": "pe_online", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                         "selfattention_layer_type": "sanm", "chunk_size": [12, 15], "stride": [8, 10],
                         "pad_left": [0, 0], "encoder_att_look_back_factor": [4, 4],
                         "decoder_att_look_back_factor": [1, 1]},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": 4, "linear_units": 64, "num_blocks": 2, "dropout_rate": 0.0,
                         "positional_dropout_rate": 0.0, "self_attention_dropout_rate": 0.0,
                         "src_attention_dropout_rate": 0.0, "att_layer_num": 2, "kernel_size": 11,
                         "sanm_shfit": 5},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": ENC_DIM, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "input_size": 560,
    }
    tokens = ["<blank>", "<s>", "</s>", "a", "b", "c", "d", "e", "f", "g", "<unk>"]
    (folder / "tokens.json").write_text(json.dumps(tokens))
    (folder / "tokens.txt").write_text("\n".join(tokens) + "\n")
    (folder / "seg_dict").write_text("a a\n")
    rng = np.random.default_rng(0)
    shift, scale = -rng.uniform(8, 12, 560), rng.uniform(0.2, 0.4, 560)

    def vec(v):
        return "[ " + " ".join(f"{x:.6f}" for x in v) + " ]"

    (folder / "am.mvn").write_text(
        f"<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 {vec(shift)}\n"
        f"<Rescale> 560 560\n<LearnRateCoef> 0 {vec(scale)}\n</Nnet>\n"
    )
    (folder / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.manual_seed(0)
    cls = tables.model_classes.get("ParaformerStreaming")
    model = cls(**conf["model_conf"], encoder=conf["encoder"], encoder_conf=conf["encoder_conf"],
                decoder=conf["decoder"], decoder_conf=conf["decoder_conf"], predictor=conf["predictor"],
                predictor_conf=conf["predictor_conf"], input_size=560, vocab_size=len(tokens),
                ctc_conf=conf["ctc_conf"])
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"},
                            "frontend_conf": {"cmvn_file": "am.mvn"}},
    }, indent=2))


class _SpeechTokenizer(nn.Module):
    """Whisper 128-bin log-mel (1, 128, T) + length -> 25 Hz codes in [0, 4096)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(128, 16, kernel_size=4, stride=4)
        self.head = nn.Linear(16, 4096)

    def forward(self, mel: torch.Tensor, mel_len: torch.Tensor) -> torch.Tensor:
        h = self.conv(mel).transpose(1, 2)  # (1, T//4, 16)
        codes = self.head(torch.tanh(h)).argmax(-1)
        valid = torch.arange(codes.shape[1])[None, :] < (mel_len.to(torch.int64) // 4)[:, None]
        return codes.masked_fill(~valid, 0)


class _CampPlus(nn.Module):
    """Kaldi fbank (1, T, 80) -> speaker embedding (1, 192)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(80, 192)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([fbank.mean(1, keepdim=True), fbank.std(1, keepdim=True)], 1).mean(1))


def export_onnx(module: nn.Module, args: tuple, path: Path, names: list[str], dynamic: dict) -> None:
    module.eval()
    torch.onnx.export(module, args, str(path), input_names=names[:len(args)], output_names=names[len(args):],
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)


def build_tokenizer_dir(root: Path) -> None:
    folder = root / "Step-Audio-Tokenizer"
    build_paraformer(folder / FUNASR_ID)
    rng = np.random.default_rng(1)
    np.save(folder / "linguistic_tokenizer.npy", rng.standard_normal((1024, ENC_DIM)).astype(np.float32))
    torch.manual_seed(1)
    export_onnx(_SpeechTokenizer(), (torch.randn(1, 128, 400), torch.tensor([400], dtype=torch.int32)),
                folder / "speech_tokenizer_v1.onnx", ["feats", "feats_length", "indices"],
                {"feats": {2: "T"}, "indices": {1: "T4"}})


def build_sentencepiece(path: Path) -> None:
    """A SentencePiece model whose pieces 65536 + N are `<audio_N>`, as the Step tokenizer's."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.vocab_size = VOCAB
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    kind = pb.ModelProto.SentencePiece

    def add(piece: str, score: float = 0.0, type_: int = kind.NORMAL) -> None:
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, score, type_

    add("<unk>", 0, kind.UNKNOWN)
    add("<s>", 0, kind.CONTROL)
    add("</s>", 0, kind.CONTROL)
    add("<|EOT|>", 0, kind.CONTROL)  # id 3: turn close, eos
    add("<|BOT|>", 0, kind.CONTROL)  # id 4: turn open
    for b in range(256):
        add(f"<0x{b:02X}>", 0, kind.BYTE)
    words = "the a and of to is in speaker text audio system human assistant name prompt tokens".split()
    for i, piece in enumerate(["▁", "\n"] + [chr(c) for c in range(33, 127)] + ["▁" + w for w in words]):
        add(piece, -1.0 - i * 0.01)
    for i in range(len(m.pieces), AUDIO_BASE):
        add(f"<reserved_{i}>", -100.0)
    for n in range(5120):
        add(f"<audio_{n}>", 0, kind.USER_DEFINED)
    for i in range(len(m.pieces), VOCAB):
        add(f"<reserved_{i}>", -100.0)
    path.write_bytes(m.SerializeToString())


def build_llm_dir(root: Path) -> None:
    from safetensors.torch import save_file

    folder = root / "Step-Audio-EditX"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Step1ForCausalLM"], "model_type": "step1",
        "auto_map": {"AutoConfig": "configuration_step1.Step1Config",
                     "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM"},
        **LLM, "max_seq_len": 32768, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
        "bos_token_id": 1, "pad_token_id": 0, "eos_token_id": 3, "torch_dtype": "float32",
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(2)
    h, inter, heads, groups = LLM["hidden_size"], LLM["intermediate_size"], LLM["num_attention_heads"], \
        LLM["num_attention_groups"]
    kv = groups * h // heads

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    embed = rnd(VOCAB, h, std=0.5)
    # Dimension 0 carries a constant that the output layer reads as "audio token", so the
    # random model mostly emits audio codes (as the real one does), with a rare end-of-turn.
    embed[:, 0] = 4.0
    head = rnd(VOCAB, h, std=0.5)
    head[:, 0] = -2.0
    head[AUDIO_BASE:AUDIO_BASE + 5120, 0] = 1.0
    head[3, 0] = 1.8  # end-of-turn: some decodes end by themselves, some reach their budget
    weights = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(h), "lm_head.weight": head}
    for i in range(LLM["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "input_layernorm.weight": torch.ones(h) + rnd(h),
            p + "post_attention_layernorm.weight": torch.ones(h) + rnd(h),
            p + "self_attn.q_proj.weight": rnd(h, h, std=0.2),
            p + "self_attn.k_proj.weight": rnd(kv, h, std=0.2),
            p + "self_attn.v_proj.weight": rnd(kv, h, std=0.2),
            p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(inter, h, std=0.1),
            p + "mlp.up_proj.weight": rnd(inter, h, std=0.1),
            p + "mlp.down_proj.weight": rnd(h, inter),
        })
        weights[p + "self_attn.o_proj.weight"][:, 0] = 0  # keep dimension 0 a clean constant
        weights[p + "self_attn.o_proj.weight"][0, :] = 0
        weights[p + "mlp.down_proj.weight"][0, :] = 0
    name = "model-00001.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / name), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(v.numel() * 4 for v in weights.values())},
        "weight_map": {k: name for k in weights},
    }, indent=2))
    build_sentencepiece(folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "<|EOT|>", "unk_token": "<unk>", "pad_token": "<unk>",
        "model_max_length": 32768, "legacy": True,
    }, indent=2))
    (folder / "configuration_step1.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_step1.py").write_text(REMOTE_MODELING)
    build_vocoder_dir(folder / "CosyVoice-300M-25Hz")


def build_vocoder_dir(folder: Path) -> None:
    """cosyvoice.yaml, flow.pt and hift.pt (from editx's own modules, shaped by the yaml, every
    parameter drawn; HiFT's weight-normalised layers saved as weight_g / weight_v, as torch
    saves them) and a CAM++-shaped campplus.onnx."""
    from editx_cli.engine.stepaudio.flow import Flow
    from editx_cli.engine.stepaudio.hift import HiFT
    from editx_cli.engine.stepaudio.token2wav import read_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cosyvoice.yaml").write_text(COSYVOICE_YAML)
    (folder / "FLOW_VERSION").write_text("tiny-2\n")
    config = read_config(folder / "cosyvoice.yaml")
    flow, hift = Flow(config.flow), HiFT(config.hift)
    randomise(flow, 3, scale=0.5)
    randomise(hift, 4, scale=0.5)
    torch.save(flow.state_dict(), folder / "flow.pt")
    torch.save(weight_normed(hift.state_dict()), folder / "hift.pt")
    torch.manual_seed(4)
    export_onnx(_CampPlus(), (torch.randn(1, 200, 80),), folder / "campplus.onnx", ["input", "output"],
                {"input": {1: "T"}})


# HiFT's layers that the released hift.pt holds weight-normalised
WEIGHT_NORMED = re.compile(r"^(conv_pre|conv_post|ups\.\d+|(source_)?resblocks\.\d+\.convs[12]\.\d+|"
                           r"f0_predictor\.condnet\.\d+)\.weight$")


def weight_normed(state: dict) -> dict:
    """A state dict with those layers' weights split into g (norm over all dims but the first)
    and v (the weight itself)."""
    out = {}
    for key, value in state.items():
        if WEIGHT_NORMED.match(key):
            stem = key[: -len(".weight")]
            out[f"{stem}.weight_g"] = torch.norm_except_dim(value, 2, 0)
            out[f"{stem}.weight_v"] = value.clone()
        else:
            out[key] = value
    return out


def randomise(module: nn.Module, seed: int, scale: float = 1.0) -> None:
    """Every parameter drawn (a DiT left as built outputs exactly zero): weights ~
    N(0, scale / sqrt(fan_in)), biases near 0, norm gains near 1, Snake alphas in [0.5, 1.5]
    (near 0 they divide by ~1e-9)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 1 and ("norm" in name or name.endswith(".weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() <= 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale / p[0].numel() ** 0.5)


# The 2026 release's tokenizer_config.json chat template, as published: <s> only when the first
# message is the system's, a space after <|BOT|>, the user's role written "human", no <|EOT|>
# after a closing assistant turn.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ '<s>' }}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set role = 'human' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<|BOT|> ' + role + '\\n' }}{{ message['content'] }}"
    "{% if not loop.last or message['role'] != 'assistant' %}{{ '<|EOT|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|BOT|> assistant\\n' }}{% endif %}"
)


def build_chat_llm_dir(root: Path) -> None:
    """Step-Audio-EditX-2026/: the same weights (linked), a tokenizer config with a chat template."""
    src, dst = root / "Step-Audio-EditX", root / "Step-Audio-EditX-2026"
    dst.mkdir(exist_ok=True)
    for item in src.iterdir():
        if item.name != "tokenizer_config.json" and not (dst / item.name).exists():
            (dst / item.name).symlink_to(Path("..") / src.name / item.name, target_is_directory=item.is_dir())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("add_bos_token", None)
    config.update(legacy=False, chat_template=CHAT_TEMPLATE)
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_whisper(path: Path) -> None:
    """A tiny Whisper checkpoint in openai-whisper's own format (for --whisper-model)."""
    from dataclasses import asdict

    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(5)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)


COSYVOICE_YAML = textwrap.dedent("""\
    # tiny CosyVoice-300M-25Hz in the released layout: the same keys and constructor tags, small shapes
    sample_rate: 24000
    mel_conf:
        num_mels: 80
        n_fft: 1920
        hop_size: 480
        win_size: 1920
        sampling_rate: !ref <sample_rate>
        fmin: 0
        fmax: 8000
    flow: !new:stepvocoder.cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
        input_size: 64
        output_size: 80
        spk_embed_dim: 192
        output_type: 'mel'
        vocab_size: 5121  # 1024(vq02) + 4096(vq06) + 1(vq02-pad)
        input_embedding: !new:stepvocoder.cosyvoice2.embedding.dual_codebook.DualCodebookEmbedding
            vocab_size: 5121
            input_size: 64
        encoder: !new:stepvocoder.cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
            input_size: 64
            output_size: 64
            input_layer: 'linear'
            pre_lookahead_len: 3
            num_blocks: 2
            num_up_blocks: 2
            up_stride: 2
            up_scale_factor: 2
            attention_heads: 4
            pos_enc_layer_type: 'rel_pos_espnet'
            selfattention_layer_type: 'rel_selfattn'
            key_bias: true
            linear_units: 128
            dropout_rate: 0.1
            positional_dropout_rate: 0.1
            attention_dropout_rate: 0.1
            normalize_before: true
        decoder: !new:stepvocoder.cosyvoice2.flow.flow_matching.CausalConditionalCFM
            inference_cfg_rate: 0.7
            estimator: !new:stepvocoder.cosyvoice2.flow.decoder_dit.DiT
                in_channels: 320
                out_channels: 80
                mlp_ratio: 4.0
                depth: 2
                num_heads: 4
                head_dim: 16
                hidden_size: 64
    hift: !new:stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator
        in_channels: 80
        base_channels: 32
        nb_harmonics: 8
        sampling_rate: !ref <sample_rate>
        nsf_alpha: 0.1
        nsf_sigma: 0.003
        nsf_voiced_threshold: 10
        upsample_rates: [8, 5, 3]
        upsample_kernel_sizes: [16, 11, 7]
        istft_params:
            n_fft: 16
            hop_len: 4
        resblock_kernel_sizes: [3, 7, 11]
        resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
        source_resblock_kernel_sizes: [7, 7, 11]
        source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
        lrelu_slope: 0.1
        audio_limit: 0.99
        f0_predictor: !new:stepvocoder.cosyvoice2.hifigan.f0_predictor.ConvRNNF0Predictor
            num_class: 1
            in_channels: 80
            cond_channels: 32
""")


REMOTE_CONFIG = textwrap.dedent('''\
    from transformers import PretrainedConfig


    class Step1Config(PretrainedConfig):
        model_type = "step1"

        def __init__(self, hidden_size=3072, intermediate_size=8192, num_attention_heads=48,
                     num_attention_groups=4, num_hidden_layers=32, max_seq_len=32768, vocab_size=74752,
                     rms_norm_eps=1e-5, bos_token_id=1, pad_token_id=0, eos_token_id=3, **kwargs):
            self.hidden_size = hidden_size
            self.intermediate_size = intermediate_size
            self.num_attention_heads = num_attention_heads
            self.num_attention_groups = num_attention_groups
            self.num_hidden_layers = num_hidden_layers
            self.max_seq_len = max_seq_len
            self.vocab_size = vocab_size
            self.rms_norm_eps = rms_norm_eps
            super().__init__(bos_token_id=bos_token_id, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                             **kwargs)
    ''')

# The checkpoint-style modeling file: the Step1 architecture with the published code's
# behaviour of building the attention bias from the key length alone (no padding mask).
REMOTE_MODELING = textwrap.dedent('''\
    import math

    import torch
    from torch import nn
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from .configuration_step1 import Step1Config


    def alibi_slopes(n_heads):
        n = 2 ** math.floor(math.log2(n_heads))
        m0 = 2.0 ** (-8.0 / n)
        slopes = [m0 ** i for i in range(1, n + 1)]
        if n < n_heads:
            m1 = 2.0 ** (-4.0 / n)
            slopes += [m1 ** i for i in range(1, 2 * (n_heads - n), 2)]
        return torch.tensor(slopes)


    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            var = x.float().pow(2).mean(-1, keepdim=True)
            return x * torch.rsqrt(var + self.eps).to(x.dtype) * self.weight


    class Attention(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.heads, self.groups = cfg.num_attention_heads, cfg.num_attention_groups
            self.head_dim = cfg.hidden_size // self.heads
            h = cfg.hidden_size
            self.q_proj = nn.Linear(h, h, bias=False)
            self.k_proj = nn.Linear(h, self.groups * self.head_dim, bias=False)
            self.v_proj = nn.Linear(h, self.groups * self.head_dim, bias=False)
            self.o_proj = nn.Linear(h, h, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
            rep = self.heads // self.groups
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            i = torch.arange(s, device=x.device)
            dist = (i[:, None] - i[None, :]).to(torch.float32)
            bias = -alibi_slopes(self.heads).to(x.device)[:, None, None] * dist.clamp(min=0).sqrt()
            bias = bias.masked_fill(dist < 0, float("-inf")).to(q.dtype)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


    class MLP(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
            self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
            self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

        def forward(self, x):
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


    class Layer(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.self_attn = Attention(cfg)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.mlp = MLP(cfg)

        def forward(self, x):
            x = x + self.self_attn(self.input_layernorm(x))
            return x + self.mlp(self.post_attention_layernorm(x))


    class Step1Model(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

        def forward(self, input_ids):
            x = self.embed_tokens(input_ids)
            for layer in self.layers:
                x = layer(x)
            return self.norm(x)


    class Step1ForCausalLM(PreTrainedModel):
        config_class = Step1Config
        base_model_prefix = "model"

        def __init__(self, config):
            super().__init__(config)
            self.model = Step1Model(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            # attention_mask is accepted and ignored, as in the published code
            return CausalLMOutputWithPast(logits=self.lm_head(self.model(input_ids)))
    ''')


def main() -> None:
    ap = argparse.ArgumentParser(description="Build tiny Step-Audio-EditX checkpoints for tests and demos.")
    ap.add_argument("out_dir", type=Path)
    root = ap.parse_args().out_dir
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FUNASR_LOG_LEVEL", "ERROR")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # editx's own vocoder modules
    build_tokenizer_dir(root)
    build_llm_dir(root)
    build_chat_llm_dir(root)
    build_whisper(root / "whisper-tiny.pt")
    for sub in ("Step-Audio-EditX", "Step-Audio-EditX-2026", "Step-Audio-Tokenizer", "whisper-tiny.pt"):
        print(root / sub)


if __name__ == "__main__":
    main()
