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

    asyncio.run(scenario())
