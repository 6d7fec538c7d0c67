"""Classification as a task of the engine (issue 13): rows, batches, losses and scores against hand computations;
runs of every scheme on a tiny classifier whose FLOPs match the prediction; clear errors for a wrong task, data set
or field; the Compare table and plot of classification runs."""

import json

import numpy as np
import pytest
import torch

from greencore import TrainConfig, plots, train
from greencore.data import collate, encode_labelled, load_classification, pad_batch, scored_targets
from greencore.evaluate import classification_scores, predict_classes, validation_loss
from greencore.models import classifier_head, load_model
from greencore.tasks import TASKS, get_task

TINY = dict(task="classification", model="tiny-llama", max_train_examples=48, max_eval_examples=16, batch_size=8,
            epochs=1, max_source_tokens=40, lr=1e-3, energy=False)


def test_encode_labelled_keeps_the_special_tokens_and_cuts_inside_the_text(tiny_models):
    _, tokenizer = tiny_models("tiny-gpt2")  # the tiny models' BERT-style tokenizer: [CLS] text [SEP]
    texts = ["open the file and read it", "close"]
    rows, cut = encode_labelled(tokenizer, texts, [1, 0], max_tokens=5)
    body = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert rows[0]["input_ids"] == [tokenizer.cls_token_id, *body[:3], tokenizer.sep_token_id]
    assert rows[1]["input_ids"] == tokenizer("close")["input_ids"]  # short enough: exactly the tokenizer's own
    assert [r["labels"] for r in rows] == [1, 0] and cut == 1
    with pytest.raises(ValueError, match="leaves no room for the text"):
        encode_labelled(tokenizer, texts, [1, 0], max_tokens=2)


def test_class_batches_pad_on_the_right_and_keep_one_label_per_row(tiny_models):
    _, tokenizer = tiny_models("tiny-llama")
    rows = [{"input_ids": [5, 6, 7], "labels": 2}, {"input_ids": [8], "labels": 0}]
    batch = pad_batch(tokenizer, collate(tokenizer, rows), 4)
    assert batch["labels"].tolist() == [2, 0]
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["input_ids"][1, 1:].tolist() == [tokenizer.pad_token_id] * 3
    assert [scored_targets(r, False) for r in rows] == [1, 1]


def test_validation_loss_of_a_classifier_is_the_mean_cross_entropy_over_rows():
    model, tokenizer = load_model("tiny-llama", num_labels=3)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 200, (n,), generator=g).tolist(), "labels": n % 3} for n in (4, 9, 6, 11, 3)]
    with torch.no_grad():  # each row alone: no padding at all
        expected = np.mean([float(torch.nn.functional.cross_entropy(
            model(input_ids=torch.tensor([r["input_ids"]])).logits, torch.tensor([r["labels"]]))) for r in rows])
    assert validation_loss(model, tokenizer, rows, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_classification_scores_by_hand():
    predictions, references = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    scores = classification_scores(predictions, references, majority=2, num_labels=4)
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)
    # per class F1: 0 -> p 1/2, r 1/2: 0.5; 1 -> p 1, r 1/2: 2/3; 2 -> p 2/3, r 1: 0.8; 3 (never seen) -> 0
    assert scores["macro_f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0.8 + 0) / 4)
    assert scores["majority_accuracy"] == pytest.approx(100 * 2 / 6)
    assert scores["majority_macro_f1"] == pytest.approx(100 * (2 * (2 / 6) * 1 / (2 / 6 + 1)) / 4)  # class 2 only


def test_predictions_do_not_depend_on_the_batch_they_share():
    model, tokenizer = load_model("tiny-llama", num_labels=4)
    texts = ["read a file", "open a socket and send bytes over it", "x", "parse the date string into a tuple"]
    together = predict_classes(model, tokenizer, texts, max_tokens=32, batch_size=4)
    alone = [predict_classes(model, tokenizer, [t], max_tokens=32, batch_size=1)[0] for t in texts]
    assert together == alone


@pytest.mark.parametrize("scheme", ["full", "green:0.5", "random:0.5", "lora", "top-k:1", "layernorm"])
def test_every_scheme_trains_a_classifier_as_predicted(tmp_path, scheme):
    summary = train(TrainConfig(scheme=scheme, **TINY), tmp_path / "run")
    assert summary["status"] == "finished" and summary["task"] == "classification"
    assert summary["prediction_miss"] == 0  # every measured step of the profiled shape cost what the profile said
    assert "rougeL" not in summary and 0 <= summary["accuracy"] <= 100 and 0 <= summary["macro_f1"] <= 100
    test = load_classification("stdlib-topic", max_examples={"test": 16})["test"]
    counts = np.bincount(test["label"], minlength=10)
    train_labels = load_classification("stdlib-topic", max_examples={"train": 48})["train"]["label"]
    majority = np.bincount(train_labels).argmax()
    assert summary["majority_accuracy"] == pytest.approx(100 * counts[majority] / 16)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {m["split"]: m for m in metrics if m["type"] == "eval" and "accuracy" in m}
    assert set(evals) == {"validation", "test"} and evals["test"]["accuracy"] == summary["accuracy"]
    names = load_classification("stdlib-topic")["train"].features["label"].names
    assert all(e["reference"] in names and e["prediction"] in names for e in evals["test"]["examples"])
    if scheme == "layernorm":  # the norms and the new head, which no classifier can do without
        model, _ = load_model("tiny-llama", num_labels=10)
        params = dict(model.named_parameters())
        expected = sum(p.numel() for n, p in params.items() if "norm" in n or n in classifier_head(model))
        assert summary["trainable_params"] == expected
    if scheme == "lora":  # the adapters and the head, through peft's modules_to_save
        model, _ = load_model("tiny-llama", num_labels=10)
        config = TrainConfig(scheme="lora", **TINY)
        rank = config.lora_r * 2 * model.config.hidden_size * 2 * model.config.num_hidden_layers  # q and v, A and B
        assert summary["trainable_params"] == rank + model.score.weight.numel()
    if scheme == "green:0.5":
        for line in (tmp_path / "run" / "selections.jsonl").read_text().splitlines():
            assert json.loads(line)["predicted_ratio"] <= 0.5


def test_classification_under_torch_ddp_weights_each_example_once(tmp_path):
    """Two shards' mean losses, weighted as the engine weights them, give the whole batch's mean loss."""
    from greencore.training import distributed

    model, tokenizer = load_model("tiny-llama", num_labels=3)
    rows, _ = encode_labelled(tokenizer, ["a b c", "d e", "f g h i", "j", "k l m"], [0, 1, 2, 1, 0], max_tokens=16)
    whole = validation_loss(model, tokenizer, rows, batch_size=len(rows))
    combined = 0.0
    for rank in range(2):
        part = distributed.shard(list(range(len(rows))), distributed.DistInfo(rank=rank, world_size=2))
        share = len(part) / len(rows)
        combined += share * validation_loss(model, tokenizer, [rows[i] for i in part], batch_size=len(part))
    assert combined == pytest.approx(whole, rel=1e-5)


def test_task_settings_fail_clearly():
    assert tuple(TASKS) == ("summarization", "classification")
    assert TrainConfig(task="classification").dataset == "stdlib-topic" and TrainConfig().dataset == "stdlib-tldr"
    with pytest.raises(ValueError, match="not a classification data set.*pass --task summarization"):
        TrainConfig(task="classification", dataset="stdlib-tldr")
    with pytest.raises(ValueError, match="not a summarization data set.*pass --task classification"):
        TrainConfig(dataset="sst2")
    with pytest.raises(ValueError, match="--text-field is for --task classification"):
        TrainConfig(text_field="body")
    with pytest.raises(ValueError, match="--source-field is for --task summarization"):
        TrainConfig(task="classification", source_field="body")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        TrainConfig(task="regression")
    with pytest.raises(ValueError, match="bitfit trains bias tensors"):
        train(TrainConfig(scheme="bitfit", **TINY), "/nonexistent/never-written")


def test_a_local_classification_file_trains_with_its_own_columns(tmp_path):
    rows = [{"body": f"{'fast ' * (i % 5)}item {i}", "kind": "even" if i % 2 else "odd"} for i in range(60)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(**{**TINY, "dataset": str(path), "text_field": "body", "label_field": "kind",
                            "scheme": "green:0.6"})
    summary = train(config, tmp_path / "run")
    assert summary["status"] == "finished" and summary["dataset"] == str(path)
    assert summary["majority_accuracy"] is not None


def test_compare_shows_accuracy_for_classification_runs(tmp_path):
    base = {"scheme": "full", "rho": None, "flops_total": 1e12, "flops_ratio": 1.0, "wall_seconds": 10.0,
            "energy": None, "status": "finished"}
    cls = {**base, "label": "cls", "task": "classification", "accuracy": 71.25, "macro_f1": 60.0,
           "majority_accuracy": 20.0, "majority_macro_f1": 3.3}
    summ = {**base, "label": "summ", "rougeL": 30.0, "rouge1": 33.0, "rouge2": 10.0}  # recorded before tasks
    assert [label for label, _ in plots.score_columns([cls])] == ["accuracy", "macro-F1", "majority accuracy",
                                                                  "majority macro-F1"]
    rows = plots.comparison_rows([cls, summ])
    assert rows[0]["accuracy"] == "71.2" and rows[0]["ROUGE-L"] == "-" and rows[1]["ROUGE-L"] == "30.0"
    figure = plots.pareto([cls])
    assert list(figure.data[0].y) == [71.25] and "accuracy" in figure.layout.title.text
    assert get_task("classification").headline == "accuracy"


def test_explore_profiles_a_classifier_exactly():
    from greencore.explore import ExploreSpec, explore

    ex = explore(ExploreSpec(model="tiny-llama", task="classification", batch_size=2, seq_len=32))
    assert ex.profile.names[0] == "score.weight"  # the new head, nearest the loss
    selection = ex.select(0.5)
    assert ex.measured_ratio(selection)["ratio"] == pytest.approx(selection.predicted_ratio, abs=1e-12)
    with pytest.raises(ValueError, match="config only profiles a language model"):
        ExploreSpec(model="tiny-llama", task="classification", config_only=True)
