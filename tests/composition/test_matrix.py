"""The composition matrix: the program a user writes first (``matrix_program.py``) under every strategy.

Rows are strategies: one device, ``ddp``, ``ddp_spawn``, FSDP (FULL_SHARD and SHARD_GRAD_OP, each with sharded
and full state dicts), DeepSpeed ZeRO stages 1-3 and their offload variants; all multi-process rows run 2 CPU
processes on gloo. Each row costs two launches: ``fit`` (the full program, its deterministic variant with
torchmetrics, two validation loaders, an EarlyStopping that stops and ``test(ckpt_path="best")``, manual
optimization with two optimizers, bf16-mixed) and ``resume`` (a new launch resuming the full program from a
mid-epoch checkpoint and from ``ckpt_path="last"``). The columns are checks on what the ranks reported:

- the full program runs, the ranks agree, validate/test/predict give the values of the fitted weights;
- each resume ends bitwise where the uninterrupted run of the same strategy ended (dropout, shuffling and the
  workers' augmentation draw per-rank random numbers, so the full program is compared within its row only);
- the deterministic variants end where the one-device run with the same global batch ends: bitwise where the
  arithmetic is the same, else within a tolerance justified where it is set.

A combination that cannot work must fail early with a ``fulmen.errors`` exception naming the fix; such cells
are listed in ``UNSUPPORTED`` and checked for that error.

To re-check without launching again: ``python tests/composition/matrix_program.py OUT ROWS fit`` (then
``resume``) for the groups in ``GROUPS``, and ``FULMEN_MATRIX_OUT=OUT pytest tests/composition``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "strategies"))
import matrix_program as program  # noqa: E402
from test_ddp import _alive, _env, _ok, _run  # noqa: E402

from fulmen.strategies.deepspeed import deepspeed_available  # noqa: E402

SCRIPT = str(Path(__file__).with_name("matrix_program.py"))
FSDP = [f"fsdp:{s}:{d}" for s in ("FULL_SHARD", "SHARD_GRAD_OP") for d in ("sharded", "full")]
DEEPSPEED = ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_2_offload",
             "deepspeed_stage_3_offload"]
ROWS = ["single", "ddp", "ddp_spawn", *FSDP, *DEEPSPEED]
# rows sharing a launch (one launch per group and phase): a process start costs seconds, DeepSpeed's more
GROUPS = [["single"], ["ddp_spawn"], ["ddp", *FSDP], DEEPSPEED]
ONE_PROCESS = ("single", "ddp_spawn")  # ddp_spawn's calling process holds the results

# (row, part) -> the fulmen.errors exception and a phrase of its message that names the fix
UNSUPPORTED: dict[tuple[str, str], tuple[str, str]] = {
    (row, "manual"): ("MisconfigurationException", "use strategy='fsdp' or 'ddp'") for row in DEEPSPEED}

# float32 rows whose arithmetic differs from one device's only in the order of the gradient sum (an all-reduce
# of 2 per-process means instead of one mean over the global batch): about 1 ulp per step, carried through at
# most 16 AdamW/SGD steps; the observed difference is below 1e-7, the tolerance 10x that. DeepSpeed against
# DDP differs the same way (its own flattened gradient buckets and clipping norm), with the same bound
FP32_TOL = 1e-6
# bf16-mixed: autocast rounds activations and gradients to 8 significant bits (relative 2^-8 = 4e-3), so a
# different summation order upstream may flip a rounding; over 8 steps at lr 0.02 weights moved < 6e-4
BF16_TOL = 5e-3
# DeepSpeed's bf16 runs the whole module in bfloat16 (weights too, float32 master copies in the optimizer),
# not autocast: every matmul input is rounded, and AdamW's normalized steps turn a flipped rounding of a small
# gradient into a step of up to lr (0.02); observed < 2e-2
DEEPSPEED_BF16_TOL = 5e-2


def _row_params(rows: list[str]) -> list:
    marks = {r: [pytest.mark.skipif(not deepspeed_available(), reason="DeepSpeed is not installed")]
             for r in DEEPSPEED}
    return [pytest.param(r, id=r.replace(":", "-"), marks=marks.get(r, [])) for r in rows]


_CACHE: dict[str, dict] = {}
TIMEOUT = 600  # per launch; a quiet machine needs a fraction of it


def _launch(out: Path, rows: list[str], phase: str) -> None:
    cmd = [sys.executable, SCRIPT, str(out), ",".join(rows), phase]
    _ok(_run([(cmd, _env())], out, timeout=TIMEOUT))


def results(row: str, tmp_path_factory) -> dict:
    """What every rank of ``row`` reported; the row's group is launched once per session (fit, then resume).
    A failed launch fails every check of its rows without launching again."""
    if row not in _CACHE:
        group = next(g for g in GROUPS if row in g)
        try:
            if os.environ.get("FULMEN_MATRIX_OUT"):  # re-check the reports of an earlier `matrix_program.py` launch
                out = Path(os.environ["FULMEN_MATRIX_OUT"])
            else:
                out = tmp_path_factory.mktemp("matrix")
                _launch(out, group, "fit")
                _launch(out, group, "resume")
                assert not _alive(str(out))
            for r in group:
                folder = out / r.replace(":", "-")
                ranks = range(1 if r in ONE_PROCESS else 2)
                _CACHE[r] = {"out": folder, **{phase: [json.loads((folder / f"{phase}-rank{k}.json").read_text())
                                                       for k in ranks] for phase in ("fit", "resume")}}
        except BaseException as err:
            for r in group:
                _CACHE[r] = {"failed": err}
            raise
    if "failed" in _CACHE[row]:
        raise AssertionError(f"the launch of {row}'s group failed earlier") from _CACHE[row]["failed"]
    return _CACHE[row]


@pytest.fixture
def res(request, tmp_path_factory):
    return results(request.param, tmp_path_factory)


def _part(res: dict, row: str, part: str, phase: str = "fit") -> list[dict]:
    """Every rank's report of one part; an unsupported cell must have failed early with its error."""
    reports = [rank[part] for rank in res[phase]]
    if (row, part) in UNSUPPORTED:
        error, phrase = UNSUPPORTED[row, part]
        for rep in reports:
            assert rep.get("error") == error and rep["fulmen"] and phrase in rep["message"], rep
        pytest.skip(f"{part} under {row} is refused early: {reports[0]['message']}")
    for rep in reports:
        assert "error" not in rep, rep.get("traceback", rep)
    for rep in reports[1:]:  # the ranks agree: synced metrics, gathered weights and predictions
        assert rep == reports[0]
    return reports


def _close(got: dict[str, list[float]], want: dict[str, list[float]], tol: float) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=tol), name


def _metrics_close(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=rel), key


def _same_arithmetic_as_ddp(row: str) -> bool:
    """ddp_spawn and FSDP on 2 processes sum the same 2 gradients and divide by 2 (exact): bitwise DDP's."""
    return row == "ddp_spawn" or row.startswith("fsdp")


def _model(weights: dict[str, list[float]], cls=program.Program, **kwargs) -> torch.nn.Module:
    model = cls(**kwargs)
    for name, p in model.named_parameters():
        p.data = torch.tensor(weights[name]).view_as(p)
    return model


# ------------------------------------------------------------------------------------------------------
# the full program: random augmentation in workers, dropout, shuffling


@pytest.mark.parametrize("res", _row_params(ROWS), indirect=True)
def test_full_program_fits_evaluates_and_predicts(res, request):
    row = request.node.callspec.params["res"]
    [rep, *_] = _part(res, row, "full")
    assert rep["global_step"] == program.EPOCHS * 4  # 8 batches per epoch, 2 per optimizer step
    assert rep["ckpt_files"] == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    # validate and test on the same trainer see the fitted weights: fit's last validation ran on them
    assert rep["validate"] == [{"val_loss": rep["metrics"]["val_loss"]}]
    assert rep["test"] == [{"test_loss": rep["metrics"]["val_loss"]}]
    # predictions of every sample, in sample order, on every rank: the fitted model's outputs
    x, _ = program._tensors(program.VAL, 1)
    with torch.no_grad():
        want = _model(rep["weights"]).eval()(x).flatten().tolist()
    assert [v for batch in rep["predict"] for v in batch] == pytest.approx(want, abs=1e-6)
    if row not in ("single", "ddp"):  # the same per-process random streams as ddp
        ddp = results("ddp", request.getfixturevalue("tmp_path_factory"))["fit"][0]["full"]
        if _same_arithmetic_as_ddp(row):
            assert rep["weights"] == ddp["weights"] and rep["metrics"] == ddp["metrics"]
        else:
            _close(rep["weights"], ddp["weights"], FP32_TOL)
            _metrics_close(rep["metrics"], ddp["metrics"], FP32_TOL)


@pytest.mark.parametrize("resume", ["mid", "last"])
@pytest.mark.parametrize("res", _row_params(ROWS), indirect=True)
def test_resume_in_a_new_process_ends_bitwise_where_the_full_run_ended(res, request, resume):
    """``mid``: from the step-3 checkpoint (mid-epoch 1, after its mid-epoch validation); ``last``: with
    ckpt_path="last" from the folder of a run killed after step 7 (step 6: mid-epoch 2, before validation)."""
    row = request.node.callspec.params["res"]
    [full, *_] = _part(res, row, "full")
    [rep, *_] = _part(res, row, resume, phase="resume")
    assert rep["global_step"] == full["global_step"]
    assert rep["metrics"] == full["metrics"]
    assert rep["weights"] == full["weights"]


# ------------------------------------------------------------------------------------------------------
# deterministic variants: compared with one device and the same global batch


@pytest.mark.parametrize("res", _row_params(ROWS), indirect=True)
def test_torchmetrics_two_val_loaders_early_stop_and_test_best(res, request):
    row = request.node.callspec.params["res"]
    [rep, *_] = _part(res, row, "det")
    # EarlyStopping stopped the run at its 2nd validation (end of epoch 1), on every rank, before max_epochs
    assert rep["global_step"] == 4 and rep["stopped_epoch"] == 0
    assert rep["best"] == "epoch=0-step=2.ckpt"  # the first validation's, the best one
    for i in (0, 1):  # the torchmetrics MSE (synced by torchmetrics) equals the sync_dist mean of batch MSEs
        m = rep["metrics"]
        assert m[f"val_mse/dataloader_idx_{i}"] == pytest.approx(m[f"val_loss/dataloader_idx_{i}"], rel=1e-6)
    single = results("single", request.getfixturevalue("tmp_path_factory"))
    ref = single["fit"][0]["det"]
    if row == "single":  # test(ckpt_path="best") tested the best checkpoint's weights
        state = torch.load(res["out"] / "det" / "ckpt" / rep["best"], weights_only=True)["state_dict"]
        model = program.Program(dropout=0.0, val_loaders=2, metric=True)
        model.load_state_dict(state)
        x, y = program._tensors(program.VAL, 1)
        with torch.no_grad():
            batches = [torch.nn.functional.mse_loss(model(x[i:i + 8]), y[i:i + 8]) for i in range(0, len(x), 8)]
        assert rep["test_best"][0]["test_loss"] == pytest.approx(float(torch.stack(batches).mean()), rel=1e-6)
        return
    _close(rep["weights"], ref["weights"], FP32_TOL)
    _metrics_close(rep["metrics"], ref["metrics"], FP32_TOL)
    _metrics_close(rep["test_best"][0], ref["test_best"][0], FP32_TOL)
    if _same_arithmetic_as_ddp(row):
        ddp = results("ddp", request.getfixturevalue("tmp_path_factory"))["fit"][0]["det"]
        assert rep["weights"] == ddp["weights"] and rep["metrics"] == ddp["metrics"]


@pytest.mark.parametrize("res", _row_params(ROWS), indirect=True)
def test_manual_optimization_with_two_optimizers(res, request):
    row = request.node.callspec.params["res"]
    [rep, *_] = _part(res, row, "manual")
    assert rep["global_step"] == 16  # each optimizer's step counts, as in Lightning: 8 windows x 2 optimizers
    initial = {n: p.detach().flatten().tolist() for n, p in program.TwoOptimizers().named_parameters()}
    assert all(rep["weights"][n] != initial[n] for n in initial)  # both optimizers stepped their halves
    ref = results("single", request.getfixturevalue("tmp_path_factory"))["fit"][0]["manual"]
    _close(rep["weights"], ref["weights"], FP32_TOL)
    _metrics_close(rep["metrics"], ref["metrics"], FP32_TOL)


@pytest.mark.parametrize("res", _row_params(ROWS), indirect=True)
def test_bf16_mixed(res, request):
    row = request.node.callspec.params["res"]
    [rep, *_] = _part(res, row, "bf16")
    assert rep["global_step"] == 8
    ref = results("single", request.getfixturevalue("tmp_path_factory"))["fit"][0]["bf16"]
    tol = DEEPSPEED_BF16_TOL if row.startswith("deepspeed") else BF16_TOL
    _close(rep["weights"], ref["weights"], tol)
    _metrics_close(rep["metrics"], ref["metrics"], tol)
