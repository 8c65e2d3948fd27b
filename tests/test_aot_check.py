"""The ahead-of-time check compiles the real train and embedding steps for fake devices and, with the
TPU compiler installed, for a TPU topology; it reports memory, FLOPs, collectives and a roofline
estimate whose arithmetic matches hand counts, and fails early naming what a step needs."""

import json
import os
import subprocess
import sys

import pytest

from comm_jax.aot_check import collectives, pods, roofline, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/trifeatures.py:cpu", "--config.model.width=32", "--config.model.head_hidden=32",
        "--config.model.head_out=16"]


def aot(*args):
    cmd = [sys.executable, "-m", "comm_jax.aot_check", *TINY, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def test_compiles_both_steps_for_twelve_fake_devices_with_a_gpu_chip(tmp_path):
    out = tmp_path / "plan.json"
    proc = aot("--devices=12", "--config.batch_size=48", "--config.evals.batch_size=48", "--chip=h100", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "XLA:CPU on fake devices" in proc.stdout and "roofline estimate" in proc.stdout
    report = json.loads(out.read_text())
    train, embed = report["steps"]["train"], report["steps"]["embed"]
    assert report["devices"] == 12 and train["per_chip_batch"] == 4
    assert train["memory_bytes"]["peak"] > 0 and train["flops"] > 0 and train["fits"]
    assert "all-reduce" in train["collectives"] and train["roofline"]["step_s_lower_bound"] > 0


def test_refuses_a_step_that_does_not_fit_and_a_batch_that_does_not_divide():
    proc = aot("--devices=2", "--config.batch_size=16", "--device_memory_gb=0.000001", "--steps=train")
    assert proc.returncode != 0 and "GiB per chip" in proc.stderr and "config.batch_size" in proc.stderr
    proc = aot("--devices=3", "--config.batch_size=16", "--steps=train")
    assert proc.returncode != 0 and "not divisible by the 3 devices" in proc.stderr


@pytest.mark.skipif(not pods.libtpu_available(), reason="the TPU compiler (libtpu wheel) is not installed: "
                                                        "pip install 'comm-jax[aot]'")
def test_compiles_the_tiny_config_for_a_v5e_topology_with_the_tpu_compiler(tmp_path):
    out = tmp_path / "plan.json"
    proc = aot("--topology=v5e-4", "--config.batch_size=32", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled by the TPU compiler for topology v5e:2x2" in proc.stdout
    report = json.loads(out.read_text())
    assert report["device_kind"] == "TPU v5 lite" and report["chip"]["hbm_gib"] == 16
    train = report["steps"]["train"]
    assert train["fits"] and train["per_chip_batch"] == 8
    # the loss gathers the embeddings and its gradient scatters them back; gradients are all-reduced
    assert {"all-gather", "reduce-scatter", "all-reduce"} <= set(train["collectives"])
    assert report["steps"]["embed"]["memory_bytes"]["peak"] > 0


def test_names_and_topologies_of_pods():
    assert pods.parse_pod("v5e-16").topology == "v5e:4x4"
    assert pods.parse_pod("v4-64").topology == "v4:2x4x4" and pods.parse_pod("v4-64").chips == 32
    assert pods.parse_pod("v5p-128").topology == "v5:4x4x4"
    assert pods.parse_pod("v5e-256").chips == 256 and pods.parse_pod("v6e-16").topology == "v6e:4x4"
    two = pods.parse_pod("v5e:4x4,slices=2")
    assert two.chips == 32 and two.slices == 2
    with pytest.raises(ValueError, match="unknown TPU topology"):
        pods.parse_pod("v5e-12")


HLO = """
HloModule step, num_partitions=8
  %all-gather.4 = bf16[2,3,64,128]{3,2,1,0:T(8,128)(2,1)S(1)} all-gather(%x), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={2}
  %reduce_scatter.6 = f32[2,3,16,128]{3,2,1,0} reduce-scatter(%y), channel_id=2, replica_groups=[2,4]<=[8], dimensions={2}
  ROOT %all-reduce.1 = (f32[1000]{0}, f32[]{:T(256)}) all-reduce(%a, %b), replica_groups=mesh['data'=4,'fsdp'=2] {'data','fsdp'}, to_apply=%add
  %ags = (f32[10]{0}, f32[80]{0}) all-gather-start(%c), replica_groups={}, dimensions={0}
  %cp = (f32[256]{0}, f32[256]{0}, u32[], u32[]) collective-permute-start(%d), source_target_pairs={{0,1},{1,0}}
  %a2a = s8[64]{0} all-to-all(%e), replica_groups=mesh['data'=4,'fsdp'=2] {'fsdp'}
"""


def test_collective_bytes_match_hand_counts():
    found = collectives.parse(HLO, n_devices=8)
    assert [c.kind for c in found] == ["all-gather", "reduce-scatter", "all-reduce", "all-gather",
                                       "collective-permute", "all-to-all"]
    gather, scatter, reduce, gather_start, permute, a2a = found
    assert gather.buffer_bytes == 2 * 3 * 64 * 128 * 2 and gather.group_size == 4
    assert gather.sent_bytes == gather.buffer_bytes * 3 / 4
    # reduce-scatter shows its output (S/g): S = 4 x 2*3*16*128*4 bytes; each device sends S (g-1)/g
    assert scatter.group_size == 4 and scatter.buffer_bytes == 4 * 2 * 3 * 16 * 128 * 4
    assert scatter.sent_bytes == 3 * 2 * 3 * 16 * 128 * 4
    assert reduce.group_size == 8 and reduce.buffer_bytes == 4004 and reduce.sent_bytes == 2 * 4004 * 7 / 8
    assert gather_start.buffer_bytes == 320 and gather_start.group_size == 8   # the output; empty groups: all
    assert permute.buffer_bytes == 1024 and permute.sent_bytes == 1024
    assert a2a.group_size == 2 and a2a.sent_bytes == 32
    summary = collectives.summarize(found)
    assert summary["all-gather"]["count"] == 2 and summary["all-gather"]["buffer_bytes"] == 98304 + 320


def test_roofline_memory_fit_and_out_of_memory_arithmetic():
    chip = {"bfloat16": 200.0, "float32": 100.0, "hbm_gbps": 1000.0, "interconnect_gbps": 400.0}
    r = roofline.roofline(flops=2e12, bytes_accessed=5e9, sent_bytes=1e9, chip=chip, precision="float32")
    assert r["compute_s"] == pytest.approx(0.02) and r["hbm_s"] == pytest.approx(0.005)
    assert r["interconnect_s"] == pytest.approx(0.0025) and r["bound_by"] == "compute"
    assert r["step_s_lower_bound"] == pytest.approx(0.02)
    memory = {"argument": 10, "output": 10, "temp": 5, "alias": 8}
    assert roofline.peak_bytes(memory) == 17
    assert roofline.fits(int(15.2 * 2**30), 16) and not roofline.fits(int(15.3 * 2**30), 16)
    oom = roofline.out_of_memory("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
                                 "HLO temporaries (24.03G) exceeds available HBM (15.75G).")
    assert oom == {"needed_gib": pytest.approx(24.03), "available_gib": pytest.approx(15.75)}
    assert roofline.out_of_memory("INVALID_ARGUMENT: bad sharding") is None
    # 32 GiB needed with 2 GiB fixed at 64 per chip; 15.2 GiB usable -> 28 per chip on 16 chips
    assert "about 448 (28 per chip)" in roofline.advice(32.0, 16.0, 1024, 16, 2.0)


@pytest.mark.parametrize("state,per_example,superlinear,knee,stated", [
    (1.0, 0.03, 0.0, None, (64,)), (2.0, 0.02, 1e-5, None, (64,)), (0.5, 0.5, 0.0, None, (8,)),
    (2.0, 0.02, 1e-5, None, (64, 1024)), (1.0, 0.03, 0.0, None, (1024, 4096)), (2.0, 0.4, 0.0, 24, (16,))],
    ids=["linear", "superlinear_beyond_the_limit", "few_per_chip", "from_a_bracket", "from_two_refused",
         "sublinear_beyond_a_knee"])
def test_largest_batch_search_brackets_the_limit_of_a_memory_model(tmp_path, state, per_example, superlinear, knee,
                                                                   stated):
    """The search, on a fake compiler whose memory is state + per_example * b + superlinear * b^3 GiB
    (beyond `knee` per chip, a tenth of the per-example slope: the compiler recomputing instead of storing),
    refused above the chip's usable memory and reporting what it needs, started from the compiles of the
    stated per-chip batches, ends with a fitting size within 1/8 (or 8) of a refused one in at most its
    compile budget, never compiling outside the known bracket (a case the compiler rejected for another
    reason is no bracket)."""
    from comm_jax.aot_check import table as pod_table   # its Table records the search's compiles

    capacity = 16.0
    usable = capacity * roofline.USABLE_FRACTION

    def memory(b):
        linear = per_example * b if knee is None or b <= knee else per_example * (knee + (b - knee) / 10)
        return state + linear + superlinear * b ** 3

    def compile_case(b):
        used = memory(b)
        entry = {"per_chip_batch": b, "capacity_gib": capacity, "fits": used <= usable, "compile_s": 0.0}
        return entry | ({"peak_gib": used, "state_gib": state} if used <= usable else
                        {"needs_gib": used, "state_gib": state, "compiler_oom": True})

    limit = max(b for b in range(1, 4096) if memory(b) <= usable)
    book = pod_table.Table(str(tmp_path / "plans.json"))
    rejected = {"kind": "step", "row": "r", "pod": "p", "per_chip_batch": 0, "fits": False, "error": "rejected"}
    known = [compile_case(b) | {"kind": "step", "row": "r", "pod": "p"} for b in stated] + [rejected]
    search.largest_batch(book, "r", "p", 16, known, compile_case)
    searched = [e for e in book.entries if e.get("search") == "largest"]
    assert 1 <= len(searched) <= search.SEARCH_COMPILES
    known.remove(rejected)
    fits_at = max((e["per_chip_batch"] for e in known if e["fits"]), default=0)
    refused_at = min((e["per_chip_batch"] for e in known if not e["fits"]), default=None)
    assert all(fits_at < e["per_chip_batch"] < (refused_at or 10**9) for e in searched)
    fitting = [e["per_chip_batch"] for e in searched + known if e["fits"]]
    refused = [e["per_chip_batch"] for e in searched + known if not e["fits"]]
    best = max(fitting)
    assert best <= limit and all(r > limit for r in refused)
    assert refused and min(refused) - best <= max(8, best // search.SEARCH_WITHIN)


def test_table_markdown_shows_the_largest_fitting_batch_and_the_cases_not_compiled():
    from comm_jax.aot_check import table_markdown

    def step(pod, batch, fits):
        entry = {"kind": "step", "row": "trifeatures", "pod": pod, "chips": 16, "global_batch": batch,
                 "per_chip_batch": batch // 16, "capacity_gib": 16, "fits": fits, "compile_s": 1.0}
        return entry | ({"peak_gib": 2.0} if fits else {"needs_gib": 40.0, "compiler_oom": True})

    refused_only = step("v4-64", 16384, False) | {"row": "large_batch"}
    text = table_markdown.render([step("v5e-16", 1024, True), step("v5e-16", 8192, False), step("v5e-16", 4096, True),
                                  step("v5e-16", 16384, False), refused_only],
                                 rows=["trifeatures", "large_batch"], pods=["v5e-16", "v4-64"])
    assert "| trifeatures | 4,096 (256/chip); 8,192 does not fit | none compiled |" in text
    assert "| large_batch | none compiled | none fits (16,384 does not) |" in text
    assert "refused: needs 40.0" in text
