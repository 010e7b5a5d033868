"""Supervised fine-tuning: cross-entropy on the response tokens (the baseline KD replaces)."""

from __future__ import annotations

from distill import losses
from distill.objectives import Objective


class SFT(Objective):
    def loss(self, model, batch, normaliser):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = losses.cross_entropy(
            logits, batch["labels"], batch["target_mask"], num_tokens=normaliser
        )
        return {"loss": ce, "ce": ce}
