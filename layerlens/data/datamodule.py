from collections.abc import Callable

import datasets
import lightning as L
from datasets.fingerprint import generate_random_fingerprint
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from layerlens.data.glue_files import LABEL, TEXT_A, TEXT_B
from layerlens.data.selection import SELECTION, TEST, TRAIN


def encoded_in_memory(split: datasets.Dataset, encode: Callable[[dict], dict]) -> datasets.Dataset:
    """The rows `encode` makes of `split`'s (batched), in place of its columns. In memory, no cache file is read or
    written, so the fingerprint names nothing: a random one spares the hashing of `encode`, which pickles the whole
    tokenizer."""
    return split.map(
        encode,
        batched=True,
        remove_columns=split.column_names,
        keep_in_memory=True,
        new_fingerprint=generate_random_fingerprint(),
    )


class SplitsDataModule(L.LightningDataModule):
    """Loaders of tokenised splits by role (train, selection, test: see layerlens.data.selection), each batch padded
    to its longest row. A task kind's subclass sets `tokenised` (role -> rows), `collate` (training batches) and
    `eval_collate` (selection and test batches)."""

    tokenised: dict[str, datasets.Dataset]
    collate: Callable
    eval_collate: Callable

    def __init__(self, tokenizer: PreTrainedTokenizerBase, batch_size: int, eval_batch_size: int, num_workers: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        return DataLoader(
            self.tokenised[split],
            batch_size=batch_size or (self.batch_size if shuffle else self.eval_batch_size),
            shuffle=shuffle,
            collate_fn=self.collate if split == TRAIN else self.eval_collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(TRAIN, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(SELECTION)

    def test_dataloader(self) -> DataLoader:
        return self.loader(TEST)


class GlueDataModule(SplitsDataModule):
    """Sentence classification's (and regression's) splits: the text columns tokenised, the labels as they are."""

    def __init__(
        self,
        splits: datasets.DatasetDict,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
    ):
        super().__init__(tokenizer, batch_size, eval_batch_size, num_workers)
        self.max_length = max_length
        self.collate = self.eval_collate = DataCollatorWithPadding(tokenizer)
        self.tokenised = {name: self._tokenise(split) for name, split in splits.items()}

    def _tokenise(self, split: datasets.Dataset) -> datasets.Dataset:
        def encode(rows):
            texts = (rows[TEXT_A], rows[TEXT_B]) if TEXT_B in rows else (rows[TEXT_A],)
            encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
            encoded["labels"] = rows[LABEL]
            return encoded

        return encoded_in_memory(split, encode)
