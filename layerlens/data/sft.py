"""Instruction tuning (task kind sft): a user's JSONL rows of prompt/completion or chat messages, the loss on the
completion's tokens only, exact match of greedy generations against the reference completions."""

import json
from dataclasses import dataclass
from pathlib import Path

import datasets

from layerlens.data.tasks import HOLDOUT, SplitProtocol
from layerlens.errors import LayerLensError
from layerlens.paths import EMBEDDED_SFT_DIR
from layerlens.validation import require_choice, require_int

SFT = "sft"
FORMATS = ("auto", "prompt_completion", "messages")
CHAT_TEMPLATES = ("auto", "always", "never")
# The headline chooses the checkpoint: exact match the higher the better, loss and perplexity the lower.
HEADLINES = {"val/exact_match": "max", "val/loss": "min", "val/perplexity": "min"}
METRICS = ("exact_match", "loss", "perplexity")  # logged as val/<name> and test/<name>
# What reports compare: the loss is perplexity's logarithm (and under that name every task kind logs a loss).
REPORTED = ("exact_match", "perplexity")
PROMPT, COMPLETION = "prompt", "completion"  # the rows read: the prompt's messages, the completion's text


@dataclass
class SftTaskSpec(SplitProtocol):
    """Instruction tuning on JSONL files <split>.jsonl in `data_dir` (the embedded arithmetic set when null), one
    JSON object per line: {"prompt": ..., "completion": ...}, or {"messages": [{"role": ..., "content": ...}, ...]}
    whose last message is the assistant's answer (the completion) and the ones before it the prompt."""

    name: str = SFT
    data_dir: str | None = None
    format: str = "auto"  # auto: each file by its first row's fields
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    # auto: the prompt rendered with the tokenizer's chat template where it has one (a user turn for a plain
    # prompt), else its text as it is; always: refuse a tokenizer without one; never: the text as it is.
    chat_template: str = "auto"
    max_length: int = 256  # prompt + completion tokens; a longer row loses the start of its prompt
    max_new_tokens: int = 16  # greedy generation's limit, for exact match
    train_split: str = "train"
    test_split: str = "test"  # read once, at the end, with the selected checkpoint only
    selection_split: str = HOLDOUT  # holdout (a share of train) | none (test the last epoch's) | a split name
    selection_fraction: float = 0.1
    selection_seed: int = 0
    headline_metric: str = "val/exact_match"

    def __post_init__(self):
        require_choice("task.format", self.format, FORMATS)
        require_choice("task.chat_template", self.chat_template, CHAT_TEMPLATES)
        require_choice("task.headline_metric", self.headline_metric, list(HEADLINES))
        require_int("task.max_length", self.max_length, 2)
        require_int("task.max_new_tokens", self.max_new_tokens, 1)
        self.check_protocol("prompt_field", "completion_field", "messages_field")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise LayerLensError(f"task.data_dir: {self.data_dir} is not a folder")

    kind = SFT

    @property
    def headline_mode(self) -> str:
        return HEADLINES[self.headline_metric]

    @property
    def metric_names(self) -> list[str]:
        return self.metric_names_on("val")

    def metric_names_on(self, stage: str) -> list[str]:
        return [f"{stage}/{name}" for name in METRICS]

    def split_file(self, split: str) -> Path:
        base = Path(self.data_dir).expanduser() if self.data_dir is not None else EMBEDDED_SFT_DIR
        return base / f"{split}.jsonl"


def _row(task: SftTaskSpec, record, where: str, form: str) -> dict:
    """One JSONL record as the prompt's messages and the completion's text."""
    if not isinstance(record, dict):
        raise LayerLensError(f"{where}: a row must be a JSON object, got {type(record).__name__}")
    if form == "prompt_completion":
        for setting, field in (("prompt_field", task.prompt_field), ("completion_field", task.completion_field)):
            if not isinstance(record.get(field), str):
                raise LayerLensError(f"{where}: field {field!r} must be a string (task.{setting})")
        prompt = [{"role": "user", "content": record[task.prompt_field]}]
        return {PROMPT: prompt, COMPLETION: record[task.completion_field]}
    messages = record.get(task.messages_field)
    if not isinstance(messages, list) or len(messages) < 2:
        raise LayerLensError(
            f"{where}: field {task.messages_field!r} must be a list of two messages or more (task.messages_field)"
        )
    for message in messages:
        if not (isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))):
            raise LayerLensError(f"{where}: each message must be an object with string fields role and content")
    if messages[-1]["role"] != "assistant":
        raise LayerLensError(
            f"{where}: the last message must be the assistant's (the completion), got role {messages[-1]['role']!r}"
        )
    return {
        PROMPT: [{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
        COMPLETION: messages[-1]["content"],
    }


def read_sft_jsonl(path: Path, task: SftTaskSpec) -> datasets.Dataset:
    """The rows of one JSONL file, each checked; errors name the file and line."""
    if not path.is_file():
        raise LayerLensError(f"{path}: no such file (task.data_dir holds the splits as <split>.jsonl)")
    rows, form = [], task.format
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LayerLensError(f"{where}: not JSON ({err.msg})") from None
            if form == "auto":
                form = "messages" if isinstance(record, dict) and task.messages_field in record else "prompt_completion"
            rows.append(_row(task, record, where, form))
    if not rows:
        raise LayerLensError(f"{path}: no rows")
    return datasets.Dataset.from_list(rows)


def load_sft_splits(task: SftTaskSpec) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: read_sft_jsonl(task.split_file(split), task) for split in task.named_splits})
