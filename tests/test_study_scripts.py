"""The study scripts' own logic (benchmarks/): summaries and inputs, on tiny synthetic files, no training."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arm_result(task, model, arm, runs, summary="single run"):
    """What glue_study writes per finished arm (the fields its table reads)."""
    scores = sorted((score for _, score in runs), reverse=True)
    score = scores[0] if summary == "single run" else sum(scores[:2]) / 2
    return {"task": task, "model": model, "arm": arm, "metric": "accuracy", "score": score, "summary": summary,
            "runs": [{"name": name, "score": s} for name, s in runs], "train_examples": 100, "dev_examples": 872,
            "per_epoch": {name: [s] for name, s in runs}, "sparsity": {"dense": 0.0, "90": 0.9, "90b": 0.9}.get(model)}


def write_arms(folder, *results):
    """Each arm's summary where glue_study keeps it (``<task>__<model>__<arm>.json``)."""
    for r in results:
        (folder / f"{r['task']}__{r['model']}__{r['arm']}.json").write_text(json.dumps(r))


def test_glue_study_table_compares_default_and_grid(tmp_path, monkeypatch):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path))
    results = [
        arm_result("sst2", "dense", "dense_transfer", [("lr2e-05_dropout0.1", 0.80), ("lr3e-05_dropout0.1", 0.84),
                                                       ("lr5e-05_dropout0.1", 0.82)], "mean_top2"),
        arm_result("sst2", "90", "dense_transfer", [("lr2e-05_dropout0.1", 0.70), ("lr3e-05_dropout0.1", 0.72)],
                   "mean_top2"),
        arm_result("sst2", "90", "paper", [("lr0.0001_dropout0.1", 0.77), ("lr0.0002_dropout0.1", 0.79),
                                           ("lr0.0003_dropout0.1", 0.75)], "mean_top2"),
        arm_result("sst2", "90", "paper_single", [("single", 0.77)]),
        arm_result("sst2", "dense", "dense_transfer_single", [("single", 0.80)]),
        arm_result("sst2", "90", "dense_transfer_single", [("single", 0.70)]),
        # A start whose dense-transfer grid already reaches the dense model's: no gap for the paper's grid to close.
        arm_result("sst2", "80", "dense_transfer", [("lr2e-05_dropout0.1", 0.84), ("lr3e-05_dropout0.1", 0.83)],
                   "mean_top2"),
        arm_result("sst2", "80", "paper", [("lr0.0001_dropout0.1", 0.85), ("lr0.0002_dropout0.1", 0.84)],
                   "mean_top2"),
    ]
    write_arms(tmp_path, *results)
    text = study.table()
    # First, the grids side by side: dense transfer, extended, rescaled sweep, dense transfer at the paper's LRs,
    # the paper's; its difference to dense transfer (78.00 - 71.00) and the share of the gap closed (7 / 12).
    assert "| sst2 | 90 | 90% | 71.00 | - | - | - | 78.00 | +7.00 | 58% |" in text
    assert "| sst2 | 80 | - | 83.50 | - | - | - | 84.50 | +1.00 | no gap |" in text
    assert "| sst2 | dense | 0% | 83.00 | - | - | - | - | - | - |" in text
    assert text.index("| sst2 | dense | 0% |") < text.index("| sst2 | 80 | - |") < text.index("| sst2 | 90 | 90% |")
    text = text[text.index("Every arm:"):]
    rows = {}
    for line in text.splitlines():  # the first table's rows (later tables start with the same three cells)
        rows.setdefault(tuple(cell.strip() for cell in line.strip("|").split("|")[:3]), line)
    # A grid against grids: gap to the dense model's dense-transfer grid (83.00), and the share of the 90% model's
    # dense-transfer gap (83.00 - 71.00) that the paper's grid (78.00) closes: 7 / 12.
    assert "| 78.00 | mean_top2 | -5.00 | 58% |" in rows[("sst2", "90", "paper")]
    # A single run against single runs: dense 80.00, 90% 70.00, so 77.00 closes 7 / 10.
    assert "| 77.00 | single run | -3.00 | 70% |" in rows[("sst2", "90", "paper_single")]
    # Where the sparse start's dense-transfer grid (83.50) is above the dense model's (83.00) there is no gap, and no
    # share of one (the ratio would be -200%).
    assert "| 84.50 | mean_top2 | +1.50 | no gap |" in rows[("sst2", "80", "paper")]
    # The default's single run against its grid: 77.00 - 78.00, the grid's best run 79.00, 3 runs.
    assert "| sst2 | 90 | paper | 77.00 | 78.00 | -1.00 | 79.00 | 3 |" in text
    assert "| sst2 | 90 | dense_transfer | 70.00 | 71.00 | -1.00 | 72.00 | 2 |" in text
    # Every grid lists its runs.
    assert "lr0.0002_dropout0.1 79.00" in text and "lr5e-05_dropout0.1 82.00" in text
    # And which weights each start name stands for (none recorded here).
    assert "| 90 | not recorded (4 arms) |" in text and "| 80 | not recorded (2 arms) |" in text


def test_glue_study_table_compares_the_schedules_at_equal_lrs_per_seed(tmp_path, monkeypatch):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path))
    top = ("lr0.0002_dropout0.1", "lr0.0003_dropout0.1")
    paper_80 = arm_result("sst2", "80", "paper", [("lr0.0001_dropout0.1", 0.70), (top[0], 0.80), (top[1], 0.82),
                                                  ("lr0.0003_dropout0.05", 0.90)], "mean_top2")
    paper_80["per_epoch"][top[0]] = [0.80, 0.78]  # the best epoch is not the last: 2e-4 ends at 78.00
    paper_80["per_epoch"][top[1]] = [0.82, 0.80]  # and 3e-4 at 80.00 (mean 79.00)
    results = [
        paper_80,
        arm_result("sst2", "80", "dense_transfer_paper_lrs", [("lr0.0001_dropout0.1", 0.70), (top[0], 0.79),
                                                              (top[1], 0.80)], "mean_top2"),
        arm_result("sst2", "80", "paper_top_lrs_seed1", [(top[0], 0.78), (top[1], 0.80)], "mean_top2"),
        arm_result("sst2", "80", "dense_transfer_top_lrs_seed1", [(top[0], 0.79), (top[1], 0.81)], "mean_top2"),
        arm_result("sst2", "80", "paper_top_lrs_seed2", [(top[0], 0.80), (top[1], 0.84)], "mean_top2"),
        arm_result("sst2", "80", "dense_transfer_top_lrs_seed2", [(top[0], 0.79), (top[1], 0.81)], "mean_top2"),
        arm_result("sst2", "90", "paper_top_lrs", [(top[0], 0.78)], "mean_top2"),  # half a comparison: no row
        # equal sums whose float difference is -1e-16 (SST-2 at 80b, seed 1: 719+725 = 717+727 of 872)
        arm_result("sst2", "80b", "paper_top_lrs", [(top[0], 719 / 872), (top[1], 725 / 872)], "mean_top2"),
        arm_result("sst2", "80b", "dense_transfer_top_lrs", [(top[0], 717 / 872), (top[1], 727 / 872)], "mean_top2"),
        # the extended recipe at the same LRs splits seed 0's +1.50 at 80 into its 8 epochs and the staging/rewind
        arm_result("sst2", "80", "extended_top_lrs", [(top[0], 0.81), (top[1], 0.79)], "mean_top2"),
        arm_result("sst2", "90", "extended_top_lrs", [(top[0], 0.81), (top[1], 0.79)], "mean_top2"),  # no pair
        # an arm written without per-epoch scores: its best-epoch difference, "-" for the last epochs
        {**arm_result("cola", "90", "paper_top_lrs", [(top[0], 0.15), (top[1], 0.14)], "mean_top2"), "per_epoch": {}},
        arm_result("cola", "90", "dense_transfer_top_lrs", [(top[0], 0.11), (top[1], 0.12)], "mean_top2"),
    ]
    write_arms(tmp_path, *results)
    text = study.table()
    # Seed 0 from the full grids (dropout 0.05 never enters), seed 1 from its own arms.
    # The last column: the last epochs (arm_result's curves are one epoch, the best; the paper's at 80 has two).
    assert "| sst2 | 80 | 0 | 80.00 | 82.00 | 79.00 | 80.00 | +1.50 | -0.50 |" in text
    assert "| sst2 | 80 | 1 | 78.00 | 80.00 | 79.00 | 81.00 | -1.00 | -1.00 |" in text
    assert "| sst2 | 90 | 0 |" not in text
    assert "| sst2 | 80b | 0 | 82.45 | 83.14 | 82.22 | 83.37 | +0.00 | +0.00 |" in text
    # paper 81.00, extended 80.00, dense transfer 79.50: 8 epochs +0.50, staging and rewind +1.00 (last epochs -1.00).
    assert "| sst2 | 80 | 0 | 81.00 | 81.00 / 79.00 (80.00) | 79.50 | +0.50 | +1.00 | -1.00 |" in text
    assert "| cola | 90 | 0 | 15.00 | 14.00 | 11.00 | 12.00 | +3.00 | - |" in text
    assert text.count("(80.00) |") == 1  # only where the paper's and dense transfer's points exist too
    # Across seeds at 80: +1.50, -1.00 and seed 2's +2.00; one row per start with more than one seed.
    assert "| sst2 | 80 | 2 | 80.00 | 84.00 | 79.00 | 81.00 | +2.00 |" in text
    assert "| sst2 | 80 | 3 | +0.83 | 1.61 | 0.93 | -1.00 to +2.00 |" in text
    assert "| sst2 | 80b | 1 |" not in text and "| cola | 90 | 1 |" not in text
    # 80b again with seed 1 (+2.00 against seed 0's float -1e-16): the range starts at +0.00, never "-0.00".
    for schedule, scores in (("paper", (0.80, 0.84)), ("dense_transfer", (0.79, 0.81))):
        r = arm_result("sst2", "80b", f"{schedule}_top_lrs_seed1", list(zip(top, scores)), "mean_top2")
        (tmp_path / f"sst2__80b__{schedule}_top_lrs_seed1.json").write_text(json.dumps(r))
    assert "| sst2 | 80b | 2 | +1.00 | 1.41 | 1.00 | +0.00 to +2.00 |" in study.table()


def test_glue_study_plot_writes_one_figure_per_task(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    study = load_script("glue_study")
    results_dir = tmp_path / "glue_study"
    results_dir.mkdir()
    monkeypatch.setattr(study, "RESULTS_DIR", str(results_dir))
    for r in [arm_result("sst2", "dense", "dense_transfer_single", [("single", 0.80)]),
              arm_result("sst2", "90", "paper", [("lr0.0001_dropout0.1", 0.77), ("lr0.0003_dropout0.1", 0.79)],
                         "mean_top2"),
              arm_result("cola", "90", "paper_single", [("single", 0.10)])]:
        (results_dir / f"{r['task']}__{r['model']}__{r['arm']}.json").write_text(json.dumps(r))
    written = sorted(study.plot())
    assert written == [str(tmp_path / "glue_study_cola.png"), str(tmp_path / "glue_study_sst2.png")]
    assert all(Path(path).stat().st_size > 0 for path in written)


def fake_model_dir(path: Path, weights: bytes = b"weights") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{}")
    return path


def fake_glue(study, commands: list):
    """Stands in for the GLUE command: a single run finishes; a grid's other shard never does. The runs have no
    checkpoint to score, so the dev predictions an arm records (``record_predictions``, tested with a real run in
    the paired_dev tests) are noted in ``study.predictions_recorded``, with the summary they were recorded for."""
    study.predictions_recorded = []
    study.record_predictions = lambda opts, summary, run_dir: study.predictions_recorded.append((summary, run_dir))

    def run(command, **kwargs):
        commands.append(command)
        run_dir = Path(command[command.index("--output_dir") + 1])
        if "--grid" not in command and not (run_dir / "results.json").is_file():  # else: finished, cached
            run_dir.mkdir(parents=True, exist_ok=True)
            best = {"epoch": 1, "accuracy": 0.5}
            (run_dir / "results.json").write_text(json.dumps({
                "best": best, "per_epoch": [best], "recipe": {"learning_rate": 1e-4, "dropout": 0.1}, "epochs": 1,
                "data": {"train_examples": 10, "eval_examples": {"validation": 8}},
                "sparsity": {"mask_sparsity": 0.9}, "versions": {},
                "start": study.start_identity(command[command.index("--model") + 1])}))
    return run


def test_glue_study_grid_shards_share_grids_and_split_single_runs(tmp_path, monkeypatch, capsys):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path / "results"))
    model_dir = fake_model_dir(tmp_path / "m90")
    commands = []
    monkeypatch.setattr(study.subprocess, "run", fake_glue(study, commands))
    argv = ["--data-dir", "glue", "--models", f"90={model_dir}", "--tasks", "rte", "--runs", str(tmp_path / "runs"),
            "--arms", "paper", "paper_single", "dense_transfer", "dense_transfer_single"]
    for shard in ("0/2", "1/2"):
        study.run_arms(study.parse_args([*argv, "--grid-shard", shard]))
    ran = [(c[c.index("--output_dir") + 1].rsplit("/", 1)[1], c[c.index("--grid_shard") + 1] if "--grid_shard" in c
            else None) for c in commands]
    # Both processes run both grids (each its share of the points); the single runs are split between them.
    assert ran == [("paper", "0/2"), ("paper_single", None), ("dense_transfer", "0/2"),
                   ("paper", "1/2"), ("dense_transfer", "1/2"), ("dense_transfer_single", None)]
    # A grid without grid_results.json (its other shard's runs unfinished) gets no summary yet.
    assert capsys.readouterr().out.count("[waiting]") == 4
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert written == ["rte__90__dense_transfer_single.json", "rte__90__paper_single.json"]
    # Each written arm recorded its runs' dev predictions, for the summary it wrote; a waiting grid, none yet.
    assert sorted((s["arm"], s["summary_runs"], Path(d).name) for s, d in study.predictions_recorded) == [
        ("dense_transfer_single", ["single"], "dense_transfer_single"), ("paper_single", ["single"], "paper_single")]

    # Predictions that cannot be had (a run that does not reproduce its score): said, and the arm's summary stands,
    # and the next arm runs.
    import paired_dev

    def unreproducible(*args, **kwargs):
        raise paired_dev.PredictionsError("runs/.../best does not hold the checkpoint the run scored")

    study = load_script("glue_study")  # its own record_predictions, not the stand-in
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(paired_dev, "arm_predictions", unreproducible)
    study.run_arms(study.parse_args([*argv, "--arms", "extended_single", "dense_transfer_lr1e-4"]))
    assert (tmp_path / "results" / "rte__90__extended_single.json").exists()
    assert (tmp_path / "results" / "rte__90__dense_transfer_lr1e-4.json").exists()
    assert capsys.readouterr().out.count("[predictions] rte 90 ") == 2


def test_upstream_levers_are_valid_recipes_at_every_budget():
    from sparse_transfer.upstream.config import UpstreamArguments, load_recipe

    upstream = load_script("upstream_minilm")
    recipe = BENCHMARKS.parent / "recipes" / "upstream" / "minilm_90.yaml"
    for budget in upstream.BUDGETS.values():
        for lever, change in upstream.LEVERS.items():
            values = {**load_recipe(str(recipe)), **budget, **change, "output_dir": "unused"}
            args = UpstreamArguments(**values)  # raises on a combination the engine refuses
            if lever == "uniform":
                assert args.distribution == "uniform"
            if lever in ("acdc", "rigl"):
                assert args.method == lever


def test_upstream_glue_text_holds_training_sentences_only(tmp_path):
    upstream = load_script("upstream_minilm")
    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    (glue / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA  cat sat.\tA cat.\tentailment\n")
    (glue / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tDEV one.\tDEV two.\tentailment\n")
    (glue / "CoLA").mkdir()
    (glue / "CoLA" / "train.tsv").write_text("src\t1\t\tThe dog barked.\n")
    (glue / "CoLA" / "dev.tsv").write_text("src\t1\t\tDEV three.\n")
    (glue / "SST-2").mkdir()
    (glue / "SST-2" / "train.tsv").write_text("sentence\tlabel\na fine film \t1\n")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nDEV four\t0\n")
    path = upstream.glue_text_file(str(glue), out_dir=str(tmp_path / "text"))
    lines = Path(path).read_text().splitlines()
    assert lines == ["A cat sat.", "A cat.", "The dog barked.", "a fine film"]
    assert not any("DEV" in line for line in lines)
    with pytest.raises(Exception, match="is not a directory"):
        upstream.glue_text_file(str(tmp_path / "nowhere"), out_dir=str(tmp_path / "other"))


def test_glue_study_refuses_a_start_name_whose_arms_came_from_other_weights(tmp_path, monkeypatch):
    """A start retrained under the same name (other weights, same folder) never adds arms to the old ones' rows."""
    study = load_script("glue_study")
    results = tmp_path / "results"
    monkeypatch.setattr(study, "RESULTS_DIR", str(results))
    ran = []
    monkeypatch.setattr(study.subprocess, "run", fake_glue(study, ran))
    model_dir = fake_model_dir(tmp_path / "m90", b"first training")
    old = arm_result("rte", "90", "dense_transfer", [("lr2e-05_dropout0.1", 0.5)], "mean_top2")
    results.mkdir()
    argv = ["--data-dir", "glue", "--models", f"90={model_dir}", "--tasks", "rte", "--runs", str(tmp_path / "runs"),
            "--arms", "paper_single"]

    # An arm recorded before starts were recorded: cannot be checked, so refused.
    (results / "rte__90__dense_transfer.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"rte__90__dense_transfer.json.*--models 90b="):
        study.run_arms(study.parse_args(argv))
    # Recorded from these weights: the new arm runs.
    (results / "rte__90__dense_transfer.json").write_text(json.dumps({**old, "start": study.start_identity(model_dir)}))
    study.run_arms(study.parse_args(argv))
    assert len(ran) == 1
    # The model trained again into the same folder: refused before anything runs; under a new name it runs.
    fake_model_dir(model_dir, b"second training")
    (results / "rte__90__paper_single.json").unlink()  # its run folder stays: the GLUE command checks that one
    with pytest.raises(SystemExit, match="not the weights that 1 arm"):
        study.run_arms(study.parse_args(argv))
    assert len(ran) == 1
    study.run_arms(study.parse_args([*argv[:3], f"90b={model_dir}", *argv[4:]]))
    assert len(ran) == 2
    # A byte-level record (from before content was recorded) that differs: the way to check it is named.
    (results / "rte__90__dense_transfer.json").write_text(json.dumps({**old, "start": {"sha256": "ab" * 32}}))
    with pytest.raises(SystemExit, match=r"match_start_record.py .* abababababababab --record"):
        study.run_arms(study.parse_args(argv))


def test_glue_study_single_run_arm_reuses_its_grids_default_point(tmp_path, monkeypatch, capsys):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path / "results"))
    model_dir = fake_model_dir(tmp_path / "m90")
    commands = []
    monkeypatch.setattr(study.subprocess, "run", fake_glue(study, commands))
    point = tmp_path / "runs" / "rte" / "90" / "paper" / "lr0.0001_dropout0.1"
    point.mkdir(parents=True)
    best = {"epoch": 3, "accuracy": 0.625}
    (point / "results.json").write_text(json.dumps({
        "best": best, "per_epoch": [best], "recipe": {"learning_rate": 1e-4, "dropout": 0.1}, "epochs": 8,
        "data": {"train_examples": 10, "eval_examples": {"validation": 8}}, "sparsity": {"mask_sparsity": 0.9},
        "versions": {}, "start": study.start_identity(model_dir), "checkpoint": str(point / "best")}))
    (point / ".lock").write_text("")
    argv = ["--data-dir", "glue", "--models", f"90={model_dir}", "--tasks", "rte", "--runs", str(tmp_path / "runs")]
    study.run_arms(study.parse_args([*argv, "--arms", "paper_single", "dense_transfer_single"]))
    single = tmp_path / "runs" / "rte" / "90" / "paper_single"
    assert not (single / ".lock").exists()
    assert json.loads((single / "results.json").read_text())["checkpoint"] == str(single / "best")  # its own
    # The GLUE command still runs on the copy (and checks it); the arm's score is the grid point's.
    assert [c[c.index("--output_dir") + 1] for c in commands] == [str(single), str(single.parent / "dense_transfer_single")]
    assert json.loads((tmp_path / "results" / "rte__90__paper_single.json").read_text())["score"] == 0.625
    # No finished default point (dense transfer's grid never ran): the single run trains as usual.
    assert json.loads((tmp_path / "results" / "rte__90__dense_transfer_single.json").read_text())["score"] == 0.5
    assert "[reuse] rte 90 paper_single" in capsys.readouterr().out
    # The other way: a finished single run becomes the grid's default point before the grid runs.
    study.run_arms(study.parse_args([*argv, "--arms", "dense_transfer"]))
    copied = tmp_path / "runs" / "rte" / "90" / "dense_transfer" / "lr2e-05_dropout0.1" / "results.json"
    assert json.loads(copied.read_text()) == json.loads((single.parent / "dense_transfer_single" / "results.json").read_text())
    assert "[reuse] rte 90 dense_transfer" in capsys.readouterr().out
    # The rescaled sweep's 3-epoch point at that LR is the same run again, copied in; only the GLUE command (a
    # stand-in here) trains the other points.
    study.run_arms(study.parse_args([*argv, "--arms", "rescaled_sweep"]))
    sweep = tmp_path / "runs" / "rte" / "90" / "rescaled_sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["lr2e-05_dropout0.1_epochs3"]
    assert json.loads((sweep / "lr2e-05_dropout0.1_epochs3" / "results.json").read_text())["best"]["accuracy"] == 0.5
    assert "[reuse] rte 90 rescaled_sweep" in capsys.readouterr().out


def test_glue_study_reuses_the_same_run_across_grids(tmp_path, monkeypatch, capsys):
    """The paper grid's points at lr 2e-4 / 3e-4 (dropout 0.1) are the top-LR arm's points and, at 3e-4, the lr 3e-4
    single run: copied, never trained twice; another seed's arm reuses nothing."""
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path / "results"))
    model_dir = fake_model_dir(tmp_path / "m80")
    monkeypatch.setattr(study.subprocess, "run", fake_glue(study, []))
    grid = tmp_path / "runs" / "sst2" / "80" / "paper"
    for name, score in (("lr0.0002_dropout0.1", 0.75), ("lr0.0003_dropout0.1", 0.8)):
        (grid / name).mkdir(parents=True)
        best = {"epoch": 8, "accuracy": score}
        (grid / name / "results.json").write_text(json.dumps({
            "best": best, "per_epoch": [best], "recipe": {"learning_rate": 3e-4, "dropout": 0.1}, "epochs": 8,
            "data": {"train_examples": 10, "eval_examples": {"validation": 8}}, "sparsity": {"mask_sparsity": 0.8},
            "versions": {}, "start": study.start_identity(model_dir), "checkpoint": str(grid / name / "best")}))
    argv = ["--data-dir", "glue", "--models", f"80={model_dir}", "--tasks", "sst2", "--runs", str(tmp_path / "runs")]
    study.run_arms(study.parse_args([*argv, "--arms", "paper_single_lr3e-4", "paper_top_lrs", "paper_top_lrs_seed1"]))
    out = capsys.readouterr().out
    assert out.count("[reuse] sst2 80 paper_top_lrs:") == 2 and "[reuse] sst2 80 paper_single_lr3e-4:" in out
    assert "[reuse] sst2 80 paper_top_lrs_seed1" not in out
    single = tmp_path / "runs" / "sst2" / "80" / "paper_single_lr3e-4" / "results.json"
    assert json.loads(single.read_text())["best"]["accuracy"] == 0.8
    assert json.loads(single.read_text())["checkpoint"] == str(single.parent / "best")
    point = tmp_path / "runs" / "sst2" / "80" / "paper_top_lrs" / "lr0.0002_dropout0.1" / "results.json"
    assert json.loads(point.read_text())["best"]["accuracy"] == 0.75

    # Two processes sharing the grids (--grid-shard) copy at once: the one that comes second keeps the first one's
    # copy, never half of each, and goes on.
    import shutil

    copytree = shutil.copytree
    late = tmp_path / "runs" / "sst2" / "80" / "dense_transfer_top_lrs" / "lr0.0003_dropout0.1"
    source = tmp_path / "runs" / "sst2" / "80" / "dense_transfer_lr3e-4"
    shutil.copytree(grid / "lr0.0003_dropout0.1", source)

    def copy_while_the_other_process_does(src, dst, **kwargs):
        if not late.exists():
            copytree(src, late, **kwargs)
            (late / "theirs").write_text("")
        return copytree(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_while_the_other_process_does)
    study.run_arms(study.parse_args([*argv, "--arms", "dense_transfer_top_lrs"]))
    assert (late / "theirs").is_file() and "[reuse] sst2 80 dense_transfer_top_lrs" not in capsys.readouterr().out
    assert [p.name for p in late.parent.iterdir()] == ["lr0.0003_dropout0.1"]  # no copy left half-way


def test_glue_study_start_check_by_hub_commit_and_odd_names(tmp_path, monkeypatch):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path))
    r = arm_result("rte", "9[0]", "paper_single", [("single", 0.5)])
    (tmp_path / "rte__9[0]__paper_single.json").write_text(json.dumps({**r, "start": {"commit": "a" * 40}}))
    monkeypatch.setattr(study, "start_identity", lambda model: {"commit": "b" * 40})
    with pytest.raises(SystemExit, match=r"commit bbbbbbbbbbbb"):  # a glob character in the name is no way around
        study.check_start("9[0]", "org/model")
    monkeypatch.setattr(study, "start_identity", lambda model: {"commit": "a" * 40})
    study.check_start("9[0]", "org/model")


def test_match_start_record_finds_the_weights_behind_a_byte_level_record(tmp_path):
    """A folder whose mask file was written again with its metadata in another order still matches the byte-level
    record of the first save; one changed weight does not."""
    import torch
    from safetensors.torch import save_file

    from tests.test_rundir import _reorder_metadata

    script = load_script("match_start_record")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.arange(6.0)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_file({"w": torch.ones(6, dtype=torch.uint8)}, str(folder / "sparse_masks.safetensors"),
              metadata={"format": "sparse_transfer.masks", "version": "2", "sparsity": "0.000000"})
    recorded = script.start_identity(folder)["sha256"]
    assert script.match(folder, recorded[:12]) == []
    _reorder_metadata(folder / "sparse_masks.safetensors")
    assert script.start_identity(folder)["sha256"] != recorded
    order = script.match(folder, recorded[:12])
    assert order and sorted(order) == ["format", "sparsity", "version"]
    assert script.main([str(folder), recorded[:16]]) == 0
    # --record: the arms that recorded those bytes get the folder's content; others are left alone.
    results = tmp_path / "results"
    results.mkdir()
    script.RESULTS = results
    (results / "sst2__80__paper.json").write_text(json.dumps({"model": "80", "start": {"sha256": recorded}}))
    (results / "sst2__90__paper.json").write_text(json.dumps({"model": "90", "start": {"sha256": "ab" * 32}}))
    script.REPO = tmp_path
    assert script.main([str(folder), recorded[:16], "--record"]) == 0
    updated = json.loads((results / "sst2__80__paper.json").read_text())
    assert updated["start"]["content_sha256"] == script.start_identity(folder)["content_sha256"]
    assert "match_start_record.py" in updated["start_note"]
    assert "content_sha256" not in json.loads((results / "sst2__90__paper.json").read_text())["start"]
    save_file({"w": torch.arange(6.0) + 1}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert script.match(folder, recorded[:12]) is None and script.main([str(folder), recorded[:16]]) == 1
    (folder / "sparse_masks.safetensors").unlink()  # no file whose metadata order could differ: other weights
    assert script.match(folder, recorded[:12]) is None
    with pytest.raises(SystemExit):  # a single file, not a folder: a usage error, not a traceback
        script.main([str(folder / "model.safetensors"), recorded[:16]])


def test_paired_dev_bootstrap_pairs_the_dev_sentences():
    from sklearn.metrics import matthews_corrcoef

    paired = load_script("paired_dev")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    a = np.where(rng.random((2, 400)) < 0.8, labels, 1 - labels)  # two runs, about 80% right
    b = a.copy()
    b[:, :20] = 1 - b[:, :20]  # the same runs, 20 sentences flipped: highly correlated with a
    full = np.ones((1, 400))
    # At the full dev set (every sentence drawn once) the metrics are sklearn's; a constant predictor's MCC is 0.
    mcc = paired.metric_per_resample(full, a, labels, "matthews_correlation")[0]
    assert np.allclose(mcc, [matthews_corrcoef(labels, p) for p in a])
    assert np.allclose(paired.metric_per_resample(full, a, labels, "accuracy")[0], (a == labels).mean(1))
    assert paired.metric_per_resample(full, np.ones((1, 400), int), labels, "matthews_correlation")[0, 0] == 0
    # On a resample each sentence counts as often as it was drawn: sklearn's metrics with those counts as weights.
    counts = rng.multinomial(400, np.full(400, 1 / 400), size=3)
    mcc = paired.metric_per_resample(counts, a, labels, "matthews_correlation")
    assert np.allclose(mcc, [[matthews_corrcoef(labels, p, sample_weight=c) for p in a] for c in counts])
    accuracy = paired.metric_per_resample(counts, a, labels, "accuracy")
    assert np.allclose(accuracy, [[np.average(p == labels, weights=c) for p in a] for c in counts])
    for metric in ("accuracy", "matthews_correlation"):
        same = paired.bootstrap(a, a, labels, metric, resamples=2000)
        assert same["difference"] == 0 and same["paired_se"] == 0 and same["unpaired_se"] > 1
        assert same["share_at_or_below_0"] == 1
        close = paired.bootstrap(a, b, labels, metric, resamples=2000)
        expected = paired.metric_per_resample(full, a, labels, metric).mean() - \
            paired.metric_per_resample(full, b, labels, metric).mean()
        assert close["difference"] == pytest.approx(100 * expected)
        # Pairing removes what the two sides share: the SE of the difference is far below the unpaired one.
        assert 0 < close["paired_se"] < close["unpaired_se"] / 2
        assert close["paired_95"][0] < close["difference"] < close["paired_95"][1]
    # Equal sums in other runs (SST-2 at 80b, seed 1: 719 + 725 = 717 + 727 right of 872) are +0.00, never "-0.00".
    labels = np.ones(872, int)
    runs = {k: np.stack([np.arange(872) < k[0], np.arange(872) < k[1]]).astype(int) for k in ((719, 725), (717, 727))}
    tie = paired.bootstrap(runs[(719, 725)], runs[(717, 727)], labels, "accuracy", resamples=100)
    assert f"{tie['difference']:+.2f}" == "+0.00"


def split_start(tmp_path):
    """Tiny CoLA data, and a start whose predictions split the dev set (a tiny model trained for seconds predicts
    one class, MCC 0 for any input handling): its classifier's bias at the median logit difference. Trained with a
    learning rate too small to move it, a run records a non-zero score for paired_dev to reproduce."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from .glue.conftest import make_glue_dir, make_tiny_model_dir

    data_dir = make_glue_dir(tmp_path / "glue", tasks=("cola",), n_train=32, n_dev=64)
    base = make_tiny_model_dir(tmp_path / "base")
    torch.manual_seed(0)
    model, tokenizer = BertForSequenceClassification.from_pretrained(base, num_labels=2).eval(), AutoTokenizer.from_pretrained(base)
    sentences = [line.split("\t")[3] for line in (data_dir / "CoLA" / "dev.tsv").read_text().splitlines()]
    with torch.no_grad():
        logits = model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
        model.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    return data_dir, tmp_path / "start"


def still_run(data_dir, start, run, *extra):
    from sparse_transfer.glue.__main__ import main as glue

    assert glue(["--task", "cola", "--model", str(start), "--data_dir", str(data_dir), "--output_dir", str(run),
                 "--recipe", "dense_transfer", "--epochs", "1", "--learning_rate", "1e-9", "--max_seq_length", "64",
                 "--disable_tqdm", "true", *extra]) == 0
    return json.loads((run / "results.json").read_text())


def test_paired_dev_keeps_predictions_that_reproduce_the_runs_score(tmp_path):
    import shutil

    from sklearn.metrics import matthews_corrcoef

    paired = load_script("paired_dev")
    data_dir, start = split_start(tmp_path)
    run = tmp_path / "runs" / "cola" / "s" / "paper_single"
    results = still_run(data_dir, start, run)
    recorded = results["best"]["score"]
    assert recorded > 0.1
    arm = {"task": "cola", "model": "s", "arm": "paper_single", "summary": "single run", "start": results["start"],
           "runs": [{"name": "single", "score": recorded}]}
    out = tmp_path / "results" / "glue_study"
    preds = paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))["single"]
    labels = [int(line.split("\t")[1]) for line in (data_dir / "CoLA" / "dev.tsv").read_text().splitlines()]
    assert preds.shape == (64,) and matthews_corrcoef(labels, preds) == pytest.approx(recorded, abs=1e-9)
    stored = json.loads((tmp_path / "results" / "glue_study_predictions" / "cola__s__paper_single.json").read_text())
    assert stored["start"] == results["start"] and stored["runs"]["single"]["predictions"] == "".join(map(str, preds))
    assert len(stored["runs"]["single"]["weights"]) == 64
    # Where the run folder is here, its checkpoint decides: a stored entry for other weights is scored again.
    record = tmp_path / "results" / "glue_study_predictions" / "cola__s__paper_single.json"
    wrong = {**stored, "runs": {"single": {**stored["runs"]["single"], "weights": "0" * 64, "predictions": "1" * 64}}}
    record.write_text(json.dumps(wrong))
    assert np.array_equal(paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))["single"], preds)
    assert json.loads(record.read_text()) == stored
    # The run folder gone (a replaced machine): the stored predictions serve, for the score the arm recorded only,
    # and a start record that gained its content hash since (match_start_record.py --record) is the same start.
    shutil.move(run, tmp_path / "away")
    assert np.array_equal(paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))["single"], preds)
    assert paired.arm_predictions({**arm, "start": {**results["start"], "files": ["model.safetensors"]}}, str(run),
                                  str(data_dir), results_dir=str(out))["single"].size == 64
    with pytest.raises(paired.PredictionsError, match="lacks .*holds no predictions of it"):  # the arm trained again
        paired.arm_predictions({**arm, "runs": [{"name": "single", "score": recorded + 0.1}]}, str(run),
                               str(data_dir), results_dir=str(out))
    with pytest.raises(paired.PredictionsError, match="another start"):  # the name given to other weights
        paired.arm_predictions({**arm, "start": {"content_sha256": "0" * 64}}, str(run), str(data_dir),
                               results_dir=str(out))
    # Stored predictions are checked against the dev set they are paired on: edited, cut, not JSON, or another dev
    # set, each is an error that names the file, never a comparison.
    flipped = "".join("1" if c == "0" else "0" for c in stored["runs"]["single"]["predictions"])
    for text, match in ((flipped, "score .* not the"), (flipped[:40], "40 predictions"),
                        ("7" + flipped[1:], "score .* not the"), ("x" + flipped[1:], "not only digits")):
        record.write_text(json.dumps({**stored, "runs": {"single": {**stored["runs"]["single"], "predictions": text}}}))
        with pytest.raises(paired.PredictionsError, match=match):
            paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))
    record.write_text(json.dumps(stored)[:-10])
    with pytest.raises(paired.PredictionsError, match="cola__s__paper_single.json is not a predictions file"):
        paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))
    record.write_text(json.dumps(stored))
    dev = data_dir / "CoLA" / "dev.tsv"
    dev.write_text("\n".join(reversed(dev.read_text().splitlines())))  # the same sentences, other labels in order
    with pytest.raises(paired.PredictionsError, match="not the dev set the run was scored on"):
        paired.arm_predictions(arm, str(run), str(data_dir), results_dir=str(out))
    dev.write_text("\n".join(reversed(dev.read_text().splitlines())))
    # A run whose best/ does not give the score it recorded (a copied or resumed folder): a clear error, not a
    # silent comparison, and nothing stored.
    shutil.move(tmp_path / "away", run)
    results["best"]["score"] = recorded + 0.1
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(paired.PredictionsError, match="does not hold the checkpoint the run scored"):
        paired.arm_predictions({**arm, "runs": [{"name": "single", "score": recorded + 0.1}]}, str(run),
                               str(data_dir), results_dir=str(out))
    assert json.loads(record.read_text()) == stored
    assert [p.name for p in record.parent.iterdir() if p.name != record.name] == [f".{record.name}.lock"]


def test_paired_dev_compares_runs_on_the_same_dev_sentences_only(tmp_path, monkeypatch, capsys):
    paired = load_script("paired_dev")
    data_dir, start = split_start(tmp_path)
    monkeypatch.setattr(paired, "RESULTS_DIR", str(tmp_path / "results" / "glue_study"))
    monkeypatch.setattr(paired, "GRID_PAIRS", [("paper_single", "dense_transfer_single", None),
                                               ("paper_single", "extended_single", None)])
    runs = tmp_path / "runs"
    for arm, extra in (("paper_single", []), ("dense_transfer_single", ["--dropout", "0.2"]),
                       ("extended_single", ["--max_eval_samples", "40"])):
        results = still_run(data_dir, start, runs / "cola" / "s" / arm, *extra)
        (tmp_path / "results" / "glue_study").mkdir(parents=True, exist_ok=True)
        (tmp_path / "results" / "glue_study" / f"cola__s__{arm}.json").write_text(json.dumps(
            {"task": "cola", "model": "s", "arm": arm, "summary": "single run", "start": results["start"],
             "runs": [{"name": "single", "score": results["best"]["score"]}]}))
    paired.main(["--data-dir", str(data_dir), "--runs", str(runs), "--tasks", "cola", "--resamples", "200"])
    out = capsys.readouterr().out
    # A run scored on 40 of the 64 dev sentences (--max_eval_samples) is scored on those 40, as it recorded, and not
    # paired with runs scored on all 64.
    assert ("[skip] cola s paper_single (single run) - extended_single (single run): s/extended_single was scored "
            "on 40 of the 64 dev examples") in out
    rows = json.loads((tmp_path / "results" / "glue_study_paired.json").read_text())
    assert [r["what"] for r in rows] == ["paper_single (single run) - dense_transfer_single (single run)"]
    stored = tmp_path / "results" / "glue_study_predictions"
    assert sorted(p.name for p in stored.glob("*.json")) == [
        "cola__s__dense_transfer_single.json", "cola__s__extended_single.json", "cola__s__paper_single.json"]


def test_paired_dev_finds_the_comparisons_the_page_reads(tmp_path, monkeypatch):
    paired = load_script("paired_dev")
    monkeypatch.setattr(paired, "RESULTS_DIR", str(tmp_path))
    top = paired.TOP_POINTS
    results = [
        arm_result("cola", "80b", "paper_top_lrs", [(top[0], 0.17), (top[1], 0.16)], "mean_top2"),
        arm_result("cola", "80b", "dense_transfer_top_lrs", [(top[0], 0.10), (top[1], 0.13)], "mean_top2"),
        arm_result("cola", "80b", "extended_top_lrs", [(top[0], 0.12), (top[1], 0.14)], "mean_top2"),
        arm_result("cola", "80b", "paper_top_lrs_seed1", [(top[0], 0.19), (top[1], 0.19)], "mean_top2"),
        arm_result("cola", "80b", "dense_transfer_top_lrs_seed1", [(top[0], 0.15), (top[1], 0.15)], "mean_top2"),
        arm_result("cola", "80b", "paper_top_lrs_seed2", [(top[0], 0.19)], "mean_top2"),  # unfinished: no pair
        arm_result("cola", "80b", "paper", [("lr0.0001_dropout0.1", 0.15), ("lr0.0002_dropout0.05", 0.19),
                                            ("lr0.0003_dropout0.05", 0.18)], "mean_top2"),
        arm_result("cola", "80b", "rescaled_sweep", [("lr5e-05_dropout0.1_epochs7", 0.14),
                                                     ("lr5e-05_dropout0.1_epochs6", 0.12)], "best"),
        arm_result("cola", "dense", "dense_transfer", [("lr2e-05_dropout0.1", 0.16), ("lr5e-05_dropout0.1", 0.26),
                                                       ("lr3e-05_dropout0.1", 0.20)], "mean_top2"),
    ]
    write_arms(tmp_path, *results)
    found = {c["what"]: (c["a"], c["b"]) for c in paired.comparisons(["cola"]) if c["start"] == "80b"}
    assert sorted(found) == [
        "equal LRs, seed 0: extended - dense transfer (the 8 epochs)",
        "equal LRs, seed 0: paper - dense transfer", "equal LRs, seed 0: paper - extended (staging and rewind)",
        "equal LRs, seed 1: paper - dense transfer", "equal LRs, seeds 0 + 1 together: paper - dense transfer",
        "paper (mean_top2) - rescaled_sweep (best)", "paper grid - the dense model's dense_transfer grid"]
    a, b = found["equal LRs, seeds 0 + 1 together: paper - dense transfer"]
    assert a == [("80b", arm, p) for arm in ("paper_top_lrs", "paper_top_lrs_seed1") for p in top]
    assert b == [("80b", arm, p) for arm in ("dense_transfer_top_lrs", "dense_transfer_top_lrs_seed1") for p in top]
    # A grid's summary is its two best runs, the sweep's its best, each from its own start.
    a, b = found["paper (mean_top2) - rescaled_sweep (best)"]
    assert a == [("80b", "paper", "lr0.0002_dropout0.05"), ("80b", "paper", "lr0.0003_dropout0.05")]
    assert b == [("80b", "rescaled_sweep", "lr5e-05_dropout0.1_epochs7")]
    assert found["paper grid - the dense model's dense_transfer grid"][1] == [
        ("dense", "dense_transfer", "lr5e-05_dropout0.1"), ("dense", "dense_transfer", "lr3e-05_dropout0.1")]
    # Seed 0 without *_top_lrs arms reads the full grids' points (as glue_study's table does); a single run is its
    # arm's folder itself.
    for name in ("paper_top_lrs", "dense_transfer_top_lrs", "extended_top_lrs"):
        (tmp_path / f"cola__80b__{name}.json").unlink()
    for r in (arm_result("cola", "80b", "paper", [(top[0], 0.18), (top[1], 0.17), ("lr0.0001_dropout0.1", 0.15)],
                         "mean_top2"),
              arm_result("cola", "80b", "dense_transfer_paper_lrs", [(top[0], 0.10), (top[1], 0.12)], "mean_top2"),
              arm_result("cola", "80b", "extended_single", [("single", 0.09)]),
              arm_result("cola", "80b", "extended", [("lr2e-05_dropout0.1", 0.09)], "mean_top2")):
        (tmp_path / f"{r['task']}__{r['model']}__{r['arm']}.json").write_text(json.dumps(r))
    monkeypatch.setattr(paired, "GRID_PAIRS", [("paper", "extended_single", None)])
    found = {c["what"]: (c["a"], c["b"]) for c in paired.comparisons(["cola"]) if c["start"] == "80b"}
    assert found["equal LRs, seed 0: paper - dense transfer"] == (
        [("80b", "paper", p) for p in top], [("80b", "dense_transfer_paper_lrs", p) for p in top])
    assert "equal LRs, seed 0: paper - extended (staging and rewind)" not in found  # no extended point at 2e-4
    assert found["paper (mean_top2) - extended_single (single run)"][1] == [("80b", "extended_single")]
    # The runs a grid's summary named (as the GLUE command ranked them) are the runs compared; without that record,
    # ranked as the command ranks them: a NaN score last.
    assert paired.chosen_runs({"summary": "mean_top2", "summary_runs": ["b", "c"], "runs": [
        {"name": "a", "score": 0.3}, {"name": "b", "score": 0.2}, {"name": "c", "score": 0.1}]}) == [("b",), ("c",)]
    assert paired.chosen_runs({"summary": "mean_top2", "runs": [
        {"name": "a", "score": float("nan")}, {"name": "b", "score": 0.2}, {"name": "c", "score": 0.1}]}) == [
        ("b",), ("c",)]


def test_paired_dev_merges_its_results_across_calls(tmp_path, monkeypatch):
    paired = load_script("paired_dev")
    monkeypatch.setattr(paired, "RESULTS_DIR", str(tmp_path / "glue_study"))

    def row(task, what, difference):
        return {"task": task, "start": "80b", "what": what, "a": [("80b", "paper", "x")], "b": [("80b", "d", "y")],
                "difference": difference, "paired_se": 1.0, "unpaired_se": 2.0, "paired_95": [-1.0, 3.0],
                "share_at_or_below_0": 0.1, "resamples": 100}

    paired.write_results([row("sst2", "s", 0.5), row("cola", "c", 4.0)])
    text = paired.write_results([row("cola", "c", 5.0)])  # a --tasks cola call: SST-2's row stays
    table = (tmp_path / "glue_study_paired.md").read_text()
    assert text.endswith("glue_study_paired.md") and "| cola | 80b | c | 1 vs 1 | +5.00 |" in table
    assert "| sst2 | 80b | s | 1 vs 1 | +0.50 |" in table and "+4.00" not in table
    assert len(json.loads((tmp_path / "glue_study_paired.json").read_text())) == 2


def test_glue_study_side_by_side_fills_a_start_from_its_bit_for_bit_retraining(tmp_path, monkeypatch):
    study = load_script("glue_study")
    monkeypatch.setattr(study, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(study, "TRAINED_AGAIN", {"90": "90b"})
    paper = [("lr0.0001_dropout0.1", 0.60), ("lr0.0002_dropout0.1", 0.70), ("lr0.0003_dropout0.1", 0.74)]
    results = [
        arm_result("rte", "dense", "dense_transfer", [("lr2e-05_dropout0.1", 0.80), ("lr3e-05_dropout0.1", 0.80)],
                   "mean_top2"),
        arm_result("rte", "90", "dense_transfer", [("lr2e-05_dropout0.1", 0.60), ("lr3e-05_dropout0.1", 0.60)],
                   "mean_top2"),
        arm_result("rte", "90", "paper", paper, "mean_top2"),
        # The second training's equal-LR arm repeats two of the paper grid's points (SAME_RUNS), and it ran the
        # extended grid, which the first did not.
        arm_result("rte", "90b", "paper_top_lrs", paper[1:], "mean_top2"),
        arm_result("rte", "90b", "extended", [("lr2e-05_dropout0.1", 0.66), ("lr3e-05_dropout0.1", 0.64)],
                   "mean_top2"),
    ]
    write_arms(tmp_path, *results)
    text = study.table()
    assert "| rte | 90 (*: 90b) | 90% | 60.00 | 65.00* | - | - | 72.00 | +12.00 | 60% |" in text
    assert "every run both trained has the same dev score at every epoch, to the last digit (2 of them" in text
    assert "| rte | 90b |" not in text.split("Every arm:")[0]

    # A figure that reads a filled cell is marked too: dense transfer's grid only at the second training.
    (tmp_path / "rte__90__dense_transfer.json").unlink()
    write_arms(tmp_path, {**results[1], "model": "90b"})
    text = study.table().split("Every arm:")[0]
    assert "| rte | 90 (*: 90b) | 90% | 60.00* | 65.00* | - | - | 72.00 | +12.00* | 60%* |" in text
    (tmp_path / "rte__90b__dense_transfer.json").unlink()
    write_arms(tmp_path, results[1])

    # Runs at the majority class throughout are alike from any weights: no evidence, the rows stay apart (and no note
    # speaks of filled cells).
    write_arms(tmp_path, arm_result("rte", "90", "paper", [(p, 0.0) for p, _ in paper], "mean_top2"),
               arm_result("rte", "90b", "paper_top_lrs", [(p, 0.0) for p, _ in paper[1:]], "mean_top2"))
    text = study.table().split("Every arm:")[0]
    assert "| rte | 90b | 90% | - | 65.00 |" in text and "fill" not in text
    write_arms(tmp_path, results[2])

    # A shared run without per-epoch scores cannot be compared: apart, and named.
    again = arm_result("rte", "90b", "paper_top_lrs", paper[1:], "mean_top2")
    del again["per_epoch"]["lr0.0003_dropout0.1"]
    write_arms(tmp_path, again)
    text = study.table().split("Every arm:")[0]
    assert "| rte | 90b | 90% |" in text
    assert "(rte paper_top_lrs lr0.0003_dropout0.1 differ or lack per-epoch scores)" in text

    # One epoch of one shared run differs: the two are not the same weights, and their rows stay apart.
    again = arm_result("rte", "90b", "paper_top_lrs", [paper[1], ("lr0.0003_dropout0.1", 0.74)], "mean_top2")
    again["per_epoch"]["lr0.0003_dropout0.1"] = [0.50, 0.74]
    write_arms(tmp_path, again)
    text = study.table().split("Every arm:")[0]
    assert "| rte | 90 | 90% | 60.00 | - | - | - | 72.00 | +12.00 | 60% |" in text
    assert "| rte | 90b | 90% | - | 65.00 | - | - | - | - | - |" in text
    assert "`90b` is not shown to be `90` trained again bit for bit (rte paper_top_lrs lr0.0003_dropout0.1 differ" in text
