"""The benchmarks run in their tiny CPU configurations, print one JSON object with the documented
keys, and their fast and naive paths agree numerically."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtan.inference.int8 import int8_available

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def run_benchmark(name: str, *args: str, timeout: int = 300) -> dict:
    """Run ``benchmarks/<name>.py`` on the CPU (one thread: robust when other jobs load the cores)."""
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--tiny", "--threads", "1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}:\n{proc.stdout[-2000:]}"
    result = json.loads(lines[0])
    assert result["benchmark"] == name and result["tiny"] is True and result["device"] == "cpu"
    for key in ("cpu", "cores", "threads", "load_average", "torch"):
        assert key in result, key
    return result


def test_train_throughput_tiny():
    result = run_benchmark("train_throughput")
    assert {"peak_tflops", "peak_note", "paths", "configs", "steps", "warmup"} <= set(result)
    assert set(result["configs"]) == {"cityscapes", "nyuv2"}
    for name, cfg in result["configs"].items():
        assert cfg["tasks"] == (["semantic", "depth"] if name == "cityscapes" else ["semantic", "depth", "normal"])
        # the batched attention path does exactly the same FLOPs as the loop
        assert cfg["flops_per_image"] > 0 and cfg["flops_per_image_batched_attention"] == cfg["flops_per_image"]
        for path in ("naive", "fast"):
            row = cfg[f"{path}_protocol"]
            assert row["status"] == "ok" and row["batch"] == cfg["protocol_batch"]
            assert row["images_per_s"] > 0 and row["achieved_tflops"] > 0 and 0 < row["fraction_of_peak"] < 1
            assert cfg[f"{path}_best"]["images_per_s"] >= row["images_per_s"]
        assert cfg["speedup_protocol_batch"] > 0 and cfg["speedup_best"] > 0
        agreement = cfg["agreement"]
        assert agreement["max_rel_diff_before"] < 1e-4  # same weights, same batch: same losses
        assert agreement["max_rel_diff_after"] < 1e-2  # after one Adam step (sign of round-off gradients)


def test_epoch_time_tiny(tmp_path):
    result = run_benchmark("epoch_time", "--cache", str(tmp_path / "frames"))
    assert result["frames"] == {"train": 64, "val": 16} and result["size"] == [32, 64]
    assert (tmp_path / "frames" / "train" / "image" / "63.npy").is_file()
    for path in ("naive", "fast"):
        row = result[path]
        assert row["train_epoch_s"] > 0 and row["eval_s"] > 0 and row["total_s"] > 0 and row["images_per_s"] > 0
        assert set(row["train_loss"]) == {"semantic", "depth"}
        assert "loss.semantic" in row["val"]["synthetic"]
    assert "semantic.miou" in result["fast"]["val"]["synthetic"]
    assert result["speedup_total"] > 0
    assert "attention task by task" in result["fast"]["path"]  # as train.py on a CPU
    agreement = result["agreement"]
    assert agreement["max_train_loss_rel_diff"] < 1e-2  # same start, same batches, both fp32
    assert agreement["max_val_loss_rel_diff"] < 1e-5  # same weights: engine == naive bookkeeping
    # a second run reuses the cached frames
    again = run_benchmark("epoch_time", "--cache", str(tmp_path / "frames"), "--no-naive", "--batched-attention", "on")
    assert again["generate_s"] < 5 and "naive" not in again
    assert "batched attention" in again["fast"]["path"] and again["fast"]["train_loss"].keys() == {"semantic", "depth"}


def test_cpu_inference_tiny():
    result = run_benchmark("cpu_inference")
    assert result["input"] == [1, 3, 64, 128]
    assert {"bf16", "goals", "models", "repeats"} <= set(result)
    assert [m["name"] for m in result["models"]] == ["default", "full-width"]
    for model in result["models"]:
        assert model["parameters"] > 0 and model["tasks"] == ["semantic", "depth"]
        for key in ("median_s", "min_s", "cpu_median_s"):
            assert model["naive"][key] > 0 and model["fast"][key] > 0
        fast = model["fast"]
        assert "BatchNorm folded" in fast["path"] and fast["speedup_median"] > 0
        # the float32 fast path computes the same predictions
        assert fast["label_agreement"] >= 0.999
        assert fast["depth_mean_abs_diff_over_mean_abs"] < 1e-3
        assert fast["depth_median_rel_diff"] < 1e-3
        int8 = int8_available()  # the quantised engine runs on some CPUs' torch builds only
        for reduced in ("fast_bf16", "fast_bf16_convs") + (("fast_int8",) if int8 else ()):  # timed, with drift
            assert model[reduced]["median_s"] > 0 and 0 <= model[reduced]["label_agreement"] <= 1
        assert ("fast_int8" in model) == int8
        if int8:
            assert "quantised 3x3 convolutions" in model["fast_int8"]["path"]
        choice = model["auto_choice"]
        assert set(choice["median_s"]) == {"fp32", "bf16", "bf16-convs"} | ({"int8"} if int8 else set())
        assert choice["precision"] in choice["median_s"]


def test_app_latency_parts(tmp_path):
    """The round trip split into its pieces, in process, for a tiny model and an example photo."""
    from apphelpers import make_models

    model = make_models(tmp_path)["city"]
    proc = subprocess.run([sys.executable, str(BENCH / "app_latency.py"), "--parts-only", "--calls", "1", "--model", model,
                           "--compile", "off",
                           "--photo", str(REPO / "examples" / "street_01.jpg"), "--resolution", "128x256"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = json.loads(proc.stdout.strip().splitlines()[-1])["parts"]
    for key in ("decode", "network", "network_and_resize", "main_views", "attention_views", "downloads",
                "attention_section", "attention_overview", "redraw_opacity", "redraw_colours",
                "redraw_compare", "redraw_attention", "plain_forward"):
        assert parts[f"{key}_s"] > 0, key
    assert parts["network_s"] <= parts["network_and_resize_s"] < parts["first_results_in_process_s"]
    assert parts["first_results_in_process_s"] < parts["everything_in_process_s"]
    assert parts["precision"] == "fp32" and parts["network_input"] == "128x256"


@pytest.mark.slow
def test_app_latency_through_the_server(tmp_path):
    """The real app started and timed with gradio_client and with gradio's own wire protocol."""
    from apphelpers import make_models

    model = make_models(tmp_path)["city"]
    proc = subprocess.run([sys.executable, str(BENCH / "app_latency.py"), "--calls", "1", "--model", model,
                           "--compile", "off", "--photo", str(REPO / "examples" / "street_01.jpg"),
                           "--resolution", "128x256"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ready_page_s"] > 0 and report["page_first_results_median_s"] > 0
    wire = report["wire"]
    for key in ("upload", "join", "queue_wait", "server_work", "fetch_images"):
        assert wire[f"{key}_s"] >= 0, key
    assert wire["fetch_images_s"] > 0 and wire["server_page_faults_per_call"] >= 0
    assert 0 < wire["server_network_and_outputs_s"] <= wire["server_work_s"] < wire["total_s"]
    assert report["parts"]["network_and_resize_worker_thread_s"] > 0
    speedups = report["speedup_vs_plain_forward"]
    assert speedups["predict_answer"] == pytest.approx(report["parts"]["plain_forward_s"]
                                                       / report["predict_answer_median_s"], rel=0.02, abs=0.01)
    assert set(speedups) == {"page_first_results", "predict_answer", "wire_first_results", "wire_predict_answer"}
    predict = report["wire_predict"]  # /predict's one answer on the wire: its views fetched
    assert 0 < predict["server_network_and_outputs_s"] <= predict["server_work_s"] < predict["total_s"]
    assert predict["fetch_images_s"] > 0
    assert speedups["wire_predict_answer"] == pytest.approx(report["parts"]["plain_forward_s"] / predict["total_s"],
                                                            rel=0.02, abs=0.01)


def test_app_latency_full_width_model_folder(tmp_path):
    """--model full-width's folder: the 3-task network, loadable by the app, every precision this CPU runs allowed."""
    sys.path.insert(0, str(BENCH))
    from app_latency import full_width_model

    from mtan import MTAN
    from mtan.inference.int8 import int8_available
    from mtan.records import allowed_precisions, int8_scales, read_record

    folder = Path(full_width_model("64x128", folder=tmp_path / "fw", width=0.0625))
    model = MTAN.from_pretrained(folder)
    assert model.task_names == ["semantic", "depth", "normal"] and model.width == 0.0625
    record = read_record(folder)
    assert set(allowed_precisions(record)) == {"fp32", "bf16", "bf16-convs"} | ({"int8"} if int8_available() else set())
    assert (int8_scales(record) is not None) == int8_available()
    assert full_width_model("64x128", folder=folder) == str(folder)  # built once, then reused


def test_media_benchmark_tiny(tmp_path):
    """Video, live webcam and 3D figures, for a tiny model on a short small clip."""
    from apphelpers import make_models

    model = make_models(tmp_path)["city"]
    proc = subprocess.run([sys.executable, str(BENCH / "media.py"), "--model", model, "--clip-size", "160x96",
                           "--fps", "10", "--seconds", "1", "--resolutions", "64x128", "--repeats", "1",
                           "--photo-size", "400x300"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    video = result["video"]["64x128"]
    assert video["clip"] == "160x96, 10 frames/s, 10 frames" and video["network_input"] == "64x107"
    assert 0 < video["frames_per_second"] < video["network_frames_per_second"]
    assert result["live"]["frames_per_second"] > 0 and result["live"]["network_input"] == "128x171"
    scene = result["scene3d"]
    assert scene["photo"] == "400x300 (0.1 MP)" and isinstance(scene["points"], int)  # (an untrained model: few)
    assert scene["total_s"] >= scene["network_s"] > 0


def test_mtl_methods_tiny():
    """Every weighting of train.py (and Nash-MTL solving every 4th step) and the two single-task
    baselines, with Delta_m per method."""
    from mtan.train.weighting import METHODS

    result = run_benchmark("mtl_methods", timeout=600)
    assert set(result["methods"]) == set(METHODS) | {"nash-mtl/4"} and set(result["baselines"]) == {"semantic", "depth"}
    base = {k: v for b in result["baselines"].values() for k, v in b["metrics"].items()}
    assert set(base) == {"semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err"}
    for name, row in result["methods"].items():
        assert set(row["changes"]) == set(base), name
        assert row["delta_m"] == pytest.approx(sum(row["changes"].values()) / len(base)), name
        assert row["seconds_per_epoch"] > 0 and row["overhead_vs_equal"] > 0
    assert result["methods"]["equal"]["overhead_vs_equal"] == pytest.approx(1.0)


def test_mtl_methods_goes_on_from_its_out_folder(tmp_path):
    """--out keeps the runs: a second call reads the finished ones back, a run cut short resumes
    from its last checkpoint to the same figures, and a folder of other settings is refused."""
    out = tmp_path / "table"
    args = ("--methods", "equal", "--epochs", "2", "--out", str(out))
    first = run_benchmark("mtl_methods", *args)
    again = run_benchmark("mtl_methods", *args)
    assert again["methods"] == first["methods"] and again["baselines"] == first["baselines"]
    run = out / "equal-1-0"
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2
    (run / "metrics.jsonl").write_text(metrics[0] + "\n")  # as if the machine stopped during epoch 2
    (run / "checkpoints" / "epoch_0001.safetensors").unlink()
    resumed = run_benchmark("mtl_methods", *args)
    assert resumed["methods"]["equal"]["metrics"] == first["methods"]["equal"]["metrics"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    proc = subprocess.run([sys.executable, str(BENCH / "mtl_methods.py"), "--tiny", "--threads", "1", *args,
                           "--width", "0.125"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "holds a run with other settings" in proc.stderr and "Traceback" not in proc.stderr


def test_cpu_training_speed_times_each_width_precision_and_layout():
    cmd = [sys.executable, str(BENCH / "cpu_training_speed.py"), "--widths", "0.0625", "--crop", "32x64",
           "--batch-size", "2", "--steps", "2", "--warmup", "1"]
    proc = subprocess.run(cmd + ["--layouts", "nchw,channels-last"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["crop"] == "32x64" and result["batch_size"] == 2
    per_layout = result["widths"]["0.0625"]
    assert set(per_layout) == {"nchw", "channels-last"}
    for found in per_layout.values():
        for precision in ("fp32", "bf16"):
            timing = found[precision]
            assert timing["seconds_per_step"] > 0
            assert timing["images_per_second"] == pytest.approx(2 / timing["seconds_per_step"], rel=0.02)
        assert found["bf16_speedup"] == pytest.approx(
            found["bf16"]["images_per_second"] / found["fp32"]["images_per_second"], rel=0.02)
    one = subprocess.run(cmd + ["--precisions", "fp32"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert set(json.loads(one.stdout)["widths"]["0.0625"]) == {"fp32"}  # one layout: not keyed by layout
    bad = subprocess.run(cmd + ["--layouts", "nhwc"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--layouts 'nhwc': each must be channels-last or nchw" in bad.stderr


def test_scoring_memory_runs_the_same_command_both_ways():
    result = run_benchmark("scoring_memory", "--repeats", "1")
    assert result["command"].startswith("python -m mtan.evaluate --model ") and "--data synthetic" in result["command"]
    for mode in ("tuned", "glibc"):
        assert result[mode]["seconds"] > 0 and result[mode]["page_faults"] > 0
    assert result["speedup"] == pytest.approx(result["glibc"]["seconds"] / result["tuned"]["seconds"], rel=0.02)
    assert result["same_figures"] is True  # malloc's settings change the time, never a figure
