"""multi_process's front ends tokenize without transformers: the standalone tokenizer must encode
every input as the model's own tokenizer does, or not be used."""

import random

import pytest
from transformers import AutoTokenizer

from servelab import models
from servelab.bench.corpus import load_prompts, with_mask
from servelab.link import FrontEndModel, StandaloneTokenizer, describe_tokenizer
from servelab.models import default_model_dir


def described(folder, task: str, max_tokens: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = {"task": task, "max_tokens": max_tokens}
    return {"model": model} | describe_tokenizer(tokenizer, task, max_tokens), tokenizer


def test_the_standalone_tokenizer_encodes_the_corpus_as_transformers_does():
    description, tokenizer = described(default_model_dir(), "feature-extraction", 256)
    front_end = FrontEndModel(description)
    assert isinstance(front_end.tokenizer, StandaloneTokenizer)
    texts = [*load_prompts(), "word " * 1000, "", " ", "tab\tand\nnewline", "ünïcödé ß ﬁ", "🤖" * 300]
    for text in texts:
        assert front_end.encode(text) == models.encode(tokenizer, "feature-extraction", 256, text), text


def test_and_checks_fill_mask_inputs_as_transformers_does(tiny_fill_mask_model):
    description, tokenizer = described(tiny_fill_mask_model, "fill-mask", 512)
    front_end = FrontEndModel(description)
    assert isinstance(front_end.tokenizer, StandaloneTokenizer)
    rng = random.Random(0)
    texts = [with_mask(text, tokenizer.mask_token, rng) for text in load_prompts()[:200]]
    texts += ["no mask here", f"two {tokenizer.mask_token} {tokenizer.mask_token}", "word " * 600]
    for text in texts:
        expected = models.encode(tokenizer, "fill-mask", 512, text)
        assert front_end.encode(text) == expected, text
        try:
            models.check_input(tokenizer, "fill-mask", 512, text)
            refused = None
        except models.BadInput as exc:
            refused = str(exc)
        if refused:
            with pytest.raises(models.BadInput) as also_refused:
                front_end.check_input(text)
            assert str(also_refused.value) == refused
        else:
            front_end.check_input(text)


def test_a_tokenizer_that_encodes_differently_is_not_used(caplog):
    description, _ = described(default_model_dir(), "feature-extraction", 256)
    description["probes"][0]["input_ids"][1] += 1  # as if the model's tokenizer disagreed
    front_end = FrontEndModel(description)
    assert not isinstance(front_end.tokenizer, StandaloneTokenizer)
    assert "encodes differently" in caplog.text


def test_a_front_end_refuses_past_what_the_model_process_could_hold_before_tokenizing(tmp_path):
    import asyncio

    from servelab.jobs import QueueFull
    from servelab.link import RemoteQueue

    class CountingModel:
        encoded = 0

        def encode(self, text):
            self.encoded += 1
            return {"input_ids": [101, 102]}

    async def scenario():
        model = CountingModel()
        queue = RemoteQueue(f"ipc://{tmp_path}/link", model, max_queue=2, max_batch_size=1)
        jobs = [queue.put(f"input {i}") for i in range(3)]  # sent: the model process may hold 2 + 1
        with pytest.raises(QueueFull):
            queue.put("one more")
        assert model.encoded == 3  # the refused one was never tokenized
        queue.drop(jobs[0], RuntimeError("client left"))  # one answered or dropped: room again
        queue.put("now it fits")
        queue.socket.close()
        # One of 4 front ends may hold a quarter of it, rounded up: 2 of (6 + 2).
        shared = RemoteQueue(f"ipc://{tmp_path}/link2", model, max_queue=6, max_batch_size=2, front_ends=4)
        shared.put("first")
        shared.put("second")
        with pytest.raises(QueueFull):
            shared.put("third")
        shared.socket.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_token_ids_matches_the_tokenizers_own_pad(side):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    tokenizer.padding_side = side
    inputs = [models.encode(tokenizer, "feature-extraction", 256, text) for text in load_prompts()[:40]]
    expected = tokenizer.pad(inputs, return_tensors="pt")
    padded = models.pad_token_ids(inputs, tokenizer.pad_token_id, side)
    assert padded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert padded[key].equal(tensor), key


def test_the_model_process_answers_what_the_pipeline_answers(default_model, tiny_fill_mask_model):
    """predict_encoded (token ids from a front end) and predict (texts) give each input the same
    answer, in the same order, for a batch of inputs of different lengths."""
    texts = load_prompts()[:24]
    from_ids = default_model.predict_encoded([default_model.encode(text) for text in texts])
    for got, expected in zip(from_ids, default_model.predict(texts), strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
    fill_mask = models.load_model(str(tiny_fill_mask_model), device="cpu")
    rng = random.Random(1)
    texts = [with_mask(text, fill_mask.mask_token, rng) for text in load_prompts()[:12]]
    from_ids = fill_mask.predict_encoded([fill_mask.encode(text) for text in texts])
    for got, expected in zip(from_ids, fill_mask.predict(texts), strict=True):
        assert [a["token"] for a in got] == [e["token"] for e in expected]
        assert [a["score"] for a in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_the_model_process_ceiling_times_token_ids_and_keeps_its_own_file(tiny_fill_mask_model, tmp_path):
    from servelab.bench import ceiling

    kwargs = {"model": str(tiny_fill_mask_model), "device": "cpu", "batch_sizes": (1, 4),
              "min_seconds": 0.05, "rounds": 1, "progress": lambda *_: None}
    ids = ceiling.measure(**kwargs, from_token_ids=True)
    texts = ceiling.measure(**kwargs)
    assert ids["inputs"].startswith("token ids")
    assert texts["inputs"] == "texts"
    assert all(row["seq_per_s"] > 0 and row["mean_padded_length"] > 2 for row in ids["by_batch_size"])
    written = ceiling.write(ids, tmp_path), ceiling.write(texts, tmp_path)
    assert written[0] != written[1]  # the server's ceiling, looked up by name, stays the text one
    assert ceiling.find_ceiling(tmp_path, texts["model"], texts["torch_threads"])["inputs"] == "texts"
