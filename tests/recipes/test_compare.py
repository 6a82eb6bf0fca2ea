"""parazoo compare: recipe validation, grid expansion, Zoology's best-learning-rate rule, resume,
and a tiny end-to-end comparison producing the table, CSV, JSON and plots."""
import json

import pytest
import yaml

from parazoo.recipes.compare import aggregate, expand, load_recipe, main
from parazoo.recipes.compare.recipe import Recipe, Run

TINY = {
    "name": "tiny",
    "mixers": ["attention", "gam"],
    "widths": [16],
    "n_layers": 1,
    "lrs": [3.0e-3],
    "seeds": [0],
    "mixer_kwargs": {"attention": {"n_heads": 2}, "gam": {"n_slots": 8}},
    "tasks": [
        {"name": "mqar", "kind": "mqar", "steps": 3, "batch_size": 4,
         "data": {"vocab_size": 32, "train_configs": [{"seq_len": 16, "num_kv_pairs": 2}],
                  "test_configs": [{"seq_len": 16, "num_kv_pairs": 2}], "num_train_examples": 16,
                  "num_test_examples": 8}},
        {"name": "text", "kind": "text", "steps": 2, "batch_size": 2, "data": {"seq_len": 16, "max_bytes": 20000}},
    ],
    "throughput": {"seq_lens": [16], "width": 16, "batch_size": 1, "steps": 1},
}


def test_packaged_recipes_are_valid():
    for name in ("quick", "standard"):
        recipe, _ = load_recipe(name)
        assert expand(recipe)


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(ValueError, match="widht.*did you mean 'widths'"):
        Recipe.from_dict({**TINY, "widht": [1]})
    with pytest.raises(ValueError, match="tasks\\[0\\].*stesp"):
        Recipe.from_dict({**TINY, "tasks": [{**TINY["tasks"][0], "stesp": 3}]})
    with pytest.raises(ValueError, match="unknown mixer"):
        Recipe.from_dict({**TINY, "mixers": ["nope"]})
    with pytest.raises(ValueError, match="kind"):
        Recipe.from_dict({**TINY, "tasks": [{**TINY["tasks"][0], "kind": "nope"}]})
    with pytest.raises(ValueError, match="seconds"):
        Recipe.from_dict({**TINY, "budget": "seconds"})
    with pytest.raises(ValueError, match="decay_steps must be an int >= steps"):
        Recipe.from_dict({**TINY, "tasks": [{**TINY["tasks"][0], "decay_steps": 2}]})
    with pytest.raises(ValueError, match="jobs must be a positive int, got 0"):
        Recipe.from_dict({**TINY, "jobs": 0})


def test_grid_expansion():
    r = Recipe.from_dict({**TINY, "widths": [16, 32], "lrs": [1e-3, 1e-2], "seeds": [0, 1]})
    runs = expand(r)
    assert len(runs) == 2 * 2 * 2 * 2 * 2  # tasks x mixers x widths x lrs x seeds
    assert len({x.id for x in runs}) == len(runs)
    assert len(expand(r, ["gam"])) == len(runs) // 2


def _fake(task, mixer, lr, seed, value, kind="mqar"):
    key = "val/acc" if kind != "text" else "val/loss"
    return {"run": Run(task, mixer, 16, lr, seed).__dict__, "task": task, "kind": kind,
            "final": {key: value, "val/mqar_kv2_len16/acc": value}, "params": 10, "params_non_embedding": 5,
            "state_bytes": 100, "seq_len": 16, "tokens": 64, "train_seconds": 1.0, "throughput": {"tokens_per_s": 5.0}}


def test_best_learning_rate_rule_and_seed_spread():
    r = Recipe.from_dict({**TINY, "lrs": [1e-3, 1e-2], "seeds": [0, 1]})
    results = [_fake("mqar", "attention", 1e-3, 0, 0.5), _fake("mqar", "attention", 1e-3, 1, 0.7),
               _fake("mqar", "attention", 1e-2, 0, 0.9), _fake("mqar", "attention", 1e-2, 1, 0.5),
               _fake("text", "attention", 1e-3, 0, 2.0, "text"), _fake("text", "attention", 1e-2, 0, 1.5, "text"),
               {"run": Run("mqar", "gam", 16, 1e-3, 0).__dict__, "task": "mqar", "kind": "mqar", "error": "Boom: x"}]
    rows = {(x["task"], x["mixer"]): x for x in aggregate(r, results)}
    att = rows[("mqar", "attention")]
    assert att["best_lr"] == 1e-2 and att["value"] == pytest.approx(0.7) and att["std"] == pytest.approx(0.2828, abs=1e-3)
    assert rows[("text", "attention")]["best_lr"] == 1e-2  # lower loss wins
    assert rows[("mqar", "gam")]["error"].startswith("Boom")
    # a diverged learning rate (NaN) is never the best; a cell where every one diverged says so
    nan = float("nan")
    results = [_fake("text", "attention", 1e-3, 0, 2.0, "text"), _fake("text", "attention", 1e-2, 0, nan, "text"),
               _fake("text", "gam", 1e-3, 0, nan, "text"), _fake("text", "gam", 1e-2, 0, nan, "text")]
    r1 = Recipe.from_dict({**TINY, "lrs": [1e-3, 1e-2]})
    rows = {(x["task"], x["mixer"]): x for x in aggregate(r1, results)}
    assert rows[("text", "attention")]["best_lr"] == 1e-3 and rows[("text", "attention")]["value"] == 2.0
    assert rows[("text", "gam")]["error"].startswith("diverged: val/loss is nan")


def test_end_to_end_tiny_comparison_and_resume(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    # two runs at a time, each in its own process (the recipe's `jobs`, overridden by --jobs)
    rc = main(["--recipe", str(path), "--out", str(out), "--no-progress", "--jobs", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    assert "2 at a time" in printed
    for f in ("results.md", "results.csv", "results.json", "mqar_acc_vs_width.png", "mqar_acc_vs_state.png",
              "text_val_loss_vs_tokens.png", "text_val_loss_vs_seconds.png", "throughput_vs_seq_len.png"):
        assert (out / f).exists(), f
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 and all("value" in r for r in rows)
    att = next(r for r in rows if r["mixer"] == "attention" and r["task"] == "mqar")
    gam = next(r for r in rows if r["mixer"] == "gam" and r["task"] == "mqar")
    assert att["state_bytes"] > 0 and gam["state_bytes"] > 0 and att["params"] > 0
    # resume: every run is skipped the second time
    capsys.readouterr()
    assert main(["--recipe", str(path), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 4


def test_cli_errors():
    assert main(["--recipe", "no-such-recipe"]) == 2
    assert main(["--recipe", "quick", "--mixers", "nope"]) == 2
    assert main(["--recipe", "quick", "--data", "/no/such/file.txt"]) == 2
    assert main(["--recipe", "quick", "--jobs", "0"]) == 2
