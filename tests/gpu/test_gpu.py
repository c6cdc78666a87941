"""The GPU paths, on a real CUDA device: ``pytest -m gpu`` (skipped where there is none).

Each test is small (seconds on an H100): a short bf16 training run with the data on the device and fused Adam,
evaluation and tiled prediction through the inference session compared with fp32 on the CPU, the benchmark's
three training figures, and the parallel launcher's sizing from free GPU memory.
"""

import json

import numpy as np
import pytest
import torch

from nucleiseg.cli import main as cli
from nucleiseg.config.compose import compose
from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.inference.session import InferenceSession
from nucleiseg.training.identity import run_folder
from nucleiseg.training.run import run
from tests.conftest import fast_run_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (run pytest -m gpu on a GPU machine)"
    ),
]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """The modified U-Net (full width) trained 3 epochs at 128 px on the GPU in bf16."""
    root = tmp_path_factory.mktemp("gpu")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = [
        "experiment=quickstart",
        *[o for o in fast_run_overrides(root, uri) if not o.startswith(("trainer.accelerator", "model.unet_widths"))],
        "trainer.accelerator=gpu",
        "trainer.max_epochs=3",
        "data.sources.synthetic.tile_size=128",
        "data.protocol.image_size=128",
        "optimizer.lr=0.001",
        "study=gpu",
    ]
    cfg = compose(overrides)
    metrics = run(cfg)
    return cfg, uri, metrics, run_folder(cfg) / "checkpoints" / "model.ckpt"


def test_a_bf16_training_run_on_the_gpu(gpu_run):
    from mlflow.tracking import MlflowClient

    cfg, uri, metrics, checkpoint = gpu_run
    assert 0 <= metrics["test/jaccard"] <= 1 and metrics["test/images_per_second"] > 0
    client = MlflowClient(uri)
    [record] = client.search_runs([client.get_experiment_by_name("gpu").experiment_id])
    assert record.data.tags["device"] == torch.cuda.get_device_name(0)
    assert record.data.params["trainer.precision"] == "auto" and record.data.tags["speed.precision"] == "bf16-mixed"
    assert checkpoint.is_file()


def test_training_builds_fused_adam_and_keeps_the_data_on_the_gpu(gpu_run, tmp_path):
    from nucleiseg.data.prepare import load_manifest, prepare_dataset
    from nucleiseg.training.assemble import build_datamodule, build_module, build_trainer, training_callbacks

    cfg = gpu_run[0]
    folder = prepare_dataset(cfg.data, log=lambda line: None)
    module = build_module(cfg, load_manifest(folder), folder, "gpu")
    datamodule = build_datamodule(cfg, folder, "gpu")
    trainer = build_trainer(cfg, tmp_path, False, training_callbacks(cfg, tmp_path, True))
    datamodule.trainer = trainer  # setup() puts the data on the trainer's device
    datamodule.setup("fit")
    assert datamodule.splits["train"].images.device.type == "cuda"
    module = module.cuda()
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["fused"] is True


def test_evaluate_on_the_gpu_matches_fp32_on_the_cpu(gpu_run):
    checkpoint = gpu_run[3]
    gpu = InferenceSession.from_checkpoint(checkpoint, defaults("predict", device="gpu"))
    cpu = InferenceSession.from_checkpoint(checkpoint, defaults("predict", device="cpu", precision="32-true"))
    assert gpu.precision == "bf16-mixed" and gpu.channels_last
    from nucleiseg.evaluation.evaluate import evaluate

    on_gpu, on_cpu = evaluate(gpu), evaluate(cpu)
    assert on_gpu["n_images"] == on_cpu["n_images"] > 0
    assert abs(on_gpu["test/jaccard"] - on_cpu["test/jaccard"]) < 0.01


def test_tiled_prediction_on_the_gpu(gpu_run, tmp_path, capsys):
    from PIL import Image

    image, _ = synthetic_tile(SyntheticSpec(1100, 1500, n_nuclei=300), 3)
    Image.fromarray(image).save(tmp_path / "large.png")
    checkpoint = gpu_run[3]
    gpu = InferenceSession.from_checkpoint(checkpoint, defaults("predict", device="gpu", tile_size=256, batch_size=8))
    cpu = InferenceSession.from_checkpoint(
        checkpoint, defaults("predict", device="cpu", precision="32-true", tile_size=256)
    )
    assert gpu.segmenter().n_tiles(1100, 1500) > 1
    difference = np.abs(gpu.predict(image).probability - cpu.predict(image).probability)
    assert difference.mean() < 0.01
    code = cli(
        [
            "predict",
            str(tmp_path / "large.png"),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(checkpoint),
            "--device",
            "gpu",
            "--quiet",
            "predict.tile_size=256",
        ]
    )
    assert code == 0
    done = json.loads((tmp_path / "out" / "large" / "done.json").read_text())
    assert done["settings"]["device"].startswith("cuda") and done["n_nuclei"] > 0


def test_the_benchmark_on_the_gpu(tmp_path):
    from tests.test_scale import SMALL_BENCHMARK

    args = [a for a in SMALL_BENCHMARK if a != "--no-mlflow"] + ["--no-mlflow", "--device", "gpu"]
    assert cli(["benchmark", "--configs", "unet_bn", "--out", str(tmp_path), *args]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert (table.loop > 0).all() and (table.train_step > 0).all() and table.train_precision.iloc[0] == "bf16-mixed"


def test_the_parallel_launcher_fills_the_gpus_from_free_memory():
    from nucleiseg.util.parallel import JOB_GPU_BYTES, MAX_JOBS_PER_GPU, parallel_jobs

    free = min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    expected = torch.cuda.device_count() * max(1, min(MAX_JOBS_PER_GPU, free // JOB_GPU_BYTES))
    assert parallel_jobs() == expected >= torch.cuda.device_count()
