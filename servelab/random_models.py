"""Models with random weights and real vocabularies: nothing comes from the hub.

A server's speed depends on a model's shapes (layers, width, vocabulary, sequence length), not
on its weights' values. So a random-weight copy times like the real model, tokenizes the same
inputs to the same lengths, and answers in the same format: enough for tests, and for a GPU
machine that cannot download the real weights. Its answers are meaningless.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from servelab.models import default_model_dir

# BertConfig arguments by size. "base" is bert-base-uncased's shape (110 M parameters).
FILL_MASK_SIZES = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512},
}

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def build_fill_mask_model(folder: str | Path, size: str = "tiny", vocab_folder: str | Path | None = None,
                          seed: int = 0) -> Path:
    """Save a random-weight BERT masked-LM of `size` with the real bert-base-uncased vocabulary.

    Its answers are random words, but its tokenizer, mask token and output format are the real
    ones. The vocabulary is the vocab.txt in `vocab_folder`, by default the MiniLM package's,
    which is exactly bert-base-uncased's.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = Path(folder)
    vocab = Path(vocab_folder or default_model_dir()) / "vocab.txt"
    # transformers 5.x trap: BertTokenizerFast(vocab_file=...) silently builds a 5-token tokenizer.
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    if tokenizer.vocab_size < 30000:
        raise RuntimeError(f"tokenizer built from {vocab} has only {tokenizer.vocab_size} tokens")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **FILL_MASK_SIZES[size])
    BertForMaskedLM(config).eval().save_pretrained(folder)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(folder)
    return folder


def build_random_copy(source: str | Path, folder: str | Path, seed: int = 0) -> Path:
    """Copy a saved model's folder (config, tokenizer, sentence-transformers files) with new
    random weights of the same shapes in place of its own."""
    from transformers import AutoConfig, AutoModel, set_seed

    source, folder = Path(source), Path(folder)
    shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*WEIGHT_FILES))
    set_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(source)).eval().save_pretrained(folder)
    return folder
