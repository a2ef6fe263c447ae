"""SlimAdam under FSDP2 (fully_shard, DTensor Shard(0), uneven and empty shards) and DDP, on gloo process
groups of 2, 3 and 4 ranks on 127.0.0.1: each equals one process to 1e-12 in fp64 over 6 steps
(tests/dist_worker.py holds the workers; one spawn per world size runs every check).

The default run spawns 3 ranks once (uneven and empty tail shards) for the paper rules and four K of the
4-D weight on every path, AdaLayer, groups + schedule, the collective count, the SNR tracker and the
per-rank audit (`audit --world-size`: its arithmetic == each rank's measured ledger, to the byte), and
tensor parallelism (Shard(1) Rowwise and Shard(0) Colwise Linears, one mix of crossing and local K) (25 s
on a quiet 2-core machine, 50-70 s busy). The full matrix, every K of the 2-D and 4-D weights, FSDP2 and DDP
at 2, 3 and 4 ranks (about 4 minutes in all), and the checkpoint round trip (3 spawns, 30-80 s) are
marked ``distributed`` and run by ``.ci/run``: ``python -m pytest -m distributed tests/test_distributed.py``.
So are tensor parallelism at 2 and 3 ranks with every K of the 2-D weights (about 15 s each), the torchrun run of ``slimbench run --fsdp`` against the one-process run (3 ranks, about 15 s), every
registry optimizer under FSDP2 at 2 and 3 ranks against its ``sharded`` flag (about 15 s), one printed
``--fsdp 2 --print-commands`` line run by sh (about 10 s), and ``--fsdp 2 --executor submitit`` on submitit's
local executor (2 jobs of 2 tasks, about 40 s; skipped without submitit: ``pip install -e '.[cluster]'``)."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, checks: list[str], tmp_path: Path) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = str(tmp_path / "res")
    mp.spawn(dist_worker.main, args=(world, free_port(), checks, out), nprocs=world, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
    for r in res:
        assert "error" not in r, r["error"]
    return res


_cache: dict[tuple, list[dict]] = {}
FULL = ("fsdp", "ddp", "collectives", "audit")
QUICK = ("fsdp-quick", "collectives", "snr", "audit", "tp-quick", "tp-adalayer")


def results(world: int, checks: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if (world, checks) not in _cache:
        _cache[world, checks] = spawn(world, list(checks), tmp_path_factory.mktemp(f"w{world}"))
    return _cache[world, checks]


def assert_equal_to_one_process(res: list[dict], mode: str, at_least: int) -> None:
    for rank, r in enumerate(res):
        errs = r[mode]
        assert len(errs) >= at_least, sorted(errs)
        bad = {k: v for k, v in errs.items() if not v <= 1e-12}
        assert not bad, f"rank {rank}: {bad}"


def assert_collectives(res: list[dict]) -> None:
    for r in res:
        c = r["collectives"]
        assert c == {"paper ('foreach', False)": 1, "paper ('foreach', True)": 1, "paper ('fused', True)": 1,
                     "local ('foreach', False)": 0, "local ('foreach', True)": 0, "local ('fused', True)": 0}, c
    assert_fused_native(res, "collectives", ["collectives paper"])


def assert_fused_native(res: list[dict], prefix: str, native: list[str]) -> None:
    """The fused path's tensors whose K crosses ranks went through the native kernel (``slimadam_given_*``,
    the reduced sums given; dist_worker.native_spy): on every rank, no such tensor with a K that is a
    contiguous range of dims was left to another path, and no warning about sharded dims was issued
    except the one for tensors whose K is not a range (K = (0, 2): foreach, on the same all-reduce). Each
    config named in ``native`` stepped at least one tensor there on rank 0 (its shards are never empty)."""
    logs = [{k: v for k, v in r["native"].items() if k.split(" ", 1)[0] == prefix} for r in res]
    assert logs[0], sorted(res[0]["native"])
    for rank, log in enumerate(logs):
        for key, rec in log.items():
            assert rec["left_range"] == 0, (rank, key, rec)
            assert len(rec["warnings"]) == (1 if rec["left_other"] else 0), (rank, key, rec)
            assert all("the native kernel cannot take them" in w for w in rec["warnings"]), (rank, key, rec)
            if prefix == "ddp":  # whole tensors on every rank: nothing crosses ranks
                assert rec["calls"] == 0 and not rec["warnings"], (rank, key, rec)
    for key in native:
        assert logs[0][key]["taken"] > 0, (key, logs[0][key])


@pytest.mark.parametrize("world", [3, pytest.param(2, marks=pytest.mark.distributed)])
def test_fsdp2_equals_one_process_quick(world: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = results(world, QUICK, tmp_path_factory)
    assert_equal_to_one_process(res, "fsdp-quick", 5 * 3 + 3)
    assert_collectives(res)
    assert_fused_native(res, "fsdp", ["fsdp paper", "fsdp conv[0]/lin[0]"])
    for r in res:  # SNR of a sharded V == the unsharded one (4 weights, every candidate K, 3 steps)
        snr = r["snr"]
        assert snr["same_keys"] and snr["entries"] == 4 and snr["values"] >= 4 * 3 * 3, snr
        assert snr["max_rel_err"] <= 1e-12, snr


TP_SHAPES = {"fc1.weight": (7, 5), "fc2.weight": (4, 7), "fc3.weight": (2, 4), "fc4.weight": (3, 2)}


def assert_tensor_parallel(res: list[dict], check: str, configs: int) -> None:
    """Every rank: == one process (1e-12), one all-reduce per step exactly when some K crosses ranks, and V
    at the reduced shape, Replicate() where K holds the sharded dim (a Rowwise Shard(1) weight with
    K = (1,)), else sharded like the weight (that weight with K = (0,): V (1, in) on Shard(1))."""
    import json

    from torch.distributed.tensor import Replicate, Shard

    for rank, r in enumerate(res):
        tp = r[check]
        assert len(tp["errs"]) == 3 * configs, sorted(tp["errs"])
        bad = {k: v for k, v in tp["errs"].items() if not v <= 1e-12}
        assert not bad, f"rank {rank}: {bad}"
        assert tp["all_reduces"] == {k: int(not k.startswith("K=[] ")) for k in tp["errs"]}, tp["all_reduces"]
        assert len(tp["v"]) == 4 * configs, sorted(tp["v"])
        for key, (p_pl, shape, v_pl) in tp["v"].items():
            cname, name = key.rsplit(" ", 1)
            k = tuple(dist_worker.TP_MIX[name]) if cname == "mix" else tuple(json.loads(cname[2:]))  # "K=[0, 1]"
            assert p_pl == ((Shard(0),) if name in ("fc1.weight", "fc3.weight") else (Shard(1),)), (key, p_pl)
            assert shape == tuple(1 if d in k else n for d, n in enumerate(TP_SHAPES[name])), (key, shape)
            assert v_pl == ((Replicate(),) if p_pl[0].dim in k else p_pl), (key, v_pl)


def test_tensor_parallel_shard1_quick(tmp_path_factory: pytest.TempPathFactory) -> None:
    """3 ranks (uneven shards; an empty one on each dim), the mix: on a Colwise Shard(0) weight K = (0,)
    (crosses) and (1,) (local), on a Rowwise Shard(1) one K = (1,) (crosses: V replicated) and (0,) (local:
    V Shard(1)), on the loop, foreach and fused paths."""
    res = results(3, QUICK, tmp_path_factory)
    assert_tensor_parallel(res, "tp-quick", 1)
    assert_fused_native(res, "tp", ["tp mix"])


def test_adalayer_under_tensor_parallelism_equals_one_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    """AdaLayer on the Colwise/Rowwise pairs at 3 ranks (an empty shard on each dim, whose gradient comes back
    Replicate()): == one process to 1e-12 on the for-loop and foreach paths."""
    for rank, r in enumerate(results(3, QUICK, tmp_path_factory)):
        errs = r["tp-adalayer"]
        assert set(errs) == {"loop", "foreach"}
        assert all(e <= 1e-12 for e in errs.values()), (rank, errs)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_tensor_parallel_shard1_equals_one_process(world: int, tmp_path: Path) -> None:
    """torch's tensor parallelism (parallelize_module: ColwiseParallel Shard(0), RowwiseParallel Shard(1)) at 2
    and 3 ranks: K = (), (0,), (1,), (0, 1) on every weight and a mix, on every path, 6 steps, fp64."""
    res = spawn(world, ["tp"], tmp_path)
    assert_tensor_parallel(res, "tp", 5)
    assert_fused_native(res, "tp", ["tp mix", "tp K=[0]", "tp K=[1]", "tp K=[0, 1]"])


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_sharded_equals_one_process(world: int, mode: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = results(world, FULL, tmp_path_factory)
    assert_equal_to_one_process(res, mode, 17 * 3 - 1 + 3)
    assert_fused_native(res, mode, ["fsdp paper", "fsdp conv[0]/lin[0]", "fsdp conv[0, 1, 2, 3]/lin[0, 1]"]
                        if mode == "fsdp" else [])


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])
def test_one_all_reduce_per_step_when_k_crosses_ranks(world: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert_collectives(results(world, FULL, tmp_path_factory))


@pytest.mark.parametrize("world", [3, pytest.param(2, marks=pytest.mark.distributed),
                                   pytest.param(4, marks=pytest.mark.distributed)])
def test_audit_per_rank_equals_measured_ledger(world: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`audit --world-size`'s arithmetic (meta device, no process group) == each rank's measured ledger after
    one FSDP2 step, to the byte: AdamW, SlimAdam (paper rules: replicated V's; a local K: Shard(0) V's),
    AdaLayer. At 3 ranks the shards are uneven and some empty, so the ranks' bytes differ."""
    res = results(world, QUICK if world == 3 else FULL, tmp_path_factory)
    labels = [label for label, _, _ in dist_worker.SHARDED_AUDIT]
    predicted = {label: res[0]["audit"][label][2] for label in labels}
    for rank, r in enumerate(res):
        a = r["audit"]
        for label in labels:
            measured, pred, all_ranks, verified = a[label]
            assert measured == pred, (rank, label, measured, pred, a.get(f"{label} entries"))
            assert all_ranks == predicted[label] and len(all_ranks) == world, (rank, label, all_ranks)
            assert verified, f"{label}: its registry spec must say sharded=True"
    if world == 3:
        assert all(len(set(p)) > 1 for p in predicted.values()), predicted  # uneven shards were exercised


@pytest.mark.distributed
def test_checkpoint_saved_on_2_ranks_resumes_on_3_and_on_1(tmp_path: Path) -> None:
    """torch.distributed.checkpoint + get/set_state_dict: 3 steps on 2 ranks, saved; loaded on 3 ranks and on
    1 (resharded: replicated and Shard(0) V's alike), 3 more steps == 6 uninterrupted steps in one process."""
    ckpt = tmp_path / "ckpt"
    spawn(2, [f"ckpt-save:{ckpt}"], tmp_path / "save")
    for world in (3, 1):
        res = spawn(world, [f"ckpt-resume:{ckpt}"], tmp_path / f"load{world}")
        for rank, r in enumerate(res):
            assert r["ckpt-resume"]["err"] <= 1e-12, (world, rank, r)


GPT_ARGS = ["-m", "slimbench", "run", "--task", "gpt", "--optimizers", "slimadam,adamw", "--steps", "12",
            "--no-progress"]


def run_one_process(out: Path) -> tuple[dict, list[str]]:
    """The tiny gpt task, SlimAdam and AdamW, 12 steps, in one process into ``out``; returns (env, args)."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *GPT_ARGS, "--out", str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    return env, list(GPT_ARGS)


def assert_sharded_results_match(sharded: Path, one: Path, world: int, runs: int, steps: int) -> None:
    """Each ``_fsdpN`` result in ``sharded`` records the world size, and its losses equal the one-process
    result's within fp32 tolerance (the same batches on every rank: FSDP2 averages equal grads)."""
    import json

    files = sorted(sharded.glob("*.json"))
    assert len(files) == runs and all(f.stem.endswith(f"_fsdp{world}") for f in files), [f.name for f in files]
    for f in files:
        a = json.loads(f.read_text())
        b = json.loads((one / f.name.replace(f"_fsdp{world}", "")).read_text())
        assert a["config"]["fsdp"] == world and "fsdp" not in b["config"]
        assert a["env"]["world_size"] == world and a["env"]["backend"] == "gloo"
        per_rank = a["memory"]["per_rank_state_bytes"]
        assert len(per_rank) == world and per_rank[0] == a["memory"]["state_bytes"] < b["memory"]["state_bytes"]
        assert len(a["train_loss"]) == len(b["train_loss"]) == steps
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6), f.name
        assert [v["loss"] for v in a["val"]] == pytest.approx([v["loss"] for v in b["val"]], rel=1e-5), f.name
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), f.name


@pytest.mark.distributed
def test_torchrun_fsdp_run_matches_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 3 -m slimbench run ... --fsdp` (gloo on CPU) trains the tiny gpt task sharded:
    rank 0 writes one result per run, named and configured with the world size, whose losses equal the
    one-process run's within fp32 tolerance (the same batches on every rank: FSDP2 averages equal grads)."""
    import subprocess

    env, args = run_one_process(tmp_path / "one")
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                              *args, "--out", str(tmp_path / "fsdp"), "--fsdp"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert_sharded_results_match(tmp_path / "fsdp", tmp_path / "one", world=3, runs=2, steps=12)


@pytest.mark.distributed
def test_submitit_fsdp_job_matches_one_process(tmp_path: Path) -> None:
    """`run ... --fsdp 2 --executor submitit --executor-opt cluster=local`: submitit's own local executor runs
    each run as one job of 2 tasks (tasks_per_node=2), each joining the process group from submitit's
    TorchDistributedEnvironment; rank 0's result == the one-process run within fp32 tolerance."""
    import subprocess

    pytest.importorskip("submitit", reason="needs submitit: pip install -e '.[cluster]'")
    env, args = run_one_process(tmp_path / "one")
    opts = ["--executor", "submitit", "--executor-opt", "cluster=local", "--executor-opt", "timeout_min=10"]
    got = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "sub"), "--fsdp", "2", *opts], env=env,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-3000:]
    assert_sharded_results_match(tmp_path / "sub", tmp_path / "one", world=2, runs=2, steps=12)
    logs = sorted(p.name for p in (tmp_path / "sub" / ".submitit").glob("*_log.out"))
    assert len(logs) == 4 and {n.rsplit("_", 2)[1] for n in logs} == {"0", "1"}, logs  # 2 jobs x 2 tasks


@pytest.mark.parametrize("extra, message", [([], "--fsdp needs torchrun's environment"),
                                            (["--print-commands"], "needs the world size: --fsdp N"),
                                            (["--executor", "submitit"], "needs the world size: --fsdp N"),
                                            (["2", "--executor", "submitit"], "pip install -e '.[cluster]'")])
def test_fsdp_outside_torchrun_is_one_line(extra: list[str], message: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad --fsdp input, and --executor submitit without submitit installed: one line, exit 2, no result."""
    from slimbench.cli import main

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    assert main(["run", "--task", "gpt", "--steps", "1", "--out", str(tmp_path), "--fsdp", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.distributed
def test_registry_optimizers_under_fsdp2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every available registry optimizer, 2 steps under fully_shard at 2 and 3 ranks (fp64): equal to one
    process (1e-10), ran but differs, or raised (one line). A spec says sharded=True exactly for those equal
    at both world sizes on every rank (the README's table is this test's printout)."""
    from slimbench.registry import REGISTRY, available

    outcomes: dict[str, dict[int, tuple]] = {}
    for world in (2, 3):
        res = spawn(world, ["registry"], tmp_path / f"w{world}")
        for name in REGISTRY:
            seen = {r["registry"][name] if r["registry"][name][0] != "equal" else ("equal",) for r in res}
            outcomes.setdefault(name, {})[world] = res[0]["registry"][name] if len(seen) == 1 else ("ranks differ", seen)
    with capsys.disabled():
        print("\noptimizer | 2 ranks | 3 ranks")
        for name, o in outcomes.items():
            print(f"{name} | " + " | ".join(f"{v[0]}: {v[1]:.1e}" if v[0] == "equal" else f"{v[0]}: {v[1]}"
                                            for v in (o[2], o[3])))
    ok = {a.name for a in available() if a.ok}
    assert all(outcomes[n][w][0] != "unavailable" for n in ok for w in (2, 3)), outcomes
    equal = {n for n, o in outcomes.items() if all(v[0] == "equal" for v in o.values())}
    flagged = {n for n, s in REGISTRY.items() if s.sharded and n in ok}
    assert flagged == equal, {"flagged, not equal": flagged - equal, "equal, not flagged": equal - flagged}
    assert {"adamw", "slimadam", "adalayer"} <= equal


def test_fsdp_print_commands_prints_one_torchrun_line_per_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run ... --fsdp N --print-commands`: one shell-quoted `python -m torch.distributed.run --standalone
    --nproc_per_node N -m slimbench run ... --fsdp N` line per pending run (the running interpreter)."""
    import shlex

    from slimbench.cli import main

    out = tmp_path / "o ut"
    assert main(["run", "--task", "gpt", "--optimizers", "slimadam,adamw", "--steps", "3", "--out", str(out),
                 "--fsdp", "2", "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    for line, opt in zip(lines, ("slimadam", "adamw")):
        argv = shlex.split(line)
        assert argv[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m"], argv
        assert argv[7:9] == ["slimbench", "run"] and argv[-2:] == ["--fsdp", "2"], argv
        assert argv[argv.index("--optimizers") + 1] == opt and argv[argv.index("--out") + 1] == str(out), argv
    assert not out.exists() or not list(out.glob("*.json"))


@pytest.mark.distributed
def test_printed_fsdp_command_runs_and_writes_the_fsdp_result(tmp_path: Path) -> None:
    """One printed `--fsdp 2` line, run by sh (3 steps, gpt tiny), writes the `_fsdp2` result; the sweep's
    commands then skip it as done."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "slimbench", "run", "--task", "gpt", "--optimizers", "adamw", "--steps", "3",
            "--out", str(tmp_path / "r"), "--fsdp", "2", "--print-commands"]
    printed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr[-3000:]
    (line,) = printed.stdout.strip().splitlines()
    ran = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    (f,) = sorted((tmp_path / "r").glob("*.json"))
    assert f.stem.endswith("_fsdp2"), f.name
    res = json.loads(f.read_text())
    assert res["config"]["fsdp"] == 2 and res["env"]["world_size"] == 2 and len(res["train_loss"]) == 3
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "", again.stdout
    assert "0 commands for the pending runs (1 of 1 already done)" in again.stderr, again.stderr
