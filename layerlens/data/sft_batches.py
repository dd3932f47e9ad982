"""Tokenised instruction-tuning rows and their batches: the prompt's tokens, then the completion's and an end token;
labels on the completion's alone. Selection and test batches also carry the prompts left-padded, for generation,
and the reference completions."""

import datasets
import torch

from layerlens.data.datamodule import SplitsDataModule, encoded_in_memory
from layerlens.data.sft import COMPLETION, PROMPT, SftTaskSpec
from layerlens.errors import LayerLensError

IGNORED = -100  # the label of a token the loss skips (the prompt's, the padding's): transformers' ignore index


def end_token_id(tokenizer) -> int:
    """The token that ends a completion: the tokenizer's end of sequence, else its separator (BERT's [SEP])."""
    for token_id in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)):
        if token_id is not None:
            return int(token_id)
    raise LayerLensError(
        f"model: the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token to end a completion with"
    )


def uses_chat_template(task: SftTaskSpec, tokenizer) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if task.chat_template == "always" and not has:
        raise LayerLensError(
            f"task.chat_template: always, but the tokenizer ({type(tokenizer).__name__}) has no chat template "
            "(set task.chat_template=never to use the prompt's text as it is)"
        )
    return has and task.chat_template != "never"


def prompt_text(messages: list[dict], tokenizer, chat: bool) -> str:
    """The prompt as the model reads it: the chat template's rendering up to the assistant's turn, or the messages'
    text joined by new lines."""
    if chat:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)


def tokenise_rows(split: datasets.Dataset, tokenizer, task: SftTaskSpec) -> datasets.Dataset:
    chat, end = uses_chat_template(task, tokenizer), end_token_id(tokenizer)

    def encode(rows):
        out: dict[str, list] = {"input_ids": [], "labels": [], "prompt_ids": [], "reference": []}
        for messages, completion in zip(rows[PROMPT], rows[COMPLETION]):
            prompt = tokenizer(prompt_text(messages, tokenizer, chat), add_special_tokens=False)["input_ids"]
            answer = tokenizer(completion, add_special_tokens=False)["input_ids"]
            # What exact match compares generations with: the completion as the tokenizer gives it back.
            out["reference"].append(tokenizer.decode(answer, skip_special_tokens=True).strip())
            answer = [*answer, end][: task.max_length - 1]  # at least one prompt token is kept
            prompt = prompt[max(0, len(prompt) - (task.max_length - len(answer))) :]
            out["input_ids"].append(prompt + answer)
            out["labels"].append([IGNORED] * len(prompt) + answer)
            out["prompt_ids"].append(prompt)
        return out

    return encoded_in_memory(split, encode)


def _pad(rows: list[list[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows padded with `value` to the longest (on the left or the right), and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class CompletionCollator:
    """Training batches (input_ids, attention_mask, labels: what the model is called with, right-padded); with
    `generation`, also prompt_ids and prompt_mask (left-padded) and the references."""

    def __init__(self, pad_token_id: int, generation: bool):
        self.pad_token_id, self.generation = pad_token_id, generation

    def __call__(self, rows: list[dict]) -> dict:
        ids, mask = _pad([r["input_ids"] for r in rows], self.pad_token_id)
        labels, _ = _pad([r["labels"] for r in rows], IGNORED)
        batch: dict[str, torch.Tensor | list[str]] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.generation:
            batch["prompt_ids"], batch["prompt_mask"] = _pad([r["prompt_ids"] for r in rows], self.pad_token_id, True)
            batch["references"] = [r["reference"] for r in rows]
        return batch


class SftDataModule(SplitsDataModule):
    """Instruction tuning's splits: prompt and completion tokenised, the completion labelled."""

    def __init__(
        self,
        splits: datasets.DatasetDict,
        tokenizer,
        task: SftTaskSpec,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
    ):
        super().__init__(tokenizer, batch_size, eval_batch_size, num_workers)
        self.collate = CompletionCollator(tokenizer.pad_token_id, generation=False)
        self.eval_collate = CompletionCollator(tokenizer.pad_token_id, generation=True)
        self.tokenised = {name: tokenise_rows(split, tokenizer, task) for name, split in splits.items()}
