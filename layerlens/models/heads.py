from typing import Any

from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolingClassifier(nn.Module):
    """Classifies the mean of the encoder's token states over the attention mask.

    For encoders trained as sentence embedders with mean pooling (all-MiniLM-L6-v2): their [CLS]
    state, which BertForSequenceClassification's pooler reads, was never trained to carry meaning.
    """

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        config: Any = encoder.config  # a transformers config: its fields are the model's
        self.config = config
        config.num_labels = num_labels
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)  # peft keeps "classifier" trainable

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(states.last_hidden_state.dtype)
        pooled = (states.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        if labels is None:
            loss = None
        elif self.config.num_labels == 1:  # regression, as transformers' sequence classifiers do it
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        else:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
