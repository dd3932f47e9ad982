"""Instruction tuning (task=sft): the JSONL rows, the completion-only loss, generation and exact match, the
embedded set, and every baseline on a tiny causal Llama."""

import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from peft import PeftModelForCausalLM

from layerlens.data import SELECTION, TEST, TRAIN, protocol_splits
from layerlens.data.arithmetic import write
from layerlens.data.sft import SftTaskSpec, load_sft_splits, read_sft_jsonl
from layerlens.data.sft_batches import IGNORED, CompletionCollator, end_token_id, prompt_text, tokenise_rows
from layerlens.errors import LayerLensError
from layerlens.lens.apply import task_head
from layerlens.lens.sites import discover_sites, encoder_layers
from layerlens.methods import get_method
from layerlens.models import RandomBertBackbone, RandomDecoderBackbone
from layerlens.paths import EMBEDDED_SFT_DIR
from layerlens.pipeline import run_experiment
from layerlens.settings import resolve_settings
from layerlens.training.causal_lm import CausalLanguageModel
from tests.conftest import compose_config

TINY_LLAMA = RandomDecoderBackbone("tiny_llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def tokenizer():
    return TINY_LLAMA.tokenizer()


def rows(*pairs: tuple[str, str]) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "completion": c} for p, c in pairs])


def test_the_embedded_set_is_what_its_generator_writes_with_no_problem_in_both_splits(tmp_path):
    write(tmp_path)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (EMBEDDED_SFT_DIR / f"{split}.jsonl").read_bytes()
    splits = load_sft_splits(SftTaskSpec())
    assert (len(splits["train"]), len(splits["test"])) == (2500, 500)
    prompts = {split: {r[0]["content"] for r in splits[split]["prompt"]} for split in ("train", "test")}
    assert len(prompts["train"]) == 2500 and not prompts["train"] & prompts["test"]
    assert all(c.isdigit() for c in splits["test"]["completion"])


def test_the_labels_are_the_completion_and_its_end_token_and_the_loss_reads_them_alone():
    tok = tokenizer()
    task = SftTaskSpec(chat_template="never")
    row = tokenise_rows(rows(("how many apples are left", "nineteen apples")), tok, task)[0]
    prompt = tok("how many apples are left", add_special_tokens=False)["input_ids"]
    answer = [*tok("nineteen apples", add_special_tokens=False)["input_ids"], end_token_id(tok)]
    assert row["input_ids"] == prompt + answer and row["prompt_ids"] == prompt
    assert row["labels"] == [IGNORED] * len(prompt) + answer and row["reference"] == "nineteen apples"
    model = TINY_LLAMA.causal_lm().eval()
    batch = CompletionCollator(tok.pad_token_id, generation=False)([row])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0]
        loss = model(**batch).loss
    # The token at t predicts the one at t + 1: the completion's tokens (and the end) from the positions before them.
    start = len(prompt)
    expected = torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(answer))
    torch.testing.assert_close(loss, expected)


def test_a_long_row_keeps_its_completion_and_the_end_of_its_prompt():
    tok = tokenizer()
    prompt = " ".join(f"word{i}" for i in range(40))
    row = tokenise_rows(rows((prompt, "the answer")), tok, SftTaskSpec(chat_template="never", max_length=12))[0]
    answer = [*tok("the answer", add_special_tokens=False)["input_ids"], end_token_id(tok)]
    full = tok(prompt, add_special_tokens=False)["input_ids"]
    assert len(row["input_ids"]) == 12 and row["input_ids"][-len(answer) :] == answer
    assert row["prompt_ids"] == full[-(12 - len(answer)) :]


def test_training_batches_pad_on_the_right_and_prompts_for_generation_on_the_left():
    tok = tokenizer()
    data = tokenise_rows(rows(("a b c d e f", "yes"), ("a", "no no")), tok, SftTaskSpec(chat_template="never"))
    batch = CompletionCollator(tok.pad_token_id, generation=True)([data[0], data[1]])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "prompt_ids", "prompt_mask", "references"}
    assert batch["attention_mask"][1].tolist() == [1] * len(data[1]["input_ids"]) + [0] * (
        len(data[0]["input_ids"]) - len(data[1]["input_ids"])
    )
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORED).all()
    short = len(data[1]["prompt_ids"])
    assert batch["prompt_mask"][1, -short:].all() and not batch["prompt_mask"][1, :-short].any()
    assert batch["prompt_ids"][1, -short:].tolist() == data[1]["prompt_ids"]
    assert batch["references"] == ["yes", "no no"]
    training = CompletionCollator(tok.pad_token_id, generation=False)([data[0], data[1]])
    assert set(training) == {"input_ids", "attention_mask", "labels"}  # what the model is called with, profiling too


def test_chat_messages_render_with_the_tokenizers_template_and_the_last_message_is_the_completion(tmp_path):
    tok = tokenizer()
    path = jsonl(
        tmp_path / "train.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "2 + 2"},
                    {"role": "assistant", "content": "4"},
                ]
            }
        ],
    )
    task = SftTaskSpec(data_dir=str(tmp_path))
    data = read_sft_jsonl(path, task)
    assert data[0]["completion"] == "4" and [m["role"] for m in data[0]["prompt"]] == ["system", "user"]
    assert prompt_text(data[0]["prompt"], tok, chat=False) == "be brief\n2 + 2"
    with pytest.raises(LayerLensError, match=r"^task.chat_template: always, but the tokenizer .* has no chat"):
        tokenise_rows(data, tok, SftTaskSpec(chat_template="always"))
    templated = type(tok).from_pretrained(tok.name_or_path)
    templated.chat_template = TEMPLATE
    assert prompt_text(data[0]["prompt"], templated, chat=True) == "<system> be brief <user> 2 + 2 <assistant> "
    row = tokenise_rows(data, templated, task)[0]
    rendered = templated("<system> be brief <user> 2 + 2 <assistant> ", add_special_tokens=False)["input_ids"]
    assert row["prompt_ids"] == rendered
    assert tokenise_rows(data, templated, SftTaskSpec(chat_template="never"))[0]["prompt_ids"] != rendered


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"train.jsonl:2: not JSON"),
        ("[1, 2]", r"train.jsonl:2: a row must be a JSON object, got list"),
        ('{"prompt": "q"}', r"train.jsonl:2: field 'completion' must be a string \(task.completion_field\)"),
        ('{"prompt": 3, "completion": "a"}', r"train.jsonl:2: field 'prompt' must be a string \(task.prompt_field\)"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}',
            r"train.jsonl:2: the last message must be the assistant's \(the completion\), got role 'user'",
        ),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}', r"train.jsonl:2: each message"),
    ],
)
def test_a_bad_row_is_refused_in_one_line_naming_the_file_and_line(tmp_path, line, message):
    first = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    if "prompt" in line:
        first = '{"prompt": "q", "completion": "a"}'
    path = jsonl(tmp_path / "train.jsonl", [first, line])
    with pytest.raises(LayerLensError, match=message) as err:
        read_sft_jsonl(path, SftTaskSpec(data_dir=str(tmp_path)))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_settings_and_a_missing_file_are_refused_by_name(tmp_path):
    with pytest.raises(LayerLensError, match=r"^task.headline_metric must be one of .*got 'val/acc'"):
        SftTaskSpec(headline_metric="val/acc")
    with pytest.raises(LayerLensError, match=r"^task.data_dir: .*nowhere is not a folder"):
        SftTaskSpec(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(LayerLensError, match=r"test.jsonl: no such file"):
        load_sft_splits(
            SftTaskSpec(data_dir=str(jsonl(tmp_path / "train.jsonl", [{"prompt": "q", "completion": "a"}]).parent))
        )
    assert SftTaskSpec(headline_metric="val/perplexity").headline_mode == "min"
    assert SftTaskSpec().headline_mode == "max"


def test_the_selection_split_holds_out_the_same_tenth_of_train_for_every_run():
    task = SftTaskSpec()
    splits = protocol_splits(task, load_sft_splits(task))
    assert (len(splits[TRAIN]), len(splits[SELECTION]), len(splits[TEST])) == (2250, 250, 500)
    again = protocol_splits(task, load_sft_splits(task))
    assert splits[SELECTION]["completion"] == again[SELECTION]["completion"]
    other = protocol_splits(SftTaskSpec(selection_seed=1), load_sft_splits(task))
    assert splits[SELECTION]["prompt"] != other[SELECTION]["prompt"]


@pytest.mark.parametrize("prefix", [False, True])
def test_greedy_generation_of_left_padded_prompts_is_each_prompt_generated_alone(prefix):
    """With a KV cache, and without one where a prefix is attached (it refuses one)."""
    tok = tokenizer()
    model = TINY_LLAMA.causal_lm().eval()
    if prefix:
        for site in discover_sites(model, ["attention"]):
            get_method("prefix").attach(site, 2)
    module = CausalLanguageModel(model, tok.decode, tok.pad_token_id, end_token_id(tok), 6, 1e-3, 0.0, 0.0)
    assert module.kv_cache is not prefix
    data = tokenise_rows(
        rows(("one two three four five six", "x"), ("seven", "y")), tok, SftTaskSpec(chat_template="never")
    )
    batch = CompletionCollator(tok.pad_token_id, generation=True)([data[0], data[1]])
    together = module.generate(batch["prompt_ids"], batch["prompt_mask"])
    alone = [
        module.generate(torch.tensor([r["prompt_ids"]]), torch.ones(1, len(r["prompt_ids"]), dtype=torch.long))
        for r in data
    ]
    assert together == [a[0] for a in alone] and all(together)  # random weights still emit tokens


def test_an_encoder_refuses_task_sft_in_one_line_naming_the_model():
    with pytest.raises(LayerLensError, match=r"^model: task kind sft trains a causal LM, and tiny is a bert encoder"):
        RandomBertBackbone("tiny").causal_lm()


@pytest.mark.parametrize("name", ["lora", "adalora", "layerlens", "full_ft"])
def test_every_baseline_adapts_a_causal_lm_with_its_lm_head_frozen_and_no_frozen_layer_cache(name, tmp_path):
    from layerlens.pipeline import build_classifier, build_datamodule

    cfg = compose_config(
        "run",
        ["model=tiny_llama", "task=sft", f"baseline={name}", "trainer=debug", "logger=none", "budget=unlimited"]
        + (["baseline.profile.num_batches=2"] if name == "layerlens" else []),
    )
    s = resolve_settings(cfg)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, tmp_path)
    model = adapted.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    if name == "full_ft":
        return
    assert not any("lm_head" in n or "embed_tokens" in n for n in trainable)
    if name in ("lora", "adalora"):
        assert isinstance(model, PeftModelForCausalLM)
    else:
        assert task_head(s.backbone.causal_lm()) == []
        first = encoder_layers(model)[1][0]
        assert first.forward.__self__ is first  # not the frozen-layer cache's (it would store every generated prefix)


def run(tmp_path: Path, *overrides: str) -> dict:
    log = tmp_path / "runs.jsonl"
    cfg = compose_config(
        "run", ["model=tiny_llama", "task=sft", "logger=jsonl", f"logger.path={log}", "trainer=debug", *overrides]
    )
    run_experiment(cfg, tmp_path / "out")
    return json.loads(log.read_text().splitlines()[-1])["metrics"]


def test_a_tiny_llama_learns_a_fixed_answer_and_exact_match_counts_it(tmp_path):
    """Every completion is "yes": full fine-tuning learns it in a few dozen steps, and exact match on the test
    split goes from 0 (untrained: the check can fail) to 1; perplexity is exp of the token-level loss."""
    words = ["red", "green", "blue", "cat", "dog", "bird", "one", "two", "three", "four"]
    made = [{"prompt": " ".join(words[(i + j) % 10] for j in range(1 + i % 4)), "completion": "yes"} for i in range(60)]
    jsonl(tmp_path / "train.jsonl", made[:48])
    jsonl(tmp_path / "test.jsonl", made[48:])
    common = [
        f"task.data_dir={tmp_path}",
        "baseline=full_ft",
        "task.max_new_tokens=3",
        "data.batch_size=8",
        "trainer.limit_val_batches=null",
    ]
    untrained = run(tmp_path / "untrained", *common, "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    assert untrained["test/exact_match"] == 0.0
    trained = run(
        tmp_path / "trained", *common, "baseline.lr=0.01", "trainer.max_epochs=8", "trainer.limit_train_batches=null"
    )
    assert trained["test/exact_match"] == 1.0 and trained["val/exact_match"] == 1.0
    assert trained["test/loss"] < untrained["test/loss"] / 3
    assert trained["test/perplexity"] == pytest.approx(math.exp(trained["test/loss"]), rel=1e-5)


def test_layerlens_plans_trains_and_tests_a_causal_lm_which_export_and_evaluate_refuse_by_name(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    from layerlens.exporting import export_run, run_from_folder
    from layerlens.training.checkpoint_eval import evaluate_run

    overrides = ["model=tiny_llama", "task=sft", "trainer=debug", "baseline=layerlens", "task.max_new_tokens=4"]
    run_experiment(compose_config("run", [*overrides, "baseline.profile.num_batches=4"]), tmp_path / "out")
    client = MlflowClient(tracking_uri)
    (finished,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = finished.data.metrics
    assert metrics["profile/batches"] == 4 and metrics["time/plan_s"] >= 0
    for stage in ("val", "test"):
        assert 0 <= metrics[f"{stage}/exact_match"] <= 1 and metrics[f"{stage}/loss"] > 0
    with pytest.raises(LayerLensError, match=r"^run: exports hold sequence classifiers; an instruction-tuning run"):
        export_run(run_from_folder(tmp_path / "out"), tmp_path / "export")
    with pytest.raises(LayerLensError, match=r"evaluate reads GLUE-format TSV files; an instruction-tuning run"):
        evaluate_run(tracking_uri, finished.info.run_id, tmp_path / "any.tsv")
