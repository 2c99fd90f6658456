"""feature-extraction that answers one sentence embedding instead of one vector per token."""

import torch
from transformers import FeatureExtractionPipeline


class SentenceEmbeddingPipeline(FeatureExtractionPipeline):
    """Mean pooling over the real tokens, then L2 normalisation: sentence-transformers' recipe.

    The attention mask leaves out the padding that batching adds, so an input gets the same
    embedding alone or in a batch. Pooling inside the model call also spares the server from
    turning (tokens x 384) floats into JSON.
    """

    def _forward(self, model_inputs):
        hidden = self.model(**model_inputs).last_hidden_state
        mask = model_inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return {"embedding": (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)}

    def postprocess(self, model_outputs, **_):
        return torch.nn.functional.normalize(model_outputs["embedding"].float(), dim=-1)[0].tolist()

    def postprocess_batch(self, model_outputs, **_) -> list[list[float]]:
        """postprocess() for a whole batch at once (LoadedModel.predict_encoded): one normalize
        and one tolist, not one of each per input."""
        return torch.nn.functional.normalize(model_outputs["embedding"].float(), dim=-1).tolist()
