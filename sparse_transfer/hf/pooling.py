"""Mean pooling for BERT-family sequence classification: the head that sentence-transformers checkpoints expect.

``BertForSequenceClassification`` classifies ``tanh(W h_CLS + b)``, the pooler on the first token. A
sentence-transformers encoder such as all-MiniLM-L6-v2 was trained to be read through the *mean* of its token
states; its CLS token and pooler never were. :class:`MeanPoolingBertForSequenceClassification` is the same model
with one change: the pooler reads the mean of the last layer's states over the real (unpadded) tokens. Every tensor
keeps its name and shape (``bert.pooler.dense``, ``classifier``), so a BERT checkpoint loads into it unchanged, the
sparse masks, gradual unfreezing (the pooler and classifier are the head) and masked LoRA see the same modules.

A model trained this way is saved with its own ``model_type`` (``sparse-transfer-mean-pooling-bert``): transformers'
Auto classes and ``pipeline`` refuse to load it (``model type ... not recognized``) instead of silently reading it
through the CLS pooler, which would give other predictions. (Naming the class, ``BertForSequenceClassification
.from_pretrained``, still loads it as a CLS model with only transformers' model-type warning: the price of keeping
every tensor name.) Importing this module registers the type with the Auto classes::

    import sparse_transfer.hf.pooling  # registers the model type
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained("runs/sst2/best")

Why not a pooling hook on ``BertModel``: ``BertPooler`` is called with the hidden states only, so a mean over the
real tokens would need the attention mask carried in module state between calls; overriding ``forward`` keeps it a
pure function of its inputs (DDP, ``torch.compile`` and peft see an ordinary module).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import can_return_tuple

MEAN_POOLING_MODEL_TYPE = "sparse-transfer-mean-pooling-bert"


class MeanPoolingBertConfig(BertConfig):
    """:class:`~transformers.BertConfig` of a model whose classifier reads the mean of the token states."""

    model_type = MEAN_POOLING_MODEL_TYPE


class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` whose pooler (``tanh(W x + b)``, then dropout and the classifier) reads the
    mean of the last layer's states over the tokens that ``attention_mask`` marks, not the CLS state."""

    config_class = MeanPoolingBertConfig
    # The loss is a mean over this micro-batch, as BERT's own head computes it: the Trainer must divide by the
    # gradient-accumulation steps (it would not if the model took ``num_items_in_batch``).
    accepts_loss_kwargs = False

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        kwargs.pop("num_items_in_batch", None)
        outputs = self.bert(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            inputs_embeds=inputs_embeds, return_dict=True, **kwargs,
        )
        # BertModel also applies the pooler to the CLS state, output unused: one [batch, hidden] x [hidden, hidden]
        # product, under 0.1% of MiniLM's forward; cheaper to keep than a copy of BertModel.forward to skip it.
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:  # weights sum to 1 per row before the sum, so half precision cannot overflow on long inputs
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * (weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0))).sum(dim=1)
        pooler = self.bert.pooler
        logits = self.classifier(self.dropout(pooler.activation(pooler.dense(pooled))))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


def mean_pooling_config(config: BertConfig) -> MeanPoolingBertConfig:
    """``config`` (a BERT config, e.g. of all-MiniLM-L6-v2) as the config of the mean-pooling model.

    Raises:
        ValueError: if ``config`` is not a BERT config (the mean-pooling head exists for BERT-family models only).
    """
    if isinstance(config, MeanPoolingBertConfig):
        return config
    if config.model_type != "bert":
        raise ValueError(
            f"Mean pooling is implemented for BERT-family models (model_type 'bert', e.g. MiniLM, all-MiniLM-L6-v2); "
            f"this model is a {config.model_type!r}. Use the model's own head (--pooling cls)."
        )
    values = config.to_dict()
    values.pop("model_type", None)
    values.pop("architectures", None)
    return MeanPoolingBertConfig(**values)


AutoConfig.register(MEAN_POOLING_MODEL_TYPE, MeanPoolingBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MeanPoolingBertConfig, MeanPoolingBertForSequenceClassification, exist_ok=True)
