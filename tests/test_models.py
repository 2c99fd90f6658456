"""servelab.models: what LoadedModel says about the batches it ran."""

from __future__ import annotations

import pytest

from servelab.models import load_model

H200 = "emulated:h200-bert-base"


@pytest.fixture(params=["default", "fill-mask", "default on the emulated H200"])
def model(request, default_model, tiny_fill_mask_model):
    if request.param == "default":
        return default_model
    if request.param == "fill-mask":
        return load_model(str(tiny_fill_mask_model), device="cpu")
    return load_model(device=H200)


def test_a_batchs_token_counts_come_from_its_own_forward_pass_not_a_second_tokenizer_pass(model, monkeypatch):
    mask = f" {model.mask_token}" if model.mask_token else ""
    texts = [f"short{mask}", f"a somewhat longer input of a few more words{mask}", f"{'word ' * 600}{mask}"]
    if model.mask_token:  # fill-mask does not truncate: a too-long input is refused before it is queued
        texts[2] = f"{'word ' * 20}{mask}"
    lengths = model.token_lengths(texts)
    assert max(lengths) > min(lengths)  # padding to count
    model.predict(texts)

    def tokenize(_):
        raise AssertionError("tokenized a second time")

    monkeypatch.setattr(model, "token_lengths", tokenize)
    assert model.token_counts(list(texts)) == (sum(lengths), max(lengths) * len(texts))
    with pytest.raises(AssertionError, match="second time"):  # other texts than the last batch's
        model.token_counts(texts[:2])
